-- 001-add-multi-pair-support: a session quotes many pairs; orders say which.
-- depends: 000-base
--
-- Rollback: `mmops db downgrade --to 000-base --yes` (runs 001-add-multi-pair-support.rollback.sql).
-- It drops sessions.pairs, sessions.pair_count, orders.symbol and orders.pair_index, and the
-- values in them: the sessions' pair lists and each order's pair are lost (back up first).

ALTER TABLE sessions ADD COLUMN pairs JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE sessions ADD COLUMN pair_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD CONSTRAINT sessions_pairs_is_array CHECK (jsonb_typeof(pairs) = 'array');
ALTER TABLE orders ADD COLUMN symbol TEXT;
ALTER TABLE orders ADD COLUMN pair_index INTEGER;
