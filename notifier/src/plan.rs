//! From an alert notice to outbox rows: who gets it now, on which contact points, not before
//! when. Pure: the directory, the policy and the time are arguments.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::notice::{AlertNotice, NoticeKind, Severity};
use crate::outbox::{GroupKey, NewNotification, NotificationId, add};
use crate::routing::{Directory, Route};

/// Timing rules for new notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPolicy {
    /// How long a new group waits for more alerts before it is sent (Alertmanager's
    /// `group_wait`).
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// Alerts at or above this severity skip `group_wait`.
    pub immediate_from: Severity,
    /// Patient messages at or above this severity ignore quiet hours.
    pub patient_urgent_from: Severity,
    /// Alerts below this severity page nobody (they are for the record).
    pub notify_from: Severity,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        PlanPolicy {
            group_wait: Duration::from_secs(30),
            immediate_from: Severity::Emergency,
            patient_urgent_from: Severity::Emergency,
            notify_from: Severity::Low,
        }
    }
}

/// Which escalation step a plan is for: the tier notified and, once past the last tier,
/// which repeat of it. Ordered as escalation proceeds (tier, then round); the default is
/// [`Step::FIRST`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Step {
    /// The escalation tier (0: the nurse on duty).
    pub tier: usize,
    /// Repeats of the last tier (0 the first time).
    pub round: u32,
}

impl Step {
    /// The first notification, at raise time.
    pub const FIRST: Step = Step { tier: 0, round: 0 };

    /// Whether this is an escalation (a later tier or a repeat), not the first notification.
    pub fn is_escalation(self) -> bool {
        self != Step::FIRST
    }

    fn number(self) -> u32 {
        u32::try_from(self.tier)
            .unwrap_or(u32::MAX)
            .saturating_add(self.round)
    }
}

fn row(
    notice: &AlertNotice,
    route: Route,
    step: Step,
    not_before: Timestamp,
    plan: Option<String>,
    now: Timestamp,
) -> NewNotification {
    NewNotification {
        id: NotificationId::derive(
            notice,
            &route.recipient,
            route.contact.channel,
            &route.contact.address,
            step.number(),
        ),
        group: GroupKey::new(
            &route.recipient,
            route.contact.channel,
            &route.contact.address,
            &notice.patient,
        ),
        notice: notice.clone(),
        recipient: route.recipient,
        channel: route.contact.channel,
        address: route.contact.address,
        name: route.name,
        action_plan: plan,
        not_before,
        step,
        planned_at: now,
    }
}

/// The outbox rows for `notice` at escalation `step`, at `now`.
///
/// - Staff on duty in the step's tier get it on every contact point, after `group_wait`
///   unless the alert is at or above `immediate_from`. Quiet hours never apply to them. A
///   tier with nobody on duty is covered by the nearest tier with someone
///   ([`Directory::covering_routes`]): a hole in the rota never leaves an alert unsent.
/// - The patient gets it only on the first step, when the audience includes them, the rule
///   has patient wording and the alert is not a resolution; non-urgent messages wait for the
///   end of their quiet hours.
/// - Alerts below `notify_from` go to nobody.
pub fn plan(
    notice: &AlertNotice,
    directory: &Directory,
    policy: &PlanPolicy,
    step: Step,
    now: Timestamp,
) -> Vec<NewNotification> {
    if notice.severity < policy.notify_from {
        return Vec::new();
    }
    let mut rows = Vec::new();
    if notice.audience.includes_nurse() {
        let at = if notice.severity >= policy.immediate_from {
            now
        } else {
            add(now, policy.group_wait)
        };
        let routes = directory.covering_routes(&notice.patient, step.tier, now);
        if routes.is_empty() {
            // An alert id names no person; the console shows the alert as not notified.
            tracing::warn!(alert = %notice.alert, tier = step.tier, "no staff on duty in any tier of the patient's team (or no team covers the patient): nobody on the care team is told");
        }
        for route in routes {
            rows.push(row(notice, route, step, at, None, now));
        }
    }
    let tells_patient = step == Step::FIRST
        && notice.audience.includes_patient()
        && notice.kind != NoticeKind::Resolved
        && notice.patient_text.is_some();
    if tells_patient {
        let action_plan = directory
            .patient(&notice.patient)
            .and_then(|(p, _)| p.action_plan.clone());
        for route in directory.patient_routes(&notice.patient, now) {
            let at = if notice.severity >= policy.patient_urgent_from {
                now
            } else {
                let waited = add(now, policy.group_wait);
                route.quiet_until.map_or(waited, |q| q.max(waited))
            };
            rows.push(row(notice, route, step, at, action_plan.clone(), now));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{AlertId, Audience};
    use crate::routing::{DirectoryConfig, Recipient};
    use vitals::PatientKey;

    fn directory() -> Directory {
        let config: DirectoryConfig = toml::from_str(
            r#"
            [[people]]
            id = "ann"
            name = "Ann"
            contacts = [{ channel = "email", address = "ann@ward.test" }]
            [[teams]]
            id = "t"
            patients = ["pt-1"]
            [[teams.tiers]]
            time_zone = "Europe/London"
            weekly = [{ days = ["mon","tue","wed","thu","fri","sat","sun"], start = "00:00", end = "00:00", person = "ann" }]
            [[patients]]
            patient = "pt-1"
            name = "Alex"
            time_zone = "Europe/London"
            contacts = [{ channel = "sms", address = "+447700900222" }]
            quiet_hours = { start = "22:00", end = "07:00" }
            action_plan = "Rest and use your inhaler."
            "#,
        )
        .expect("directory toml");
        Directory::build(config).expect("directory")
    }

    fn notice(severity: Severity, at: Timestamp) -> AlertNotice {
        AlertNotice {
            alert: AlertId::new("al-1").expect("id"),
            patient: PatientKey::new("pt-1").expect("key"),
            rule: "spo2-low".into(),
            kind: NoticeKind::Raised,
            severity,
            audience: Audience::Both,
            opened_at: at,
            at,
            nurse_text: "SpO2 88".into(),
            patient_text: Some("Your oxygen is low.".into()),
            explanation: String::new(),
            evidence: Vec::new(),
        }
    }

    fn split(rows: &[NewNotification]) -> (Vec<&NewNotification>, Vec<&NewNotification>) {
        rows.iter()
            .partition(|r| matches!(r.recipient, Recipient::Staff { .. }))
    }

    #[test]
    fn quiet_hours_delay_non_urgent_patient_messages_but_never_the_nurse() {
        let d = directory();
        let policy = PlanPolicy::default();
        // 23:30 in London in winter.
        let now: Timestamp = "2026-01-10T23:30:00Z".parse().expect("t");
        let rows = plan(&notice(Severity::High, now), &d, &policy, Step::FIRST, now);
        let (staff, patient) = split(&rows);
        assert_eq!(staff[0].not_before, add(now, policy.group_wait));
        assert_eq!(
            patient[0].not_before,
            "2026-01-11T07:00:00Z".parse::<Timestamp>().expect("t")
        );
        assert_eq!(
            patient[0].action_plan.as_deref(),
            Some("Rest and use your inhaler.")
        );
    }

    #[test]
    fn emergencies_go_at_once_to_nurse_and_patient_even_in_quiet_hours() {
        let d = directory();
        let now: Timestamp = "2026-01-10T23:30:00Z".parse().expect("t");
        let rows = plan(
            &notice(Severity::Emergency, now),
            &d,
            &PlanPolicy::default(),
            Step::FIRST,
            now,
        );
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.not_before == now));
    }

    #[test]
    fn info_pages_nobody_and_patients_hear_neither_resolutions_nor_escalations() {
        let d = directory();
        let policy = PlanPolicy::default();
        let now: Timestamp = "2026-01-10T12:00:00Z".parse().expect("t");
        assert!(plan(&notice(Severity::Info, now), &d, &policy, Step::FIRST, now).is_empty());
        let mut resolved = notice(Severity::High, now);
        resolved.kind = NoticeKind::Resolved;
        let rows = plan(&resolved, &d, &policy, Step::FIRST, now);
        let (staff, patient) = split(&rows);
        assert_eq!((staff.len(), patient.len()), (1, 0));
        let repeat = Step { tier: 0, round: 1 };
        let rows = plan(&notice(Severity::High, now), &d, &policy, repeat, now);
        assert!(
            rows.iter()
                .all(|r| matches!(r.recipient, Recipient::Staff { .. }))
        );
    }

    #[test]
    fn an_alert_in_a_hole_in_the_rota_reaches_the_next_tier_at_once() {
        let config: DirectoryConfig = toml::from_str(
            r#"
            [[people]]
            id = "ann"
            name = "Ann"
            contacts = [{ channel = "email", address = "ann@ward.test" }]
            [[people]]
            id = "cal"
            name = "Cal"
            contacts = [{ channel = "sms", address = "+447700900333" }]
            [[teams]]
            id = "t"
            patients = ["pt-1"]
            [[teams.tiers]]
            time_zone = "Europe/London"
            weekly = [{ days = ["mon","tue","wed","thu","fri"], start = "08:00", end = "20:00", person = "ann" }]
            [[teams.tiers]]
            time_zone = "Europe/London"
            weekly = [{ days = ["mon","tue","wed","thu","fri","sat","sun"], start = "00:00", end = "00:00", person = "cal" }]
            "#,
        )
        .expect("directory toml");
        let d = Directory::build(config).expect("directory");
        // Saturday 10 January 2026, 23:30 in London: nobody on tier 0.
        let now: Timestamp = "2026-01-10T23:30:00Z".parse().expect("t");
        let mut n = notice(Severity::Emergency, now);
        n.audience = Audience::Nurse;
        let rows = plan(&n, &d, &PlanPolicy::default(), Step::FIRST, now);
        assert_eq!(rows.len(), 1, "tier 1 covers the hole");
        assert_eq!(rows[0].address, "+447700900333");
        assert_eq!(rows[0].not_before, now, "at once, not after ack_within");
        assert!(matches!(
            &rows[0].recipient,
            Recipient::Staff { person, tier: 0 } if person.as_str() == "cal"
        ));
    }

    #[test]
    fn replanning_the_same_event_gives_the_same_ids() {
        let d = directory();
        let policy = PlanPolicy::default();
        let now: Timestamp = "2026-01-10T12:00:00Z".parse().expect("t");
        let a = plan(&notice(Severity::High, now), &d, &policy, Step::FIRST, now);
        let b = plan(&notice(Severity::High, now), &d, &policy, Step::FIRST, now);
        assert_eq!(
            a.iter().map(|r| r.id).collect::<Vec<_>>(),
            b.iter().map(|r| r.id).collect::<Vec<_>>()
        );
        let c = plan(
            &notice(Severity::High, now),
            &d,
            &policy,
            Step { tier: 0, round: 1 },
            now,
        );
        assert_ne!(a[0].id, c[0].id, "a repeat is a new notification");
    }
}
