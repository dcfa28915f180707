-- 0007: a version number for the bindings table (PostgreSQL), bumped by every change to it.
--
-- Ingest keeps every binding in memory and asks every few seconds whether the table changed.
-- It used to ask with an aggregate over the whole table (rows, highest id, closed rows):
-- 31 ms at 100 000 bindings, on the consumer's path, and blind to an edit that changes
-- none of the three (a binding moved to another patient by hand). The trigger bumps one
-- counter once per statement that changes the table, whoever runs it, so the question is one
-- row. Kept in step with ../sqlite/0007_binding_version.sql.

CREATE TABLE binding_version (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO binding_version (id, version) VALUES (1, 0);

CREATE FUNCTION bump_binding_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE binding_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER device_bindings_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION bump_binding_version();
