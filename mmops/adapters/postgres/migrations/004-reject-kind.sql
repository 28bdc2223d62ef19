-- 004-reject-kind: each reject says which kind of record it quarantined.
-- depends: 003-migration-keys
--
-- Completeness counted a pair's rejected orders and fills by the first part of each reject's
-- Redis key (`orders:...`, `fills:...`), so renaming a key prefix would have counted every reject
-- as none. Migration now writes the kind (`order`, `fill`) into its own column and counts by it.
-- Existing rows are backfilled here, once, from their key's prefix; a key of neither kind keeps
-- its prefix as its kind and, as before, is counted as neither.
--
-- Rollback: `mmops db downgrade --to 003-migration-keys --yes` (runs 004-reject-kind.rollback.sql).
-- It drops migration_rejects.kind; no other data is lost (the kind follows from the key again).

ALTER TABLE migration_rejects ADD COLUMN kind TEXT;
UPDATE migration_rejects SET kind = CASE split_part(redis_key, ':', 1)
    WHEN 'orders' THEN 'order'
    WHEN 'fills' THEN 'fill'
    ELSE split_part(redis_key, ':', 1)
END;
ALTER TABLE migration_rejects ALTER COLUMN kind SET NOT NULL;
