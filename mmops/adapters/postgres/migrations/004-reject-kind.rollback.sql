-- Rollback of 004-reject-kind.
ALTER TABLE migration_rejects DROP COLUMN IF EXISTS kind;
