-- Rollback of 002-add-symbol-indexes.
DROP INDEX IF EXISTS uq_fills_trade_id;
ALTER TABLE fills DROP CONSTRAINT IF EXISTS uq_fills_natural_key;
DROP INDEX IF EXISTS idx_fills_session_symbol;
DROP INDEX IF EXISTS idx_orders_session_symbol;
