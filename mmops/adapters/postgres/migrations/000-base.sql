-- 000-base: the base schema of the mmops warehouse.
--
-- Rollback: `mmops db downgrade --to zero --yes` (runs 000-base.rollback.sql, after the later
-- migrations' rollbacks). It DROPS every mmops table and its data: take `mmops db backup` first.
--
-- Money is NUMERIC (exact), times are TIMESTAMPTZ. No foreign keys from fills to orders: the
-- trading loop may record a fill before its order, and `mmops db verify` reports orphans instead.

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    exchange    TEXT NOT NULL,
    capital     NUMERIC NOT NULL DEFAULT 0,
    started_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ,
    migrated_at TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_sessions_started_at ON sessions (started_at DESC);

CREATE TABLE orders (
    session_id      TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    side            TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    kind            TEXT NOT NULL DEFAULT 'entry',
    price           NUMERIC NOT NULL CHECK (price > 0),
    amount          NUMERIC NOT NULL CHECK (amount > 0),
    filled          NUMERIC NOT NULL DEFAULT 0 CHECK (filled >= 0),
    status          TEXT NOT NULL,
    client_order_id TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, order_id)
);

CREATE TABLE fills (
    id         BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    order_id   TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    side       TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    price      NUMERIC NOT NULL CHECK (price > 0),
    quantity   NUMERIC NOT NULL CHECK (quantity > 0),
    fee        NUMERIC NOT NULL DEFAULT 0 CHECK (fee >= 0),
    trade_id   TEXT,
    timestamp  TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_fills_session ON fills (session_id);

CREATE TABLE session_pair_stats (
    session_id    TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    orders        INTEGER NOT NULL DEFAULT 0,
    fills         INTEGER NOT NULL DEFAULT 0,
    buy_volume    NUMERIC NOT NULL DEFAULT 0,
    sell_volume   NUMERIC NOT NULL DEFAULT 0,
    buy_notional  NUMERIC NOT NULL DEFAULT 0,
    sell_notional NUMERIC NOT NULL DEFAULT 0,
    fees          NUMERIC NOT NULL DEFAULT 0,
    realized_pnl  NUMERIC NOT NULL DEFAULT 0,
    open_quantity NUMERIC NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, symbol)
);

CREATE TABLE migration_rejects (
    id          BIGSERIAL PRIMARY KEY,
    session_id  TEXT NOT NULL,
    symbol      TEXT,
    redis_key   TEXT NOT NULL,
    raw_payload TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (session_id, redis_key, raw_payload)
);

CREATE TABLE settlement_runs (
    id          BIGSERIAL PRIMARY KEY,
    session_id  TEXT NOT NULL,
    worker      TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    duration_ms INTEGER NOT NULL,
    placed      INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    dry_run     BOOLEAN NOT NULL DEFAULT false,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX idx_settlement_runs_session ON settlement_runs (session_id, started_at DESC);
