-- Rollback of 007-analytics.
DROP TABLE IF EXISTS take_profits;
DROP TABLE IF EXISTS prices;
ALTER TABLE sessions DROP COLUMN IF EXISTS prices_through;
