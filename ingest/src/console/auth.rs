//! Who is asking: sessions, API tokens, CSRF, and the extractors handlers use to demand a
//! signed-in user ([`Staff`]) or a role ([`RequireRole`]).
//!
//! [`authenticate`] runs in front of every console and API route. It takes the principal from
//! an `Authorization: Bearer rpm_…` token or, failing that, the session cookie, and puts it in
//! the request's extensions. A state-changing request (`POST`, `PUT`, `PATCH`, `DELETE`)
//! authenticated by cookie must carry the session's CSRF token, in an `X-CSRF-Token` header
//! or, for an HTML form, a `csrf_token` field: otherwise it is refused with 403 before any
//! handler runs. Token requests need no CSRF token (a browser never adds the header itself).
//!
//! Handlers then ask for what they need; the rejection is 401 (nobody signed in: JSON under
//! `/api`, a redirect to `/login?next=…` for pages) or 403 (wrong role):
//!
//! ```no_run
//! use ingest::console::auth::{RequireRole, Staff, role};
//!
//! // Any signed-in user (nurse, clinician or admin).
//! async fn inbox(Staff(user): Staff) -> String {
//!     format!("signed in as {} ({})", user.username, user.role)
//! }
//!
//! // Clinicians and admins only; a nurse gets 403.
//! async fn edit(RequireRole(user, ..): RequireRole<role::Clinician>) -> String {
//!     format!("{} may edit thresholds", user.username)
//! }
//! ```
//!
//! The session cookie is `HttpOnly`, `SameSite=Lax`, `Path=/`, and `Secure` (named
//! `__Host-rpm_session`) when the console is served over HTTPS (`[console] secure_cookies`,
//! default: `[http] public_url` is `https://…`).

use std::marker::PhantomData;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::http::HttpState;
pub use crate::record::{AuthVia, Principal, Role};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "rpm_session";
/// The cookie's name over HTTPS (the `__Host-` prefix pins it to this host, path `/`, Secure).
pub const SECURE_COOKIE: &str = "__Host-rpm_session";
/// The header carrying the CSRF token on API calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field carrying the CSRF token on HTML forms.
pub const CSRF_FIELD: &str = "csrf_token";
/// Largest form body read to find the CSRF field.
const MAX_FORM: usize = 1 << 20;

/// A JSON error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The session id the request carries, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, SECURE_COOKIE).or_else(|| cookie_value(headers, COOKIE))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(state: &HttpState, id: &str) -> HeaderValue {
    let s = &state.console.settings;
    let (name, secure) = if s.secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    let text = format!(
        "{name}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        s.session_max.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// `Set-Cookie` that deletes the session cookie.
pub fn clear_cookie(state: &HttpState) -> HeaderValue {
    if state.console.settings.secure {
        HeaderValue::from_static(
            "__Host-rpm_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("rpm_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Constant-time comparison of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The middleware: resolves the principal and enforces CSRF on cookie-authenticated
/// state-changing requests. See the module doc.
pub async fn authenticate(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let record = &state.record;
    let principal = if let Some(token) = bearer(&parts.headers) {
        match record.token_principal(token).await {
            Ok(Some(p)) => Some(p),
            Ok(None) => return error(StatusCode::UNAUTHORIZED, "invalid or revoked API token"),
            Err(e) => {
                tracing::error!(error = %e, "token lookup failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "the record is unavailable");
            }
        }
    } else if let Some(id) = session_cookie(&parts.headers) {
        match record
            .session(id, state.console.settings.session_idle)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "the record is unavailable");
            }
        }
    } else {
        None
    };
    let mut body = body;
    if let Some(Principal {
        via: AuthVia::Session { csrf },
        ..
    }) = &principal
        && !is_safe(&parts.method)
    {
        let header_token = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ok = match header_token {
            Some(t) => same(&t, csrf),
            None => {
                let is_form = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
                if is_form {
                    let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
                        Ok(b) => b,
                        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "form too large"),
                    };
                    let found = form_field(&bytes, CSRF_FIELD);
                    body = Body::from(bytes);
                    found.is_some_and(|t| same(&t, csrf))
                } else {
                    false
                }
            }
        };
        if !ok {
            tracing::info!(method = %parts.method, "request refused: CSRF token missing or wrong");
            return error(
                StatusCode::FORBIDDEN,
                "CSRF token missing or wrong: send the session's token in X-CSRF-Token or the csrf_token form field",
            );
        }
    }
    if let Some(p) = principal {
        parts.extensions.insert(p);
    }
    next.run(Request::from_parts(parts, body)).await
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let fields: Vec<(String, String)> = serde_urlencoded_pairs(body)?;
    fields.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn serde_urlencoded_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    // axum's Form extractor uses serde_urlencoded; its raw pairs are not public, so decode here.
    let text = std::str::from_utf8(body).ok()?;
    let decode = |s: &str| -> Option<String> {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Where an unauthenticated request is sent: JSON 401 under `/api`, else the login page.
fn unauthenticated(parts: &Parts) -> Response {
    let path = parts.uri.path();
    if path.starts_with("/api/") || path == "/api" {
        return error(StatusCode::UNAUTHORIZED, "sign in or send an API token");
    }
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut to = String::from("/login?next=");
    for b in next.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            to.push(b as char);
        } else {
            to.push_str(&format!("%{b:02X}"));
        }
    }
    Redirect::to(&to).into_response()
}

/// Any signed-in user (session or API token).
///
/// ```no_run
/// use ingest::console::auth::Staff;
/// async fn whoami(Staff(user): Staff) -> String { user.username }
/// ```
#[derive(Clone, Debug)]
pub struct Staff(pub Principal);

impl Staff {
    /// The session's CSRF token, to put in forms (`None` for API tokens).
    pub fn csrf(&self) -> Option<&str> {
        match &self.0.via {
            AuthVia::Session { csrf } => Some(csrf),
            AuthVia::Token { .. } => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Staff {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Principal>() {
            Some(p) => Ok(Staff(p.clone())),
            None => Err(unauthenticated(parts)),
        }
    }
}

/// The lowest role a [`RequireRole`] accepts.
pub trait MinRole: Send + Sync + 'static {
    /// The role.
    const ROLE: Role;
}

/// Role markers for [`RequireRole`].
pub mod role {
    use super::{MinRole, Role};
    /// Nurses and above (any signed-in user).
    #[derive(Clone, Copy, Debug)]
    pub struct Nurse;
    /// Clinicians and admins.
    #[derive(Clone, Copy, Debug)]
    pub struct Clinician;
    /// Admins only.
    #[derive(Clone, Copy, Debug)]
    pub struct Admin;
    impl MinRole for Nurse {
        const ROLE: Role = Role::Nurse;
    }
    impl MinRole for Clinician {
        const ROLE: Role = Role::Clinician;
    }
    impl MinRole for Admin {
        const ROLE: Role = Role::Admin;
    }
}

/// A signed-in user with at least role `R`; 401 without one, 403 below `R`.
///
/// ```no_run
/// use ingest::console::auth::{RequireRole, role};
/// async fn save(RequireRole(user, ..): RequireRole<role::Clinician>) -> String {
///     format!("saved by {}", user.username)
/// }
/// ```
#[derive(Clone, Debug)]
pub struct RequireRole<R: MinRole>(pub Principal, pub PhantomData<R>);

impl<S: Send + Sync, R: MinRole> FromRequestParts<S> for RequireRole<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Staff(p) = Staff::from_request_parts(parts, state).await?;
        if p.role < R::ROLE {
            return Err(error(
                StatusCode::FORBIDDEN,
                &format!(
                    "this needs the {} role; you are signed in as a {}",
                    R::ROLE,
                    p.role
                ),
            ));
        }
        Ok(RequireRole(p, PhantomData))
    }
}

/// Guards `/fhir` when `[console] fhir_requires_auth` is set: a token or session is needed.
pub async fn fhir_guard(request: Request, next: Next) -> Response {
    if request.extensions().get::<Principal>().is_none() {
        return error(StatusCode::UNAUTHORIZED, "sign in or send an API token");
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_bearer_are_found() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; rpm_session=abc ; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer rpm_x"),
        );
        assert_eq!(bearer(&h), Some("rpm_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"note=a+b%21&csrf_token=ab%2Fc&x=";
        assert_eq!(form_field(body, "csrf_token").as_deref(), Some("ab/c"));
        assert_eq!(form_field(body, "note").as_deref(), Some("a b!"));
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field(b"bad=%zz", "bad"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
