-- The console, SQLite flavour: staff users, server-side sessions, API tokens and versioned
-- per-patient thresholds. Kept column-for-column in step with ../postgres/0004_console.sql.
-- Times are Unix microseconds. Secrets are never stored: sessions and tokens by the hex
-- SHA-256 of their random 256-bit value, passwords as Argon2id PHC strings.

CREATE TABLE console_users (
    user_id        INTEGER PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL CHECK (role IN ('nurse', 'clinician', 'admin')),
    password_hash  TEXT NOT NULL,            -- Argon2id, PHC string format
    created_at     INTEGER NOT NULL,
    disabled_at    INTEGER,
    failed_logins  INTEGER NOT NULL DEFAULT 0, -- consecutive failures since the last success
    locked_until   INTEGER                   -- too many failures: no login until then
);

CREATE TABLE console_sessions (
    session_hash   TEXT PRIMARY KEY NOT NULL, -- hex SHA-256 of the cookie's 256-bit id
    user_id        INTEGER NOT NULL REFERENCES console_users (user_id),
    csrf_token     TEXT NOT NULL,            -- synchronizer token for state-changing requests
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,         -- idle expiry counts from here
    expires_at     INTEGER NOT NULL          -- absolute expiry
) WITHOUT ROWID;
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE api_tokens (
    token_id       INTEGER PRIMARY KEY,
    token_hash     TEXT NOT NULL UNIQUE,     -- hex SHA-256 of the bearer token
    user_id        INTEGER NOT NULL REFERENCES console_users (user_id),
    label          TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('nurse', 'clinician', 'admin')),
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER,
    UNIQUE (user_id, label)
);

-- Every threshold change a clinician saves: the override (rules::ProfileOverride as JSON) on
-- the patient's base profile, with who, when and why. The highest version is in force.
CREATE TABLE threshold_versions (
    patient_key    TEXT NOT NULL REFERENCES patients (patient_key),
    version        INTEGER NOT NULL,
    base_profile   TEXT NOT NULL,
    override_json  TEXT NOT NULL,
    author         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (patient_key, version)
) WITHOUT ROWID;

-- Audit listing by time and by action (the console's filters).
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_action ON audit_log (action, at);
