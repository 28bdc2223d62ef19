-- Rollback of 006-work-leases.
DROP INDEX IF EXISTS idx_fills_session_time;
DROP TABLE IF EXISTS work_runs;
DROP TABLE IF EXISTS work_leases;
