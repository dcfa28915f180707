//! Who is told: care teams, on-duty rotas and shifts, contact points, patient preferences and
//! quiet hours. Everything here is a pure function of its arguments; the time is one of them.
//!
//! A care team covers a list of patients and has escalation *tiers* (tier 0 is the nurse on
//! duty, tier 1 whoever backs them up, and so on). Each tier has a [`Rota`]: explicit
//! [`Shift`]s, which win when any covers the instant, else a weekly pattern of
//! [`WeeklySlot`]s read in the rota's time zone (so "Mon 08:00–20:00" means local time
//! across daylight-saving changes; a slot whose end is not after its start runs overnight).

use std::collections::HashMap;
use std::fmt;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use vitals::PatientKey;

/// A directory that does not hold together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A time zone name the tz database does not know.
    #[error("unknown time zone {zone:?} in {place}")]
    TimeZone {
        /// The name given.
        zone: String,
        /// Where it was written.
        place: String,
    },
    /// A rota names a person the directory does not have.
    #[error("team {team:?} tier {tier} names unknown person {person:?}")]
    UnknownPerson {
        /// The team.
        team: String,
        /// The tier.
        tier: usize,
        /// The id given.
        person: String,
    },
    /// A person id is empty or not a plain token.
    #[error("invalid person id {0:?}: use 1-64 of a-z 0-9 - _ .")]
    PersonId(String),
    /// An explicit shift that ends before it starts.
    #[error("team {team:?} tier {tier}: a shift ends before it starts")]
    Shift {
        /// The team.
        team: String,
        /// The tier.
        tier: usize,
    },
    /// A team with no tiers.
    #[error("team {0:?} has no tiers")]
    NoTiers(String),
}

/// A member of staff's id in the directory (not their name; safe in logs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonId(String);

impl PersonId {
    /// Validates and wraps: 1–64 of `a-z 0-9 - _ .`.
    pub fn new(s: impl Into<String>) -> Result<Self, RoutingError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(PersonId(s))
        } else {
            Err(RoutingError::PersonId(s))
        }
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PersonId {
    type Error = RoutingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PersonId::new(s)
    }
}

impl From<PersonId> for String {
    fn from(p: PersonId) -> String {
        p.0
    }
}

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A way of reaching someone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Email over SMTP.
    Email,
    /// Text message through an HTTP SMS gateway.
    Sms,
    /// A JSON POST to a URL (a pager service, a ward system).
    Webhook,
}

impl ChannelKind {
    /// Stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Webhook => "webhook",
        }
    }

    /// From [`ChannelKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(ChannelKind::Email),
            "sms" => Some(ChannelKind::Sms),
            "webhook" => Some(ChannelKind::Webhook),
            _ => None,
        }
    }
}

/// One contact point: a channel and the address on it (email address, E.164 number, URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// The channel.
    pub channel: ChannelKind,
    /// The address on it. PHI: never logged.
    pub address: String,
}

/// A member of staff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Their id.
    pub id: PersonId,
    /// How messages greet them.
    pub name: String,
    /// Every contact point is used when they are notified.
    pub contacts: Vec<Contact>,
}

/// Quiet hours in the patient's local time: `start` up to (not including) `end`; an `end`
/// not after `start` runs overnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Local start, e.g. "22:00".
    pub start: Time,
    /// Local end, e.g. "07:30".
    pub end: Time,
}

impl QuietHours {
    /// When quiet hours that cover `now` end, or `None` when `now` is outside them.
    pub fn release(&self, tz: &TimeZone, now: Timestamp) -> Option<Timestamp> {
        let local = now.to_zoned(tz.clone());
        let (date, t) = (local.date(), local.time());
        let end_date = if self.start < self.end {
            if t >= self.start && t < self.end {
                date
            } else {
                return None;
            }
        } else if t >= self.start {
            date.checked_add(1.day()).ok()?
        } else if t < self.end {
            date
        } else {
            return None;
        };
        let end = end_date.to_datetime(self.end);
        tz.to_ambiguous_zoned(end)
            .later()
            .ok()
            .map(|z| z.timestamp())
    }
}

/// How a patient is reached, and when not to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientContact {
    /// Whose.
    pub patient: PatientKey,
    /// How messages greet them. PHI: never logged.
    pub name: String,
    /// IANA time zone, e.g. "Europe/London".
    pub time_zone: String,
    /// Contact points, in the order of preference; all are used.
    #[serde(default)]
    pub contacts: Vec<Contact>,
    /// Non-urgent messages wait until these end.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// What the clinician told them to do when their readings are off, in their words.
    #[serde(default)]
    pub action_plan: Option<String>,
}

/// A day of the week in rota files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// A recurring weekly duty, in the rota's time zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklySlot {
    /// Days on which the slot starts.
    pub days: Vec<Day>,
    /// Local start time.
    pub start: Time,
    /// Local end time; not after `start` means the next morning.
    pub end: Time,
    /// Who is on duty.
    pub person: PersonId,
}

impl WeeklySlot {
    fn covers(&self, day: Weekday, t: Time) -> bool {
        let on = |d: Weekday| self.days.iter().any(|x| x.weekday() == d);
        if self.start < self.end {
            on(day) && t >= self.start && t < self.end
        } else {
            (on(day) && t >= self.start) || (on(day.previous()) && t < self.end)
        }
    }
}

/// An explicit shift (cover, swaps, bank holidays): wins over the weekly pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// Start (RFC 3339 instant).
    pub start: Timestamp,
    /// End, exclusive.
    pub end: Timestamp,
    /// Who is on duty.
    pub person: PersonId,
}

/// Who is on duty for one tier of a team.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rota {
    /// IANA time zone the weekly slots are read in.
    pub time_zone: String,
    /// The recurring pattern.
    #[serde(default)]
    pub weekly: Vec<WeeklySlot>,
    /// Explicit shifts.
    #[serde(default)]
    pub shifts: Vec<Shift>,
}

/// A care team: the patients it covers and its escalation tiers, first tier first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareTeam {
    /// The team's name (e.g. "copd-north").
    pub id: String,
    /// The patients it covers.
    pub patients: Vec<PatientKey>,
    /// Tier 0 is notified first; each later tier on escalation.
    pub tiers: Vec<Rota>,
}

/// The directory as written in a config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Staff.
    #[serde(default)]
    pub people: Vec<Person>,
    /// Teams.
    #[serde(default)]
    pub teams: Vec<CareTeam>,
    /// Patients' contact preferences.
    #[serde(default)]
    pub patients: Vec<PatientContact>,
}

/// Who a notification is for. Holds ids only, never names or addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Recipient {
    /// A member of staff, notified as part of escalation tier `tier`.
    Staff {
        /// Who.
        person: PersonId,
        /// Which tier they were notified for.
        tier: u8,
    },
    /// The patient.
    Patient {
        /// Whose.
        patient: PatientKey,
    },
}

impl Recipient {
    /// A stable text form used in group keys and ack links (`staff:ID` or `patient:KEY`).
    pub fn key(&self) -> String {
        match self {
            Recipient::Staff { person, .. } => format!("staff:{person}"),
            Recipient::Patient { patient } => format!("patient:{patient}"),
        }
    }
}

/// One resolved destination: recipient, contact point, greeting and time zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Who.
    pub recipient: Recipient,
    /// How.
    pub contact: Contact,
    /// Their name, for the greeting (PHI: never logged).
    pub name: String,
    /// For patients: the end of quiet hours when they are in them now.
    pub quiet_until: Option<Timestamp>,
}

/// The validated directory: time zones resolved, people indexed.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    people: HashMap<PersonId, Person>,
    teams: Vec<(CareTeam, Vec<TimeZone>)>,
    team_of: HashMap<PatientKey, usize>,
    patients: HashMap<PatientKey, (PatientContact, TimeZone)>,
}

fn zone(name: &str, place: impl FnOnce() -> String) -> Result<TimeZone, RoutingError> {
    TimeZone::get(name).map_err(|_| RoutingError::TimeZone {
        zone: name.to_owned(),
        place: place(),
    })
}

impl Directory {
    /// Validates a directory config: time zones known, rota people known, shifts sane.
    pub fn build(config: DirectoryConfig) -> Result<Self, RoutingError> {
        let people: HashMap<PersonId, Person> = config
            .people
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut teams = Vec::new();
        let mut team_of = HashMap::new();
        for team in config.teams {
            if team.tiers.is_empty() {
                return Err(RoutingError::NoTiers(team.id));
            }
            let mut zones = Vec::new();
            for (tier, rota) in team.tiers.iter().enumerate() {
                zones.push(zone(&rota.time_zone, || {
                    format!("team {:?} tier {tier}", team.id)
                })?);
                let named = rota
                    .weekly
                    .iter()
                    .map(|s| &s.person)
                    .chain(rota.shifts.iter().map(|s| &s.person));
                for person in named {
                    if !people.contains_key(person) {
                        return Err(RoutingError::UnknownPerson {
                            team: team.id.clone(),
                            tier,
                            person: person.to_string(),
                        });
                    }
                }
                if rota.shifts.iter().any(|s| s.end <= s.start) {
                    return Err(RoutingError::Shift {
                        team: team.id.clone(),
                        tier,
                    });
                }
            }
            for p in &team.patients {
                team_of.insert(p.clone(), teams.len());
            }
            teams.push((team, zones));
        }
        let mut patients = HashMap::new();
        for p in config.patients {
            let tz = zone(&p.time_zone, || {
                "a patient's contact preferences".to_owned()
            })?;
            patients.insert(p.patient.clone(), (p, tz));
        }
        Ok(Directory {
            people,
            teams,
            team_of,
            patients,
        })
    }

    /// How many escalation tiers the patient's team has (0 when no team covers them).
    pub fn tiers(&self, patient: &PatientKey) -> usize {
        self.team_of
            .get(patient)
            .and_then(|&i| self.teams.get(i))
            .map_or(0, |(t, _)| t.tiers.len())
    }

    /// The people on duty in `tier` for `patient` at `now`: those on an explicit shift if
    /// any covers `now`, else those whose weekly slot does.
    pub fn on_duty(&self, patient: &PatientKey, tier: usize, now: Timestamp) -> Vec<&Person> {
        let Some((team, zones)) = self.team_of.get(patient).and_then(|&i| self.teams.get(i)) else {
            return Vec::new();
        };
        let (Some(rota), Some(tz)) = (team.tiers.get(tier), zones.get(tier)) else {
            return Vec::new();
        };
        let mut ids: Vec<&PersonId> = rota
            .shifts
            .iter()
            .filter(|s| s.start <= now && now < s.end)
            .map(|s| &s.person)
            .collect();
        if ids.is_empty() {
            let local = now.to_zoned(tz.clone());
            let (day, t) = (local.weekday(), local.time());
            ids = rota
                .weekly
                .iter()
                .filter(|s| s.covers(day, t))
                .map(|s| &s.person)
                .collect();
        }
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.people.get(id))
            .collect()
    }

    /// The patient's contact preferences and time zone.
    pub fn patient(&self, patient: &PatientKey) -> Option<(&PatientContact, &TimeZone)> {
        self.patients.get(patient).map(|(p, tz)| (p, tz))
    }

    /// Staff destinations for `tier` at `now`: every contact point of everyone on duty.
    pub fn staff_routes(&self, patient: &PatientKey, tier: usize, now: Timestamp) -> Vec<Route> {
        let tier_u8 = u8::try_from(tier).unwrap_or(u8::MAX);
        self.on_duty(patient, tier, now)
            .into_iter()
            .flat_map(|p| {
                p.contacts.iter().map(move |c| Route {
                    recipient: Recipient::Staff {
                        person: p.id.clone(),
                        tier: tier_u8,
                    },
                    contact: c.clone(),
                    name: p.name.clone(),
                    quiet_until: None,
                })
            })
            .collect()
    }

    /// Staff destinations for escalation tier `tier` at `now`, never empty while anyone on
    /// the patient's team is on duty: when nobody in `tier` is (a hole in the rota), the
    /// nearest tier with someone on duty covers it, later tiers first (they are the ones an
    /// unanswered alert would reach next), then earlier ones. The routes keep `tier` as the
    /// tier they are notified for. Empty only when no tier has anyone on duty, or no team
    /// covers the patient.
    pub fn covering_routes(&self, patient: &PatientKey, tier: usize, now: Timestamp) -> Vec<Route> {
        let tiers = self.tiers(patient);
        let label = u8::try_from(tier).unwrap_or(u8::MAX);
        (tier..tiers)
            .chain((0..tier.min(tiers)).rev())
            .map(|t| self.staff_routes(patient, t, now))
            .find(|routes| !routes.is_empty())
            .map(|routes| {
                routes
                    .into_iter()
                    .map(|mut r| {
                        if let Recipient::Staff { tier, .. } = &mut r.recipient {
                            *tier = label;
                        }
                        r
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Patient destinations at `now`, with the end of quiet hours when they are in them.
    pub fn patient_routes(&self, patient: &PatientKey, now: Timestamp) -> Vec<Route> {
        let Some((p, tz)) = self.patients.get(patient) else {
            return Vec::new();
        };
        let quiet_until = p.quiet_hours.and_then(|q| q.release(tz, now));
        p.contacts
            .iter()
            .map(|c| Route {
                recipient: Recipient::Patient {
                    patient: p.patient.clone(),
                },
                contact: c.clone(),
                name: p.name.clone(),
                quiet_until,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn t(s: &str) -> Time {
        s.parse().expect("test time")
    }

    fn directory() -> Directory {
        let pid = |s: &str| PersonId::new(s).expect("test id");
        let person = |id: &str| Person {
            id: pid(id),
            name: format!("Nurse {id}"),
            contacts: vec![Contact {
                channel: ChannelKind::Email,
                address: format!("{id}@ward.example"),
            }],
        };
        let pk = PatientKey::new("pt-1").expect("test key");
        Directory::build(DirectoryConfig {
            people: vec![
                person("day"),
                person("night"),
                person("cover"),
                person("lead"),
            ],
            teams: vec![CareTeam {
                id: "copd".into(),
                patients: vec![pk.clone()],
                tiers: vec![
                    Rota {
                        time_zone: "Europe/London".into(),
                        weekly: vec![
                            WeeklySlot {
                                days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
                                start: t("08:00"),
                                end: t("20:00"),
                                person: pid("day"),
                            },
                            WeeklySlot {
                                days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
                                start: t("20:00"),
                                end: t("08:00"),
                                person: pid("night"),
                            },
                        ],
                        shifts: vec![Shift {
                            start: ts("2026-03-04T12:00:00Z"),
                            end: ts("2026-03-04T14:00:00Z"),
                            person: pid("cover"),
                        }],
                    },
                    Rota {
                        time_zone: "UTC".into(),
                        weekly: vec![WeeklySlot {
                            days: vec![
                                Day::Mon,
                                Day::Tue,
                                Day::Wed,
                                Day::Thu,
                                Day::Fri,
                                Day::Sat,
                                Day::Sun,
                            ],
                            start: t("00:00"),
                            end: t("00:00"),
                            person: pid("lead"),
                        }],
                        shifts: vec![],
                    },
                ],
            }],
            patients: vec![PatientContact {
                patient: pk,
                name: "Alex".into(),
                time_zone: "Europe/London".into(),
                contacts: vec![Contact {
                    channel: ChannelKind::Sms,
                    address: "+447700900123".into(),
                }],
                quiet_hours: Some(QuietHours {
                    start: t("22:00"),
                    end: t("07:30"),
                }),
                action_plan: None,
            }],
        })
        .expect("valid directory")
    }

    fn duty(d: &Directory, tier: usize, at: &str) -> Vec<String> {
        let pk = PatientKey::new("pt-1").expect("test key");
        d.on_duty(&pk, tier, ts(at))
            .into_iter()
            .map(|p| p.id.to_string())
            .collect()
    }

    #[test]
    fn weekly_rota_is_read_in_local_time_across_dst() {
        let d = directory();
        // Wednesday 4 March 2026, GMT (UTC+0).
        assert_eq!(duty(&d, 0, "2026-03-04T09:00:00Z"), ["day"]);
        // British Summer Time (UTC+1) from 29 March: 07:30Z is 08:30 local on Wednesday 1 April.
        assert_eq!(duty(&d, 0, "2026-04-01T07:30:00Z"), ["day"]);
        assert_eq!(duty(&d, 0, "2026-03-04T07:30:00Z"), ["night"]);
    }

    #[test]
    fn overnight_slot_runs_into_the_next_morning_and_not_past_the_week() {
        let d = directory();
        // Friday 22:00 local starts a night; Saturday 03:00 is still in it.
        assert_eq!(duty(&d, 0, "2026-03-07T03:00:00Z"), ["night"]);
        // Saturday night nobody on tier 0 (no slot starts on Saturday).
        assert!(duty(&d, 0, "2026-03-07T23:00:00Z").is_empty());
        // Monday 03:00: Sunday's night does not exist, so nobody either.
        assert!(duty(&d, 0, "2026-03-09T03:00:00Z").is_empty());
        // The always-on second tier covers it.
        assert_eq!(duty(&d, 1, "2026-03-09T03:00:00Z"), ["lead"]);
    }

    #[test]
    fn explicit_shift_overrides_the_weekly_pattern() {
        let d = directory();
        assert_eq!(duty(&d, 0, "2026-03-04T12:30:00Z"), ["cover"]);
        assert_eq!(duty(&d, 0, "2026-03-04T14:00:00Z"), ["day"]);
    }

    #[test]
    fn a_hole_in_the_rota_is_covered_by_the_nearest_tier_with_someone_on_duty() {
        let d = directory();
        let pk = PatientKey::new("pt-1").expect("test key");
        let who = |routes: Vec<Route>| -> Vec<(String, u8)> {
            routes
                .into_iter()
                .filter_map(|r| match r.recipient {
                    Recipient::Staff { person, tier } => Some((person.to_string(), tier)),
                    Recipient::Patient { .. } => None,
                })
                .collect()
        };
        // Saturday night: nobody on tier 0, so the always-on tier 1 covers it, notified for
        // tier 0.
        let saturday_night = ts("2026-03-07T23:00:00Z");
        assert!(d.staff_routes(&pk, 0, saturday_night).is_empty());
        assert_eq!(
            who(d.covering_routes(&pk, 0, saturday_night)),
            [("lead".to_owned(), 0)]
        );
        // A staffed tier is its own cover.
        let wednesday = ts("2026-03-04T09:00:00Z");
        assert_eq!(
            who(d.covering_routes(&pk, 0, wednesday)),
            [("day".to_owned(), 0)]
        );
        // Past the last tier nothing is invented; an unknown patient has nobody.
        assert_eq!(
            who(d.covering_routes(&pk, 1, saturday_night)),
            [("lead".to_owned(), 1)]
        );
        let stranger = PatientKey::new("pt-2").expect("test key");
        assert!(d.covering_routes(&stranger, 0, wednesday).is_empty());
    }

    #[test]
    fn quiet_hours_release_at_their_local_end() {
        let d = directory();
        let pk = PatientKey::new("pt-1").expect("test key");
        let routes = d.patient_routes(&pk, ts("2026-03-04T23:10:00Z"));
        assert_eq!(routes[0].quiet_until, Some(ts("2026-03-05T07:30:00Z")));
        // In summer time 07:30 local is 06:30Z.
        let routes = d.patient_routes(&pk, ts("2026-06-10T02:00:00Z"));
        assert_eq!(routes[0].quiet_until, Some(ts("2026-06-10T06:30:00Z")));
        assert_eq!(
            d.patient_routes(&pk, ts("2026-03-04T12:00:00Z"))[0].quiet_until,
            None
        );
    }

    #[test]
    fn unknown_zone_and_person_are_refused() {
        let bad = DirectoryConfig {
            patients: vec![PatientContact {
                patient: PatientKey::new("p").expect("key"),
                name: "x".into(),
                time_zone: "Mars/Olympus".into(),
                contacts: vec![],
                quiet_hours: None,
                action_plan: None,
            }],
            ..DirectoryConfig::default()
        };
        assert!(matches!(
            Directory::build(bad),
            Err(RoutingError::TimeZone { .. })
        ));
    }
}
