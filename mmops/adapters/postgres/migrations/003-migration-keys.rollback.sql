-- Rollback of 003-migration-keys.
DROP INDEX IF EXISTS uq_fills_trade_id;
CREATE UNIQUE INDEX uq_fills_trade_id ON fills (session_id, trade_id) WHERE trade_id IS NOT NULL;

DROP INDEX IF EXISTS uq_migration_rejects_record;
ALTER TABLE migration_rejects ADD CONSTRAINT migration_rejects_session_id_redis_key_raw_payload_key
    UNIQUE (session_id, redis_key, raw_payload);
