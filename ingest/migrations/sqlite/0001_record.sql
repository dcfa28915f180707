-- The patient record, SQLite flavour. Kept column-for-column in step with
-- ../postgres/0001_record.sql: the same Rust code reads and writes both.
-- Times are Unix microseconds (INTEGER); device_time is the device's own zone-less text.

CREATE TABLE patients (
    patient_key   TEXT PRIMARY KEY NOT NULL,
    display_name  TEXT,               -- PHI: shown in the console only, never logged
    condition     TEXT NOT NULL,
    profile_id    TEXT,
    care_team     TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE gateways (
    gateway_id    TEXT PRIMARY KEY NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER,
    status_json   TEXT,
    status_at     INTEGER
) WITHOUT ROWID;

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY NOT NULL,
    manufacturer  TEXT,
    model         TEXT,
    serial        TEXT,
    firmware      TEXT,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER
) WITHOUT ROWID;

CREATE TABLE device_bindings (
    binding_id    INTEGER PRIMARY KEY,
    gateway_id    TEXT NOT NULL REFERENCES gateways (gateway_id),
    device_id     TEXT NOT NULL REFERENCES devices (device_id),
    user_index    INTEGER CHECK (user_index BETWEEN 0 AND 255),
    patient_key   TEXT NOT NULL REFERENCES patients (patient_key),
    valid_from    INTEGER NOT NULL,
    valid_to      INTEGER,
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
CREATE INDEX device_bindings_lookup ON device_bindings (gateway_id, device_id, valid_from);
CREATE INDEX device_bindings_patient ON device_bindings (patient_key);
-- At most one open binding per gateway, device and user slot (-1: the whole device).
CREATE UNIQUE INDEX device_bindings_open ON device_bindings
    (gateway_id, device_id, COALESCE(user_index, -1)) WHERE valid_to IS NULL;

CREATE TABLE readings (
    reading_id    TEXT PRIMARY KEY NOT NULL,
    patient_key   TEXT NOT NULL REFERENCES patients (patient_key),
    device_id     TEXT NOT NULL,
    gateway_id    TEXT NOT NULL REFERENCES gateways (gateway_id),
    user_index    INTEGER,
    reading_type  TEXT NOT NULL,
    device_time   TEXT,
    measured_at   INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    ingested_at   INTEGER NOT NULL,
    flags         INTEGER NOT NULL,
    gateway_seq   INTEGER NOT NULL
) WITHOUT ROWID;
-- Per-patient timelines (console charts, paging).
CREATE INDEX readings_patient_time ON readings (patient_key, measured_at);

-- One row per value. patient_key and measured_at are copied from the reading so that cohort
-- queries ("SpO2 under 90 in the last 48 h") and per-patient, per-kind series (rules rebuild,
-- last value per kind) are single index range scans without a join.
CREATE TABLE reading_values (
    reading_id    TEXT NOT NULL REFERENCES readings (reading_id),
    kind          TEXT NOT NULL,
    patient_key   TEXT NOT NULL,
    measured_at   INTEGER NOT NULL,
    value_text    TEXT,               -- exact decimal as measured ("2.10")
    value_num     REAL,               -- the same as a double, for comparisons
    unit          TEXT NOT NULL,      -- UCUM
    absent        TEXT,               -- why there is no number (nan, nres, ...)
    CHECK ((value_text IS NULL) = (absent IS NOT NULL)),
    PRIMARY KEY (reading_id, kind)
) WITHOUT ROWID;
CREATE INDEX reading_values_cohort ON reading_values (kind, measured_at, value_num);
CREATE INDEX reading_values_series ON reading_values (patient_key, kind, measured_at);

CREATE TABLE dead_letters (
    dead_letter_id   INTEGER PRIMARY KEY,
    fingerprint      TEXT NOT NULL UNIQUE,  -- FNV-1a of topic, reason and the whole payload
    first_received_at INTEGER NOT NULL,
    last_received_at INTEGER NOT NULL,
    topic            TEXT NOT NULL,
    gateway_id       TEXT,                  -- as claimed; not a reference: it may be unknown
    reason           TEXT NOT NULL,         -- vitals::RejectReason::as_str()
    error            TEXT NOT NULL,
    payload          BLOB NOT NULL,         -- at most the first 64 KiB
    payload_len      INTEGER NOT NULL,      -- the full length received
    count            INTEGER NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, last_received_at);

CREATE TABLE gateway_seq (
    gateway_id    TEXT PRIMARY KEY NOT NULL,
    last_seq      INTEGER NOT NULL,
    previous_seq  INTEGER,               -- last_seq before the latest check (NULL: first)
    replays       INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_log (
    audit_id      INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    reason        TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, at);
