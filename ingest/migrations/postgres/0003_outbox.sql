-- The notifier's outbox, PostgreSQL flavour (ingest::notify::PgOutbox). The same columns as
-- ../sqlite/0003_outbox.sql (notifier::SqliteOutbox::SCHEMA): BIGINT millisecond times, the
-- payload (the NewNotification) as JSON in TEXT like every JSON column of the record, identity
-- columns for the insertion order.

CREATE TABLE notifier_outbox (
    id            TEXT PRIMARY KEY,
    group_key     TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed')),
    payload       TEXT NOT NULL,
    next_at       BIGINT NOT NULL,
    lease_until   BIGINT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    seq           BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX notifier_outbox_due ON notifier_outbox (status, next_at);
CREATE INDEX notifier_outbox_group ON notifier_outbox (group_key, status);

CREATE TABLE notifier_attempts (
    attempt_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification  TEXT NOT NULL,
    at            BIGINT NOT NULL,
    channel       TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX notifier_attempts_row ON notifier_attempts (notification);

CREATE TABLE notifier_groups (
    group_key     TEXT PRIMARY KEY,
    last_sent     BIGINT NOT NULL
);
