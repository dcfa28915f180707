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
/// which repeat of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    /// The escalation tier (0: the nurse on duty).
    pub tier: usize,
    /// Repeats of the last tier (0 the first time).
    pub round: u32,
}

impl Step {
    /// The first notification, at raise time.
    pub const FIRST: Step = Step { tier: 0, round: 0 };

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
    }
}

/// The outbox rows for `notice` at escalation `step`, at `now`.
///
/// - Staff on duty in the step's tier get it on every contact point, after `group_wait`
///   unless the alert is at or above `immediate_from`. Quiet hours never apply to them.
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
        for route in directory.staff_routes(&notice.patient, step.tier, now) {
            rows.push(row(notice, route, step, at, None));
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
            rows.push(row(notice, route, step, at, action_plan.clone()));
        }
    }
    rows
}
