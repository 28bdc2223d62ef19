-- 005-ingest-rejects: the quarantine of the ingest stream (docs/INGEST.md).
-- depends: 004-reject-kind
--
-- A message on the ingest stream (`mmops:ingest`) that mmops cannot apply (a missing field, a
-- number that is not a finite positive decimal, an unknown session or pair, a session restarted
-- with other pairs...) is recorded here with its fields and the reason, then acknowledged, so a
-- bad message never blocks the stream. A redelivered message is recorded once: its stream
-- message id is unique within its stream (ON CONFLICT DO NOTHING).
--
-- Rollback: `mmops db downgrade --to 004-reject-kind --yes` (runs
-- 005-ingest-rejects.rollback.sql). It drops the table and the quarantined messages with it.

CREATE TABLE ingest_rejects (
    id BIGSERIAL PRIMARY KEY,
    stream TEXT NOT NULL,
    message_id TEXT NOT NULL,
    session_id TEXT,
    raw JSONB NOT NULL,
    reason TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream, message_id)
);
CREATE INDEX idx_ingest_rejects_session ON ingest_rejects (session_id, received_at);
