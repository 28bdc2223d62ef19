-- 003-migration-keys: one reject per Redis record, and exchange trade ids unique per pair.
-- depends: 002-add-symbol-indexes
--
-- migration_rejects was unique on (session_id, redis_key, raw_payload). A record re-saved with
-- other text got a second row, which completeness then counted twice, and a payload or key
-- beyond a b-tree entry's limit (about 2.7 kB) could not be recorded at all, which failed the
-- whole run. Now each record has one row, found by a hash of its key, holding its latest text.
-- Exchanges that number trades per market may repeat a trade id across pairs, so a trade id is
-- unique within a (session, pair) rather than a whole session.
--
-- Rollback: `mmops db downgrade --to 002-add-symbol-indexes --yes` (runs
-- 003-migration-keys.rollback.sql). It restores the old keys; it fails if two pairs of one
-- session hold the same trade id, or if a reject's key and payload exceed the b-tree limit
-- (delete those rows first). No data is lost.

DELETE FROM migration_rejects r USING migration_rejects newer
WHERE r.session_id = newer.session_id AND r.redis_key = newer.redis_key AND r.id < newer.id;
ALTER TABLE migration_rejects DROP CONSTRAINT migration_rejects_session_id_redis_key_raw_payload_key;
CREATE UNIQUE INDEX uq_migration_rejects_record ON migration_rejects (session_id, md5(redis_key));

DROP INDEX uq_fills_trade_id;
CREATE UNIQUE INDEX uq_fills_trade_id ON fills (session_id, symbol, trade_id)
    WHERE trade_id IS NOT NULL;
