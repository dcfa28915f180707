//! The page shell every console page is drawn in: the document head, the skip link, the
//! header with the main navigation and the signed-in user, flash messages, and the footer.

use maud::{DOCTYPE, Markup, html};

/// The person a page is drawn for, as the shell shows them.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// Display name (`Nurse Ada`), or the login name.
    pub name: String,
    /// Role name (`nurse`, `clinician`, `admin`).
    pub role: String,
    /// The session's CSRF token, for the sign-out form and every other POST form.
    pub csrf: String,
}

/// The sections in the main navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The alert inbox.
    Alerts,
    /// The caseload and patient timelines.
    Patients,
    /// Gateways and devices.
    Gateways,
    /// The audit log.
    Audit,
    /// Pages outside the navigation (sign-in).
    None,
}

const NAV: [(Section, &str, &str); 4] = [
    (Section::Alerts, "/console/alerts", "Alerts"),
    (Section::Patients, "/console/patients", "Patients"),
    (Section::Gateways, "/console/gateways", "Gateways & devices"),
    (Section::Audit, "/console/audit", "Audit log"),
];

/// A message shown above a page's content.
#[derive(Clone, Debug)]
pub enum Flash {
    /// Something was done.
    Ok(String),
    /// Something was refused or failed.
    Error(String),
}

/// The hidden CSRF field every POST form carries (the field the console's middleware checks).
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(crate::console::auth::CSRF_FIELD) value=(token); }
}

/// A whole page: `title` in the tab and as nothing else (pages write their own `<h1>`).
pub fn page(
    title: &str,
    section: Section,
    viewer: Option<&Viewer>,
    flash: Option<&Flash>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // Patient pages must not be kept by shared browsers or proxies (set as a header
                // too); the meta tag covers "Save page as".
                meta name="robots" content="noindex, nofollow";
                title { (title) " · RPM console" }
                link rel="stylesheet" href=(super::CSS_PATH);
            }
            body {
                a class="skip" href="#main" { "Skip to main content" }
                header class="top" {
                    a class="brand" href="/console" { "RPM console" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            ul {
                                @for (s, href, label) in NAV {
                                    li {
                                        @if s == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        form class="who" method="post" action="/logout" {
                            (csrf_field(&v.csrf))
                            span { (v.name) " " span class="badge" { (v.role) } }
                            button type="submit" class="secondary" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    @match flash {
                        Some(Flash::Ok(m)) => p class="flash ok" role="status" { (m) },
                        Some(Flash::Error(m)) => p class="flash error" role="alert" { (m) },
                        None => {},
                    }
                    (body)
                }
                footer {
                    "Times are shown in UTC. Remote patient monitoring console."
                }
            }
        }
    }
}
