//! Failed sign-ins counted per client address, so one machine cannot try password after
//! password across many accounts (each account also locks itself after repeated failures:
//! [`crate::record::Record::login`]). Only failures count: a ward PC that many nurses sign in
//! from, or a hospital's NAT address, is never slowed down by successful sign-ins. IPv6
//! addresses count by their /64 network, which one client usually holds whole.
//!
//! The client's address is the TCP peer, or, behind a reverse proxy that appends it
//! (`[console] client_ip_header = "x-forwarded-for"`), the last address in that header: the
//! one the trusted proxy saw. Requests without a known address (in-process tests) are not
//! counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::http::HttpState;

/// Most addresses tracked at once; beyond it, expired windows are dropped first, then the
/// oldest window.
const MAX_TRACKED: usize = 65_536;

/// How many failed sign-ins an address may make within a window (`[console]
/// login_failures_per_address` per 15 minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Failures allowed in a window; `0` turns the limit off.
    pub max_failures: u32,
    /// The window.
    pub window: Duration,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            max_failures: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Failed sign-ins per address, in the current window of each.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    seen: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    failures: u32,
}

impl LoginThrottle {
    /// `Err(retry_after)` when `ip` has used up its failures in the current window.
    pub fn check(&self, limit: Limit, ip: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let Some(ip) = ip.map(bucket) else {
            return Ok(());
        };
        if limit.max_failures == 0 {
            return Ok(());
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&ip) {
            Some(w)
                if now.duration_since(w.start) < limit.window
                    && w.failures >= limit.max_failures =>
            {
                Err(limit.window - now.duration_since(w.start))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `ip`.
    pub fn failed(&self, limit: Limit, ip: Option<IpAddr>, now: Instant) {
        let Some(ip) = ip.map(bucket) else { return };
        if limit.max_failures == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            seen.retain(|_, w| now.duration_since(w.start) < limit.window);
            if seen.len() >= MAX_TRACKED
                && let Some(oldest) = seen.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let w = seen.entry(ip).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(w.start) >= limit.window {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

/// IPv4 addresses as they are; IPv6 by their /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The last address in `header` (what the proxy in front appended), if it parses.
fn from_header(headers: &HeaderMap, header: &str) -> Option<IpAddr> {
    let last = headers
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())?;
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The client's address, as [`LoginThrottle`] counts it.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<HttpState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(h) = &state.console.settings.client_ip_header {
            return Ok(ClientIp(from_header(&parts.headers, h)));
        }
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_failures: u32) -> Limit {
        Limit {
            max_failures,
            window: Duration::from_secs(60),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = LoginThrottle::default();
        let l = limit(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.check(l, ip("10.0.0.1"), t0).is_ok());
            t.failed(l, ip("10.0.0.1"), t0);
        }
        let wait = t.check(l, ip("10.0.0.1"), t0 + Duration::from_secs(10));
        assert_eq!(wait, Err(Duration::from_secs(50)));
        // Another address is not affected.
        assert!(t.check(l, ip("10.0.0.2"), t0).is_ok());
        // The window ends; the count starts again.
        let later = t0 + Duration::from_secs(61);
        assert!(t.check(l, ip("10.0.0.1"), later).is_ok());
        t.failed(l, ip("10.0.0.1"), later);
        assert!(t.check(l, ip("10.0.0.1"), later).is_ok());
    }

    #[test]
    fn ipv6_counts_by_network_and_mapped_ipv4_as_ipv4() {
        let t = LoginThrottle::default();
        let l = limit(2);
        let t0 = Instant::now();
        t.failed(l, ip("2001:db8:1:2::1"), t0);
        t.failed(l, ip("2001:db8:1:2::ffff"), t0);
        assert!(
            t.check(l, ip("2001:db8:1:2:abcd::9"), t0).is_err(),
            "same /64"
        );
        assert!(t.check(l, ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
        t.failed(l, ip("::ffff:192.0.2.7"), t0);
        t.failed(l, ip("192.0.2.7"), t0);
        assert!(t.check(l, ip("192.0.2.7"), t0).is_err());
    }

    #[test]
    fn no_address_and_a_zero_limit_are_never_refused() {
        let t = LoginThrottle::default();
        let l = limit(1);
        let t0 = Instant::now();
        t.failed(l, None, t0);
        t.failed(l, None, t0);
        assert!(t.check(l, None, t0).is_ok());
        let off = limit(0);
        t.failed(off, ip("10.0.0.1"), t0);
        assert!(t.check(off, ip("10.0.0.1"), t0).is_ok());
    }

    #[test]
    fn the_tracked_set_is_bounded() {
        let t = LoginThrottle::default();
        let l = limit(5);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(
                l,
                Some(IpAddr::V4(i.into())),
                t0 + Duration::from_nanos(u64::from(i)),
            );
        }
        assert!(t.seen.lock().expect("lock").len() <= MAX_TRACKED);
    }

    #[test]
    fn the_proxy_header_gives_the_last_address() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.2".parse().expect("value"),
        );
        h.append("x-forwarded-for", "192.0.2.44".parse().expect("value"));
        assert_eq!(from_header(&h, "x-forwarded-for"), ip("192.0.2.44"));
        let mut h = HeaderMap::new();
        h.append("x-real-ip", "[2001:db8::1]:443".parse().expect("value"));
        assert_eq!(from_header(&h, "x-real-ip"), ip("2001:db8::1"));
        assert_eq!(from_header(&HeaderMap::new(), "x-forwarded-for"), None);
    }
}
