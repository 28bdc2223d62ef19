-- 006-work-leases: work shared between settlement and migration workers (docs/ARCHITECTURE.md,
-- "Work sharing").
-- depends: 005-ingest-rejects
--
-- One row per (kind, session): kind 'settlement' or 'migration'. A worker claims due rows with
-- SELECT ... FOR UPDATE SKIP LOCKED, so two workers never take the same session; the row says
-- who holds it (`worker`) until when (`leased_until`), and when it was last done (`last_done`):
-- the longest-waiting rows are claimed first. Rows are created by discovery from `sessions`
-- (INSERT ... ON CONFLICT DO NOTHING). No foreign key to `sessions`: claims join it, so a row
-- whose session is gone is never claimed, and a restore of an older backup (which drops and
-- recreates `sessions`) is not blocked by a table it does not know.
-- `stale_since` marks an active session whose trading loop stopped reporting (no fill for
-- MMOPS_SESSION_STALE_AFTER seconds): it is settled only every MMOPS_SESSION_STALE_EVERY rounds.
-- The fills index makes "a session's newest fill" one index lookup.
--
-- Rollback: `mmops db downgrade --to 005-ingest-rejects --yes` (runs
-- 006-work-leases.rollback.sql). It drops the table (leases are transient: the next run
-- rediscovers every session and settles or migrates it once) and the index.

CREATE TABLE work_leases (
    kind TEXT NOT NULL CHECK (kind IN ('settlement', 'migration')),
    session_id TEXT NOT NULL,
    worker TEXT,
    leased_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    last_done TIMESTAMPTZ,
    stale_since TIMESTAMPTZ,
    PRIMARY KEY (kind, session_id)
);
CREATE INDEX idx_work_leases_due ON work_leases (kind, last_done NULLS FIRST);

-- One-off runs in progress (`mmops settle` processes): while any runs, a run started later joins
-- its round (the earliest start among them), so processes started together split the sessions;
-- a run started when none is in progress does every session again. A row whose heartbeat is
-- older than the lease TTL belongs to a dead worker and is ignored.
CREATE TABLE work_runs (
    kind TEXT NOT NULL CHECK (kind IN ('settlement', 'migration')),
    worker TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, worker)
);
CREATE INDEX idx_fills_session_time ON fills (session_id, timestamp DESC);
