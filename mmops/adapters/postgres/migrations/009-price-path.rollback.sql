-- Rollback of 009-price-path.
DROP TABLE IF EXISTS price_path;
ALTER TABLE sessions DROP COLUMN IF EXISTS path_through;
