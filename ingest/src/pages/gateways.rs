//! Gateways and devices: `GET /console/gateways`. Per gateway: online/offline (its retained
//! status, the broker's last will when the link died), last seen, queue depth and disk, and
//! per device the last contact, battery and clock offset it reported, with the allowlist and
//! patient bindings in force.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use maud::{Markup, html};
use time::OffsetDateTime;
use vitals::{DeviceStatus, GatewayState};

use super::common::{self, age, ok_page, patient_href, time_el};
use super::layout::Section;
use crate::console::auth::Staff;
use crate::http::HttpState;
use crate::record::Gateway;

/// A device clock further off than this is shown as a problem.
const CLOCK_WARN_MS: i64 = 5 * 60 * 1000;
/// A battery at or under this is shown as low.
const BATTERY_WARN: u8 = 20;

/// `GET /console/gateways`.
pub async fn list(State(state): State<HttpState>, staff: Staff) -> Response {
    let now = OffsetDateTime::now_utc();
    let gateways = match state.record.list_gateways().await {
        Ok(g) => g,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let mut sections = Vec::with_capacity(gateways.len());
    for g in &gateways {
        let bindings = match state.record.gateway_device_bindings(&g.id, now).await {
            Ok(b) => b,
            Err(e) => return common::unavailable(Some(&staff), &e),
        };
        sections.push(gateway(g, &bindings, now));
    }
    let body = html! {
        h1 { "Gateways & devices" }
        @if gateways.is_empty() { p class="muted" { "No gateways are registered." } }
        @for s in sections { (s) }
    };
    ok_page("Gateways & devices", Section::Gateways, &staff, None, body)
}

fn gateway(g: &Gateway, bindings: &[vitals::DeviceBinding], now: OffsetDateTime) -> Markup {
    let status = g.status.as_ref();
    let devices: HashMap<_, &DeviceStatus> = status
        .map(|s| s.devices.iter().map(|d| (d.id, d)).collect())
        .unwrap_or_default();
    let queue = status.and_then(|s| s.queue.as_ref());
    html! {
        section class="gateway" data-gateway=(g.id.as_str()) aria-labelledby={ "gw-" (g.id.as_str()) } {
            h2 id={ "gw-" (g.id.as_str()) } {
                (g.id.as_str()) " "
                @match status.map(|s| s.state) {
                    Some(GatewayState::Online) => span class="badge ok" { "online" },
                    Some(GatewayState::Offline) => span class="badge warn" { "offline" },
                    None => span class="badge" { "no status yet" },
                }
            }
            p {
                "Last seen: "
                @match g.last_seen_at {
                    Some(t) => { (time_el(t)) " (" (age(common::seconds_since(t, now))) " ago)" },
                    None => "never",
                }
                @if let Some(q) = queue {
                    " · queue " strong { (q.depth) } " readings"
                    @if let Some(o) = q.oldest { ", oldest " (time_el(o)) }
                    @if q.disk_low { " " span class="badge warn" { "disk low" } }
                }
                @if let Some(sw) = status.and_then(|s| s.software.as_deref()) { " · software " (sw) }
            }
            div class="table-wrap" {
                table {
                    caption { "Allowed devices and their patients" }
                    thead { tr {
                        th scope="col" { "Device" } th scope="col" { "Patient" } th scope="col" { "Last contact" }
                        th scope="col" class="num" { "Battery" } th scope="col" class="num" { "Clock offset" }
                    } }
                    tbody {
                        @if bindings.is_empty() { tr { td colspan="5" class="muted" { "No devices bound." } } }
                        @for b in bindings {
                            @let d = devices.get(&b.id);
                            tr {
                                th scope="row" { code { (b.id) } }
                                td {
                                    @if let Some(p) = &b.patient { a href=(patient_href(p.as_str())) { (p.as_str()) } }
                                    @for u in &b.users {
                                        br; "user " (u.user) ": " a href=(patient_href(u.patient.as_str())) { (u.patient.as_str()) }
                                    }
                                }
                                td { @match d.and_then(|d| d.last_contact) { Some(t) => (time_el(t)), None => span class="muted" { "—" } } }
                                td class="num" {
                                    @match d.and_then(|d| d.battery) {
                                        Some(b) if b <= BATTERY_WARN => span class="badge warn" { (b) " %" },
                                        Some(b) => { (b) " %" },
                                        None => span class="muted" { "—" },
                                    }
                                }
                                td class="num" {
                                    @match d.and_then(|d| d.clock_offset_ms) {
                                        Some(ms) if ms.abs() > CLOCK_WARN_MS => span class="badge warn" { (clock(ms)) },
                                        Some(ms) => (clock(ms)),
                                        None => span class="muted" { "—" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `+2.5 s`, `−3 min`.
fn clock(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "+" };
    let a = ms.unsigned_abs();
    if a < 60_000 {
        format!("{sign}{:.1} s", a as f64 / 1000.0)
    } else if a < 3_600_000 {
        format!("{sign}{} min", a / 60_000)
    } else {
        format!("{sign}{:.1} h", a as f64 / 3_600_000.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_offsets_read_naturally() {
        assert_eq!(super::clock(2_500), "+2.5 s");
        assert_eq!(super::clock(-180_000), "−3 min");
        assert_eq!(super::clock(7_200_000), "+2.0 h");
    }
}
