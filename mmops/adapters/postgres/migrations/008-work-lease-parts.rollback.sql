-- Rollback of 008-work-lease-parts.
DELETE FROM work_leases WHERE part <> '';
ALTER TABLE work_leases DROP CONSTRAINT work_leases_pkey;
ALTER TABLE work_leases ADD PRIMARY KEY (kind, session_id);
ALTER TABLE work_leases DROP COLUMN part;
ALTER TABLE work_leases DROP COLUMN pairs;
