-- 009-price-path: the fill path of a session, for the tier backtest (docs/BACKTEST.md).
-- depends: 008-work-lease-parts
--
-- `price_path`: the venue's best bid and ask of each pair of a session at each of its match
-- steps (every 10 s of a paper session), recorded by the paper loop in Redis `path:{S}` and
-- copied by migration like `prices`. A venue fills resting orders on this path, not on the
-- settlement-time tickers in `prices` (one per run, about 3 minutes apart), so a backtest that
-- replays it reproduces the session's own fills. One row per (session, pair, time).
-- `sessions.path_through`: the id of the last `path:{S}` entry copied, moved in the same
-- transaction as the copy (as `prices_through`).
--
-- Rollback: `mmops db downgrade --to 008-work-lease-parts --yes` (runs
-- 009-price-path.rollback.sql). It drops the table and its rows; the Redis copies of an ended
-- session are gone after its retention, so take `mmops db backup` first if they matter.

ALTER TABLE sessions ADD COLUMN path_through TEXT;

-- The same shape as `prices` (columns, checks, primary key): one point is one point.
CREATE TABLE price_path (LIKE prices INCLUDING ALL);
