-- Rollback of 001-add-multi-pair-support.
ALTER TABLE orders DROP COLUMN IF EXISTS pair_index;
ALTER TABLE orders DROP COLUMN IF EXISTS symbol;
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_pairs_is_array;
ALTER TABLE sessions DROP COLUMN IF EXISTS pair_count;
ALTER TABLE sessions DROP COLUMN IF EXISTS pairs;
