-- 0007: a version number for the bindings table (SQLite), bumped by every change to it.
--
-- Ingest keeps every binding in memory and asks every few seconds whether the table changed.
-- It used to ask with an aggregate over the whole table (rows, highest id, closed rows):
-- 20 ms at 100 000 bindings, on the consumer's path, and blind to an edit that changes
-- none of the three (a binding moved to another patient by hand). The triggers bump one
-- counter for any insert, update or delete, whoever makes it, so the question is one row.
-- Kept in step with ../postgres/0007_binding_version.sql.

CREATE TABLE binding_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO binding_version (id, version) VALUES (1, 0);

CREATE TRIGGER device_bindings_version_insert AFTER INSERT ON device_bindings
BEGIN
    UPDATE binding_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER device_bindings_version_update AFTER UPDATE ON device_bindings
BEGIN
    UPDATE binding_version SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER device_bindings_version_delete AFTER DELETE ON device_bindings
BEGIN
    UPDATE binding_version SET version = version + 1 WHERE id = 1;
END;
