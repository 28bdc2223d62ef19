-- 008-work-lease-parts: a big session's settlement is shared out in parts (docs/ARCHITECTURE.md,
-- "Work sharing").
-- depends: 007-analytics
--
-- A session with more pairs than MMOPS_SETTLE_GROUP_PAIRS is settled in groups of pairs that
-- share no base asset (`g0`, `g1`, ...), each a lease of its own, so several workers settle one
-- big session at once; its part '' (every session has one) reconciles it with the exchange,
-- checks its stop-loss and writes its status. A session that fits in one group has only the
-- part '', as before. A group's row holds its pairs (`pairs`, NULL for the part ''), written
-- by the discovery that made it, so every worker settles the same groups.
--
-- Rollback: `mmops db downgrade --to 007-analytics --yes` (runs
-- 008-work-lease-parts.rollback.sql). It deletes the group leases (transient: the next round
-- settles the whole session in one part again) and drops the column.

ALTER TABLE work_leases ADD COLUMN part TEXT NOT NULL DEFAULT '';
ALTER TABLE work_leases ADD COLUMN pairs JSONB;
ALTER TABLE work_leases DROP CONSTRAINT work_leases_pkey;
ALTER TABLE work_leases ADD PRIMARY KEY (kind, session_id, part);
