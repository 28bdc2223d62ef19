-- 007-analytics: recorded prices and take-profit metadata, for the analysis queries
-- (mmops/adapters/postgres/analysis.py, docs/MONITORING_QUERIES.md) and the tier backtest.
-- depends: 006-work-leases
--
-- `prices`: the best bid and ask of each pair of a session, as settlement fetched them on each
-- run (Redis `prices:{S}`, docs/REDIS_SCHEMA.md), copied by migration. Markouts and the tier
-- backtest read them; one row per (session, pair, time).
-- `take_profits`: what mmops kept about each take-profit it placed (Redis `tp_order:{S}:{O}`):
-- the position (buy order id) it sells, the tier (minutes) and markup it was priced at (NULL
-- when recovered unpriced), its generation and its state as last recorded. Copied by
-- migration (ON CONFLICT DO UPDATE: a later copy carries the later state).
-- No foreign keys (as for fills): `mmops db verify` style queries report orphans instead.
--
-- Rollback: `mmops db downgrade --to 006-work-leases --yes` (runs 007-analytics.rollback.sql).
-- It drops both tables and their rows; the Redis copies of an ended session are gone after its
-- retention, so take `mmops db backup` first if they matter.

-- `sessions.prices_through`: the id of the last `prices:{S}` entry copied, written in the same
-- transaction as the copy (so a restore of an older backup brings back the matching mark, and
-- the next migration copies again what the restore took away).
ALTER TABLE sessions ADD COLUMN prices_through TEXT;

CREATE TABLE prices (
    session_id TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    bid        NUMERIC NOT NULL CHECK (bid > 0),
    ask        NUMERIC NOT NULL CHECK (ask > 0),
    PRIMARY KEY (session_id, symbol, at)
);

CREATE TABLE take_profits (
    session_id TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    position   TEXT NOT NULL,
    tier       INTEGER,
    markup     NUMERIC,
    price      NUMERIC NOT NULL CHECK (price > 0),
    amount     NUMERIC NOT NULL CHECK (amount > 0),
    generation INTEGER NOT NULL CHECK (generation >= 0),
    amends     INTEGER NOT NULL DEFAULT 0 CHECK (amends >= 0),
    created_at TIMESTAMPTZ NOT NULL,
    status     TEXT NOT NULL,
    PRIMARY KEY (session_id, order_id)
);
CREATE INDEX idx_take_profits_position ON take_profits (session_id, symbol, position);
