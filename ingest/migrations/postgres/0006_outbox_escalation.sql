-- 0006: escalation rows that are not sent, and finding an alert's rows (PostgreSQL).
--
-- An escalation row (a later tier or a repeat) still pending when its alert is acknowledged
-- or resolved is marked status 'cancelled', with the reason in last_error; it is kept for the
-- console, never deleted.
--
-- A restarted escalator resumes each open alert from the furthest step its rows record
-- (payload step and planned_at), and cancelling looks the rows up by alert: both by the
-- alert id in the payload, the expression RecordOutbox::for_alert already uses.
-- Kept in step with ../sqlite/0006_outbox_escalation.sql.

ALTER TABLE notifier_outbox DROP CONSTRAINT IF EXISTS notifier_outbox_status_check;
ALTER TABLE notifier_outbox ADD CONSTRAINT notifier_outbox_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'cancelled'));

CREATE INDEX notifier_outbox_alert ON notifier_outbox (((payload::jsonb -> 'notice' ->> 'alert')));
