//! `GET /fhir/Observation?…`: the search parameters, their checks, and the paging cursor.
//!
//! Supported: `patient` (or `subject`; `Patient/{id}`, a bare id, or an absolute reference),
//! required, since every search runs over one patient's timeline; `code` (tokens `code` or
//! `system|code`, comma-separated for "any of", matched against `Observation.code`); `date`
//! (repeatable, prefixes `eq` `ge` `gt` `le` `lt`, values `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or a
//! full dateTime with offset; a date without a time zone is taken as UTC); `_count` (1–500,
//! default 50); `_format` (JSON only); and `_cursor`, the opaque position the `next` link
//! carries. Anything else is refused with 400 rather than silently ignored, so a misspelt
//! parameter never widens a search (FHIR's strict handling).
//!
//! A cursor is the position of the last Observation returned: the measurement time in Unix
//! microseconds, the reading id and the part index, written `{µs}~{uuid}~{part}`. It says where
//! to continue, not what was asked, so the `next` link repeats the other parameters.

use time::{Date, Month, OffsetDateTime, Time, UtcOffset};
use vitals::{PatientKey, ReadingId};

use super::map::{self, Part};

/// Most Observations per page.
pub const MAX_COUNT: u32 = 500;
/// Observations per page when `_count` is not given.
pub const DEFAULT_COUNT: u32 = 50;

/// What was wrong with a search: the parameter and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadParam {
    /// The parameter name.
    pub param: String,
    /// What was wrong, for people.
    pub why: String,
}

fn bad(param: &str, why: impl Into<String>) -> BadParam {
    BadParam {
        param: param.chars().take(64).collect(),
        why: why.into(),
    }
}

/// A position in a patient's Observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Measurement time, Unix microseconds.
    pub measured_us: i64,
    /// The reading (ordered as its text, as the record orders it).
    pub reading: ReadingKey,
    /// [`Part::index`].
    pub part: u8,
}

/// A reading id ordered by its canonical text (the record's tie-breaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadingKey(pub ReadingId);

impl Position {
    /// The opaque token.
    pub fn token(&self) -> String {
        format!("{}~{}~{}", self.measured_us, self.reading.0, self.part)
    }

    /// Reads a token back.
    pub fn from_token(token: &str) -> Option<Self> {
        let mut it = token.split('~');
        let measured_us = it.next()?.parse().ok()?;
        let reading = it.next()?.parse().ok()?;
        let part = it.next()?.parse().ok()?;
        it.next().is_none().then_some(Position {
            measured_us,
            reading: ReadingKey(reading),
            part,
        })
    }
}

/// A code token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeToken {
    /// The system, when given.
    pub system: Option<String>,
    /// The code.
    pub code: String,
}

/// A checked search.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservationSearch {
    /// Whose Observations.
    pub patient: PatientKey,
    /// Any of these codes (empty: every code).
    pub codes: Vec<CodeToken>,
    /// Measured at or after.
    pub from: OffsetDateTime,
    /// Measured before.
    pub to: OffsetDateTime,
    /// Page size.
    pub count: u32,
    /// Continue after this position.
    pub after: Option<Position>,
    /// The `date` parameters as given, repeated in links.
    pub date_params: Vec<String>,
    /// The `code` parameters as given, repeated in links.
    pub code_params: Vec<String>,
}

impl ObservationSearch {
    /// Checks the query string's pairs.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, BadParam> {
        let mut patient = None;
        let mut codes = Vec::new();
        let mut code_params = Vec::new();
        let mut date_params = Vec::new();
        let mut from = OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 100);
        let mut to = far_future();
        let mut count = None;
        let mut after = None;
        for (name, value) in pairs {
            match name.as_str() {
                "patient" | "subject" => {
                    if patient.is_some() {
                        return Err(bad(name, "give one patient"));
                    }
                    patient = Some(parse_patient_ref(value).ok_or_else(|| {
                        bad(
                            name,
                            "expected Patient/{id} with the id of a Patient resource",
                        )
                    })?);
                }
                "code" => {
                    for token in value.split(',') {
                        let (system, code) = match token.split_once('|') {
                            Some((s, c)) => (Some(s.to_owned()), c),
                            None => (None, token),
                        };
                        if code.is_empty() {
                            return Err(bad(name, "expected code or system|code"));
                        }
                        codes.push(CodeToken {
                            system,
                            code: code.to_owned(),
                        });
                    }
                    code_params.push(value.clone());
                }
                "date" => {
                    let (lo, hi) = parse_date_param(value).map_err(|why| bad(name, why))?;
                    from = from.max(lo);
                    to = to.min(hi);
                    date_params.push(value.clone());
                }
                "_count" => {
                    let n: u32 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_COUNT).contains(n))
                        .ok_or_else(|| {
                            bad(
                                name,
                                format!("expected a whole number from 1 to {MAX_COUNT}"),
                            )
                        })?;
                    count = Some(n);
                }
                "_cursor" => {
                    after = Some(Position::from_token(value).ok_or_else(|| {
                        bad(name, "not a cursor from a `next` link of this server")
                    })?);
                }
                "_format" => {
                    if !matches!(
                        value.as_str(),
                        "json" | "application/json" | "application/fhir+json"
                    ) {
                        return Err(bad(name, "only JSON is supported"));
                    }
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown search parameter (supported: patient, subject, code, date, \
                         _count, _format, _cursor)",
                    ));
                }
            }
        }
        let patient = patient
            .ok_or_else(|| bad("patient", "required: Observations are searched per patient"))?;
        Ok(ObservationSearch {
            patient,
            codes,
            from,
            to,
            count: count.unwrap_or(DEFAULT_COUNT),
            after,
            date_params,
            code_params,
        })
    }

    /// Whether the Observation of `part` of a reading of type `rt` is wanted.
    pub fn wants(&self, part: Part, rt: vitals::ReadingType) -> bool {
        self.codes.is_empty()
            || self
                .codes
                .iter()
                .any(|t| part.matches(rt, t.system.as_deref(), &t.code))
    }

    /// The query string for a link to this search (with `after`, for `next`).
    pub fn query(&self, after: Option<&Position>) -> String {
        let mut q = format!(
            "patient={}",
            encode(&format!("Patient/{}", map::patient_id(&self.patient)))
        );
        for c in &self.code_params {
            q.push_str("&code=");
            q.push_str(&encode(c));
        }
        for d in &self.date_params {
            q.push_str("&date=");
            q.push_str(&encode(d));
        }
        q.push_str(&format!("&_count={}", self.count));
        if let Some(p) = after {
            q.push_str("&_cursor=");
            q.push_str(&encode(&p.token()));
        }
        q
    }
}

fn far_future() -> OffsetDateTime {
    Date::from_calendar_date(9999, Month::December, 31)
        .map(|d| d.with_time(Time::MIDNIGHT).assume_utc())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_patient_ref(value: &str) -> Option<PatientKey> {
    let id = match value.rfind("Patient/") {
        Some(i) => &value[i + "Patient/".len()..],
        None => value,
    };
    map::parse_patient_id(id)
}

/// A `date` parameter as the half-open range `[from, to)` of instants it admits.
fn parse_date_param(value: &str) -> Result<(OffsetDateTime, OffsetDateTime), String> {
    let (prefix, text) = match value.get(..2) {
        Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (start, end) = parse_fhir_date(text).ok_or_else(|| {
        format!(
            "`{}` is not a FHIR date: expected YYYY, YYYY-MM, YYYY-MM-DD or a dateTime with \
             a time zone",
            text.chars().take(40).collect::<String>()
        )
    })?;
    let min = OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 100);
    let max = far_future();
    // `[start, end)` is the period the value names; the prefix compares against it.
    Ok(match prefix {
        "eq" => (start, end),
        "ge" => (start, max),
        "gt" => (end, max),
        "lt" => (min, start),
        "le" => (min, end),
        other => {
            return Err(format!(
                "prefix `{other}` is not supported (use eq, ge, gt, le or lt)"
            ));
        }
    })
}

/// The period a FHIR date or dateTime names, as `[start, end)`.
fn parse_fhir_date(text: &str) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let num = |s: &str| -> Option<i32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let midnight = |d: Date| d.with_time(Time::MIDNIGHT).assume_utc();
    match text.len() {
        4 => {
            let y = num(text)?;
            let start = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let end = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            Some((midnight(start), midnight(end)))
        }
        7 if text.as_bytes()[4] == b'-' => {
            let y = num(&text[..4])?;
            let m = Month::try_from(u8::try_from(num(&text[5..])?).ok()?).ok()?;
            let start = Date::from_calendar_date(y, m, 1).ok()?;
            let end = if m == Month::December {
                Date::from_calendar_date(y + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(y, m.next(), 1).ok()?
            };
            Some((midnight(start), midnight(end)))
        }
        10 => {
            let d = Date::parse(
                text,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .ok()?;
            Some((midnight(d), midnight(d.next_day()?)))
        }
        _ => {
            let t =
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
            // An instant names a period as long as its precision; a microsecond is the
            // record's resolution.
            let t = t.to_offset(UtcOffset::UTC);
            Some((t, t + time::Duration::microseconds(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn date_prefixes_bound_the_range() {
        let s = ObservationSearch::parse(&pairs(&[
            ("patient", "Patient/pk-1"),
            ("date", "ge2026-11-01"),
            ("date", "lt2026-11-20"),
        ]))
        .expect("valid");
        assert_eq!(s.from, datetime!(2026-11-01 0:00 UTC));
        assert_eq!(s.to, datetime!(2026-11-20 0:00 UTC));
        let s = ObservationSearch::parse(&pairs(&[
            ("patient", "pk-1"),
            ("date", "le2026-11"),
            ("date", "gt2026-10-31"),
        ]))
        .expect("valid");
        assert_eq!(s.from, datetime!(2026-11-01 0:00 UTC));
        assert_eq!(s.to, datetime!(2026-12-01 0:00 UTC));
        let s = ObservationSearch::parse(&pairs(&[
            ("patient", "pk-1"),
            ("date", "2026-11-05T10:00:00+01:00"),
        ]))
        .expect("valid");
        assert_eq!(s.from, datetime!(2026-11-05 9:00 UTC));
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |q: &[(&str, &str)]| ObservationSearch::parse(&pairs(q)).expect_err("bad");
        assert_eq!(err(&[("date", "ge2026-11-01")]).param, "patient");
        assert_eq!(
            err(&[("patient", "pk-1"), ("date", "sa2026-11-01")]).param,
            "date"
        );
        assert_eq!(
            err(&[("patient", "pk-1"), ("date", "ge2026-13-01")]).param,
            "date"
        );
        assert_eq!(err(&[("patient", "pk-1"), ("_count", "0")]).param, "_count");
        assert_eq!(err(&[("patient", "pk-1"), ("_count", "x")]).param, "_count");
        assert_eq!(
            err(&[("patient", "pk-1"), ("_cursor", "zz")]).param,
            "_cursor"
        );
        assert_eq!(
            err(&[("patient", "pk-1"), ("categroy", "x")]).param,
            "categroy"
        );
        assert_eq!(err(&[("patient", "Jane Smith")]).param, "patient");
    }

    #[test]
    fn cursors_round_trip_and_links_repeat_the_search() {
        let p = Position {
            measured_us: 1_790_000_000_000_000,
            reading: ReadingKey(ReadingId(uuid::Uuid::from_u128(7))),
            part: 2,
        };
        assert_eq!(Position::from_token(&p.token()), Some(p));
        let s = ObservationSearch::parse(&pairs(&[
            ("patient", "pk_1"),
            ("code", "http://loinc.org|85354-9"),
            ("date", "ge2026-11-01"),
        ]))
        .expect("valid");
        assert_eq!(s.patient.as_str(), "pk_1");
        let q = s.query(Some(&p));
        assert!(q.starts_with("patient=Patient%2Fpk.-1&code=http%3A%2F%2Floinc.org%7C85354-9"));
        assert!(q.contains("&date=ge2026-11-01&_count=50&_cursor="), "{q}");
    }
}
