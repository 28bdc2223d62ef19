-- 002-add-symbol-indexes: per-pair lookups, and each execution stored once.
-- depends: 001-add-multi-pair-support
--
-- Rollback: `mmops db downgrade --to 001-add-multi-pair-support --yes` (runs
-- 002-add-symbol-indexes.rollback.sql). It drops the indexes and the two unique constraints;
-- no data is lost, but duplicate fills are no longer refused until 002 is applied again.
--
-- Applying it fails if the fills table already holds duplicates; `mmops db verify` lists them.

CREATE INDEX idx_orders_session_symbol ON orders (session_id, symbol);
CREATE INDEX idx_fills_session_symbol ON fills (session_id, symbol);
ALTER TABLE fills ADD CONSTRAINT uq_fills_natural_key
    UNIQUE (session_id, order_id, symbol, timestamp, price, quantity);
CREATE UNIQUE INDEX uq_fills_trade_id ON fills (session_id, trade_id) WHERE trade_id IS NOT NULL;
