-- The patient record, PostgreSQL flavour. Kept column-for-column in step with
-- ../sqlite/0001_record.sql: the same Rust code reads and writes both.
-- Times are Unix microseconds (BIGINT); device_time is the device's own zone-less text.

CREATE TABLE patients (
    patient_key   TEXT PRIMARY KEY NOT NULL,
    display_name  TEXT,               -- PHI: shown in the console only, never logged
    condition     TEXT NOT NULL,
    profile_id    TEXT,
    care_team     TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE gateways (
    gateway_id    TEXT PRIMARY KEY NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen_at  BIGINT,
    status_json   TEXT,
    status_at     BIGINT
);

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY NOT NULL,
    manufacturer  TEXT,
    model         TEXT,
    serial        TEXT,
    firmware      TEXT,
    registered_at BIGINT NOT NULL,
    last_seen_at  BIGINT
);

CREATE TABLE device_bindings (
    binding_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gateway_id    TEXT NOT NULL REFERENCES gateways (gateway_id),
    device_id     TEXT NOT NULL REFERENCES devices (device_id),
    user_index    BIGINT CHECK (user_index BETWEEN 0 AND 255),
    patient_key   TEXT NOT NULL REFERENCES patients (patient_key),
    valid_from    BIGINT NOT NULL,
    valid_to      BIGINT,
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
    user_index    BIGINT,
    reading_type  TEXT NOT NULL,
    device_time   TEXT,
    measured_at   BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    ingested_at   BIGINT NOT NULL,
    flags         BIGINT NOT NULL,
    gateway_seq   BIGINT NOT NULL
);
-- Per-patient timelines (console charts, paging).
CREATE INDEX readings_patient_time ON readings (patient_key, measured_at);

-- One row per value. patient_key and measured_at are copied from the reading so that cohort
-- queries ("SpO2 under 90 in the last 48 h") and per-patient, per-kind series (rules rebuild,
-- last value per kind) are single index range scans without a join.
CREATE TABLE reading_values (
    reading_id    TEXT NOT NULL REFERENCES readings (reading_id),
    kind          TEXT NOT NULL,
    patient_key   TEXT NOT NULL,
    measured_at   BIGINT NOT NULL,
    value_text    TEXT,               -- exact decimal as measured ("2.10")
    value_num     DOUBLE PRECISION, -- the same as a double, for comparisons
    unit          TEXT NOT NULL,      -- UCUM
    absent        TEXT,               -- why there is no number (nan, nres, ...)
    CHECK ((value_text IS NULL) = (absent IS NOT NULL)),
    PRIMARY KEY (reading_id, kind)
);
CREATE INDEX reading_values_cohort ON reading_values (kind, measured_at, value_num);
CREATE INDEX reading_values_series ON reading_values (patient_key, kind, measured_at);

CREATE TABLE dead_letters (
    dead_letter_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint      TEXT NOT NULL UNIQUE,  -- FNV-1a of topic, reason and the whole payload
    first_received_at BIGINT NOT NULL,
    last_received_at BIGINT NOT NULL,
    topic            TEXT NOT NULL,
    gateway_id       TEXT,                  -- as claimed; not a reference: it may be unknown
    reason           TEXT NOT NULL,         -- vitals::RejectReason::as_str()
    error            TEXT NOT NULL,
    payload          BYTEA NOT NULL,        -- at most the first 64 KiB
    payload_len      BIGINT NOT NULL,       -- the full length received
    count            BIGINT NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, last_received_at);

CREATE TABLE gateway_seq (
    gateway_id    TEXT PRIMARY KEY NOT NULL,
    last_seq      BIGINT NOT NULL,
    previous_seq  BIGINT,                -- last_seq before the latest check (NULL: first)
    replays       BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE audit_log (
    audit_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    reason        TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, at);
