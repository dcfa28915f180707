-- The gateway's store-and-forward queue. See gateway/src/queue/mod.rs for the invariants.

-- Readings received from devices and not yet acknowledged by the broker, oldest first.
-- `seq` is the reading's queue position (Reading.seq on the wire); AUTOINCREMENT keeps it
-- monotonic across deletes, restarts and an emptied table.
CREATE TABLE queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id  BLOB    NOT NULL UNIQUE,
    measured_at INTEGER NOT NULL, -- Unix milliseconds, gateway clock
    resendable  INTEGER NOT NULL, -- 1 when it has a device timestamp (a device may send it again)
    body        BLOB    NOT NULL  -- the Reading as JSON (its `seq` is filled in on the way out)
);

-- Ids of readings the broker has acknowledged that a device could send again (those with a
-- device timestamp: stored records re-sent on reconnection, RACP re-reads). Kept for the
-- retention window so a re-sent record is recognised and not forwarded twice.
CREATE TABLE forwarded (
    reading_id  BLOB    PRIMARY KEY,
    measured_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX forwarded_by_time ON forwarded (measured_at);

-- Small durable counters: the next envelope sequence number, the config version in force.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('next_envelope_seq', 1);
