-- The notifier's outbox, SQLite flavour: exactly notifier::SqliteOutbox::SCHEMA, so the
-- crate's own SqliteOutbox works on the record's pool and `enqueue_in` can run inside the
-- alert's transaction. Kept in step with ../postgres/0003_outbox.sql.
-- Times are Unix MILLISECONDS (the notifier's unit); the payload is the NewNotification as JSON.

CREATE TABLE IF NOT EXISTS notifier_outbox (
    id TEXT PRIMARY KEY,
    group_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    payload TEXT NOT NULL,
    next_at INTEGER NOT NULL,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notifier_outbox_due ON notifier_outbox (status, next_at);
CREATE INDEX IF NOT EXISTS notifier_outbox_group ON notifier_outbox (group_key, status);
CREATE TABLE IF NOT EXISTS notifier_attempts (
    notification TEXT NOT NULL,
    at INTEGER NOT NULL,
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS notifier_attempts_row ON notifier_attempts (notification);
CREATE TABLE IF NOT EXISTS notifier_groups (
    group_key TEXT PRIMARY KEY,
    last_sent INTEGER NOT NULL
);
