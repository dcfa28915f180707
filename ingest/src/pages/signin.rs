//! The sign-in page, `GET /login`: the form that posts to `POST /login` (the console's form
//! handler checks the password, sets the session cookie and goes on to `next`, or comes back
//! here with `?error=1`). Signing out is the header's form, `POST /logout`.
//!
//! Every refusal reads the same ("wrong user name or password, or the account is locked or
//! disabled"), so the page does not tell which user names exist; the audit log says which.

use axum::Extension;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::common::html_response;
use super::layout::{self, Flash, Section};
use crate::console::auth::Principal;

/// Where a successful sign-in goes by default.
const HOME: &str = "/console/alerts";

/// `?next=…&error=1` of the sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    error: Option<String>,
}

/// Only a path on this server: `/console/…`, never `//evil.example` or `https://…`.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n
        }
        _ => HOME,
    }
}

fn form(next: &str, flash: Option<&Flash>, status: StatusCode) -> Response {
    let body = html! {
        div class="signin" {
            h1 { "Sign in" }
            p class="muted" { "For nurses, clinicians and administrators of the monitoring service." }
            form id="sign-in" class="stack" method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                div {
                    label for="username" { "User name" }
                    input id="username" name="username" type="text" autocomplete="username"
                        autocapitalize="none" spellcheck="false" required autofocus;
                }
                div {
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                }
                div { button type="submit" { "Sign in" } }
            }
        }
    };
    html_response(
        status,
        layout::page("Sign in", Section::None, None, flash, body),
    )
}

/// `GET /login`: the form (or straight on, when already signed in).
pub async fn show(principal: Option<Extension<Principal>>, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if principal.is_some() {
        return Redirect::to(next).into_response();
    }
    if q.error.is_some() {
        let msg = Flash::Error(
            "Sign-in failed: wrong user name or password, or the account is locked or \
             disabled. After five failures in a row an account is locked for 15 minutes."
                .into(),
        );
        return form(next, Some(&msg), StatusCode::UNAUTHORIZED);
    }
    form(next, None, StatusCode::OK)
}

/// The form again, 429, when this address has made too many failed sign-ins.
pub fn throttled(next: Option<&str>, retry_after: std::time::Duration) -> Response {
    let minutes = retry_after.as_secs().div_ceil(60).max(1);
    let msg = Flash::Error(format!(
        "Too many failed sign-ins from this computer's address. Try again in {minutes} \
         minute{}.",
        if minutes == 1 { "" } else { "s" }
    ));
    let mut r = form(safe_next(next), Some(&msg), StatusCode::TOO_MANY_REQUESTS);
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        retry_after.as_secs().max(1).into(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/console/patients")), "/console/patients");
        assert_eq!(safe_next(Some("//evil.example/x")), HOME);
        assert_eq!(safe_next(Some("/\\evil.example")), HOME);
        assert_eq!(safe_next(Some("https://evil.example")), HOME);
        assert_eq!(safe_next(Some("/a\r\nSet-Cookie: x")), HOME);
        assert_eq!(safe_next(None), HOME);
    }
}
