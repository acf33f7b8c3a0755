-- A job id is unique per tenant, not per pipeline (two tenants may both send job 42), and each
-- replay of a job from the dead-letter topic ends with its own row.
ALTER TABLE ledger_jobs ADD COLUMN redrive_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_jobs DROP CONSTRAINT ledger_jobs_pkey;
ALTER TABLE ledger_jobs ADD PRIMARY KEY (pipeline, tenant, job_id, redrive_count);
ALTER TABLE ledger_audits DROP CONSTRAINT ledger_audits_pkey;
ALTER TABLE ledger_audits ADD PRIMARY KEY (pipeline, tenant, job_id, stage);
