-- 0005: the ingest hot path (issue 6), SQLite. Nothing changes here; the file keeps the two
-- migration sequences in step with ../postgres/0005_ingest_hot_path.sql.
--
-- PostgreSQL drops the foreign keys of readings and reading_values (a trigger per row there).
-- SQLite keeps them: each is one index probe in the same process, cheap beside the insert
-- itself, and dropping a foreign key in SQLite means rebuilding the table, which a migration
-- cannot do safely while other tables reference it.
SELECT 1;
