-- Rollback of 005-ingest-rejects.
DROP TABLE IF EXISTS ingest_rejects;
