//! `GET /metrics`: the consumer's [`IngestStats`] in the Prometheus text exposition format
//! (version 0.0.4). Every counter is written on every scrape, rejections once per reason code
//! (zero included), so a dashboard never has to guess whether a series exists. Labels are
//! reason codes only; no patient key, device or gateway id ever becomes a label.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use vitals::RejectReason;

use crate::consume::IngestStats;
use crate::record::QueueDepths;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The counters as Prometheus text.
pub fn render(stats: &IngestStats) -> String {
    let mut out = String::with_capacity(4096);
    let counters = [
        (
            "rpm_ingest_messages_total",
            "Readings messages fully processed (committed, then acknowledged).",
            &stats.messages,
        ),
        (
            "rpm_ingest_readings_stored_total",
            "Readings newly stored in the patient record.",
            &stats.readings_stored,
        ),
        (
            "rpm_ingest_readings_duplicate_total",
            "Readings that were already in the record (re-sent or re-delivered).",
            &stats.readings_duplicate,
        ),
        (
            "rpm_ingest_batches_total",
            "Transactions committed.",
            &stats.batches,
        ),
        (
            "rpm_ingest_replays_total",
            "Envelopes with an old sequence number (flagged, still stored).",
            &stats.replays,
        ),
        (
            "rpm_ingest_statuses_total",
            "Gateway status messages recorded.",
            &stats.statuses,
        ),
        (
            "rpm_ingest_db_retries_total",
            "Database errors retried.",
            &stats.db_retries,
        ),
        (
            "rpm_ingest_received_total",
            "Messages received from the broker (readings and statuses).",
            &stats.received,
        ),
        (
            "rpm_ingest_acked_total",
            "Messages acknowledged to the broker after their commit.",
            &stats.acked,
        ),
        (
            "rpm_rules_alert_events_total",
            "Alert events stored (raised, updated, resolved, repeat requested).",
            &stats.alert_events,
        ),
        (
            "rpm_rules_state_rebuilds_total",
            "Patients whose rules state was rebuilt from the record.",
            &stats.rules_rebuilds,
        ),
        (
            "rpm_rules_stale_rollbacks_total",
            "Batches rolled back because another node had evaluated the same patient.",
            &stats.rules_stale,
        ),
        (
            "rpm_rules_ticks_total",
            "Runs of the time-driven rules (missing data, silent gateway) completed.",
            &stats.ticks,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
    let name = "rpm_ingest_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} Rejected input (a whole message counts once, a reading once), by reason code."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for reason in RejectReason::ALL {
        // Reason codes are fixed snake_case words: nothing to escape.
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            reason.as_str(),
            stats.rejected(reason)
        );
    }
    gauge(
        &mut out,
        "rpm_ingest_pending_messages",
        "Messages received from the broker and not yet acknowledged (being validated or committed).",
        stats.pending_messages(),
    );
    stats.rule_latency.render(
        "rpm_rules_evaluation_seconds",
        "Time the rules engine took to evaluate one reading (a batch is evaluated at once; each of its readings counts the batch's mean).",
        &mut out,
    );
    out
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// The queues read from the record at scrape time: the notifier's outbox and the gateways'
/// store-and-forward queues (totals only: a gateway id is never a label).
pub fn render_queues(q: &QueueDepths, out: &mut String) {
    let name = "rpm_notifier_outbox";
    let _ = writeln!(
        out,
        "# HELP {name} Notifications in the outbox by status (pending: waiting to be sent or retried; failed: given up on)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name}{{status=\"pending\"}} {}", q.outbox_pending);
    let _ = writeln!(out, "{name}{{status=\"failed\"}} {}", q.outbox_failed);
    gauge(
        out,
        "rpm_gateway_queued_readings",
        "Readings waiting in the gateways' store-and-forward queues, summed over their latest statuses.",
        q.gateway_queued,
    );
    gauge(
        out,
        "rpm_gateway_queued_readings_max",
        "The deepest gateway queue in the latest statuses.",
        q.gateway_queued_max,
    );
    gauge(
        out,
        "rpm_gateways_reporting_queue",
        "Gateways whose latest status reports their queue.",
        q.gateways_reporting,
    );
}

/// The notifier dispatcher's counters, when it runs (`rpm ingest` with `[notifier]`).
pub fn render_notifier(stats: &notifier::DispatchStats, out: &mut String) {
    let counters = [
        (
            "rpm_notifier_sent_total",
            "Notification groups delivered to their channel.",
            &stats.sent,
        ),
        (
            "rpm_notifier_retried_total",
            "Delivery attempts that failed and will be retried.",
            &stats.retried,
        ),
        (
            "rpm_notifier_failed_total",
            "Notification groups given up on (kept in the outbox as failed).",
            &stats.failed,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_and_reason_is_exposed() {
        let stats = IngestStats::default();
        stats.readings_stored.store(42, Ordering::Relaxed);
        let text = render(&stats);
        assert!(
            text.contains("\nrpm_ingest_readings_stored_total 42\n"),
            "{text}"
        );
        for reason in RejectReason::ALL {
            let line = format!(
                "rpm_ingest_rejected_total{{reason=\"{}\"}} 0\n",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line}");
        }
        // Every sample line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name and value");
            value.parse::<u64>().expect("a counter value");
        }
    }
}
