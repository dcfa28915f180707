//! What every page handler shares: the viewer from the request's principal, times and ages in
//! words, severity badges, and the answer when the record cannot be read.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use time::OffsetDateTime;

use super::layout::{self, Section, Viewer};
use crate::console::auth::Staff;
use crate::record::RecordError;

/// The viewer a signed-in principal is drawn as (no CSRF token for API tokens: they do not
/// use forms).
pub fn viewer(staff: &Staff) -> Viewer {
    Viewer {
        name: staff.0.username.clone(),
        role: staff.0.role.as_str().to_owned(),
        csrf: staff.csrf().unwrap_or_default().to_owned(),
    }
}

/// A full HTML response with the headers every console page carries: not cached (pages show
/// patient data to one signed-in user), not framed by other sites.
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::CONTENT_SECURITY_POLICY,
                // No script at all; styles only from this origin; form posts only here.
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                     form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// A page for a signed-in viewer, 200.
pub fn ok_page(
    title: &str,
    section: Section,
    staff: &Staff,
    flash: Option<&layout::Flash>,
    body: Markup,
) -> Response {
    let v = viewer(staff);
    html_response(
        StatusCode::OK,
        layout::page(title, section, Some(&v), flash, body),
    )
}

/// The record could not be read or written: logged (no patient data in the error), and a
/// page saying so with 503.
pub fn unavailable(staff: Option<&Staff>, e: &RecordError) -> Response {
    tracing::error!(error = %e, "console page: the record failed");
    let v = staff.map(viewer);
    html_response(
        StatusCode::SERVICE_UNAVAILABLE,
        layout::page(
            "Unavailable",
            Section::None,
            v.as_ref(),
            Some(&layout::Flash::Error(
                "The patient record is not answering. Nothing was changed; try again in a moment."
                    .into(),
            )),
            html! { h1 { "Temporarily unavailable" } },
        ),
    )
}

/// A plain error page with `status` (400 for bad input, 404 for an unknown patient…).
pub fn error_page(status: StatusCode, staff: &Staff, title: &str, message: &str) -> Response {
    let v = viewer(staff);
    html_response(
        status,
        layout::page(
            title,
            Section::None,
            Some(&v),
            Some(&layout::Flash::Error(message.to_owned())),
            html! { h1 { (title) } p { a href="/console/alerts" { "Back to the alert inbox" } } },
        ),
    )
}

/// `2026-03-10 14:05` (UTC).
pub fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// A `<time>` element: the exact time for machines and tooltips, `when` for people.
pub fn time_el(t: OffsetDateTime) -> Markup {
    let iso = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    html! { time datetime=(iso) { (when(t)) } }
}

/// An age in words: `45 min`, `3 h`, `2 d 4 h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => "under a minute".into(),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if h < 6 && m > 0 {
                format!("{h} h {m} min")
            } else {
                format!("{h} h")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, (s % 86_400) / 3600);
            if h > 0 {
                format!("{d} d {h} h")
            } else {
                format!("{d} d")
            }
        }
    }
}

/// Seconds between `t` and `now`.
pub fn seconds_since(t: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (now - t).whole_seconds()
}

/// A severity badge: the word, in a colour (never the colour alone).
pub fn severity(s: &str) -> Markup {
    let class = match s {
        "low" | "medium" | "high" | "emergency" => s,
        _ => "low",
    };
    html! { span class={ "sev " (class) } { (s) } }
}

/// The console's link to a patient's timeline.
pub fn patient_href(key: &str) -> String {
    format!("/console/patients/{}", urlencode(key))
}

/// Percent-encodes a path segment or query value (keys are `[A-Za-z0-9._-]`, so this is
/// belt and braces).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A patient's label for staff: the name when there is one, with the key beside it.
pub fn patient_label(name: Option<&str>, key: &str) -> Markup {
    html! {
        @match name {
            Some(n) if !n.is_empty() => { (n) " " span class="muted nowrap" { "(" (key) ")" } },
            _ => span class="nowrap" { (key) },
        }
    }
}

/// A display name for a measurement kind (`spo2` → `SpO2`).
pub fn kind_label(kind: &str) -> String {
    kind.parse::<vitals::Kind>()
        .map(|k| k.info().display.to_owned())
        .unwrap_or_else(|_| kind.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(30), "under a minute");
        assert_eq!(age(45 * 60), "45 min");
        assert_eq!(age(3 * 3600 + 20 * 60), "3 h 20 min");
        assert_eq!(age(7 * 3600 + 20 * 60), "7 h");
        assert_eq!(age(2 * 86_400 + 4 * 3600), "2 d 4 h");
        assert_eq!(age(-5), "under a minute");
    }

    #[test]
    fn keys_are_encoded_in_links() {
        assert_eq!(patient_href("pk-1"), "/console/patients/pk-1");
        assert_eq!(patient_href("a/b?c"), "/console/patients/a%2Fb%3Fc");
    }
}
