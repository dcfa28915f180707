-- 0006: escalation rows that are not sent, and finding an alert's rows (SQLite).
--
-- An escalation row (a later tier or a repeat) still pending when its alert is acknowledged
-- or resolved is marked status 'cancelled', with the reason in last_error; it is kept for the
-- console, never deleted. SQLite's status column has no CHECK, so only the index is new.
--
-- A restarted escalator resumes each open alert from the furthest step its rows record
-- (payload $.step and $.planned_at), and cancelling looks the rows up by alert: both by the
-- alert id in the payload. The same index is in notifier::SqliteOutbox::SCHEMA.

CREATE INDEX IF NOT EXISTS notifier_outbox_alert
    ON notifier_outbox (json_extract(payload, '$.notice.alert'));
