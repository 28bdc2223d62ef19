-- Rollback of 000-base: drops every mmops table. Back up first (`mmops db backup`).
DROP TABLE IF EXISTS settlement_runs;
DROP TABLE IF EXISTS migration_rejects;
DROP TABLE IF EXISTS session_pair_stats;
DROP TABLE IF EXISTS fills;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS sessions;
