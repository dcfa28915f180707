-- Alerts, SQLite flavour. Kept column-for-column in step with ../postgres/0002_alerts.sql.
-- Times are Unix microseconds. JSON columns are TEXT on both backends so the same binds work.

-- One row per alert episode of one rule for one patient: opened by a raise, changed by
-- updates, closed by a resolve. Never deleted.
CREATE TABLE alerts (
    alert_id      INTEGER PRIMARY KEY,
    alert_uid     TEXT NOT NULL UNIQUE,   -- stable external id (links, notifier, FHIR Flag)
    patient_key   TEXT NOT NULL REFERENCES patients (patient_key),
    rule_id       TEXT NOT NULL,
    profile       TEXT NOT NULL,          -- the ruleset label that raised it: copd@1(+override@v)
    severity      TEXT NOT NULL,          -- rules::Severity::as_str()
    audience      TEXT NOT NULL,          -- nurse | patient | both
    state         TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    opened_at     INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    resolved_at   INTEGER,
    explanation   TEXT NOT NULL,          -- JSON: evidence (reading ids, values), context, text
    nurse_text    TEXT NOT NULL,
    patient_text  TEXT,                   -- only when the audience includes the patient
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
);
-- The arbiter between ingest nodes: at most one OPEN alert per patient and rule.
CREATE UNIQUE INDEX alerts_open ON alerts (patient_key, rule_id) WHERE state = 'open';
CREATE INDEX alerts_patient ON alerts (patient_key, opened_at);
CREATE INDEX alerts_inbox ON alerts (state, severity, updated_at);

-- What happened to each alert, in order; repeat prompts (a doubtful reading, or a value a
-- rule wants confirmed) belong to no alert.
CREATE TABLE alert_events (
    event_id      INTEGER PRIMARY KEY,
    alert_id      INTEGER REFERENCES alerts (alert_id),
    patient_key   TEXT NOT NULL REFERENCES patients (patient_key),
    kind          TEXT NOT NULL
        CHECK (kind IN ('raised', 'updated', 'resolved', 'repeat_requested')),
    at            INTEGER NOT NULL,       -- when it happened (measurement or tick time)
    recorded_at   INTEGER NOT NULL,       -- when this node wrote it
    payload       TEXT NOT NULL           -- JSON
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, event_id);
CREATE INDEX alert_events_patient ON alert_events (patient_key, at);

-- How many reading batches of each patient have been evaluated: bumped in the transaction
-- that stores the readings and their alerts. An ingest node whose rules state was built at
-- another version rebuilds it before evaluating (see ingest::consume::rules).
CREATE TABLE rule_versions (
    patient_key   TEXT PRIMARY KEY NOT NULL REFERENCES patients (patient_key),
    version       INTEGER NOT NULL
) WITHOUT ROWID;
