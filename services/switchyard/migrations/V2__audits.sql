-- Audits (gate.audit): a later stage re-did a job an earlier stage accepted; one per job and
-- audited stage, so a replayed ledger message is a no-op.
CREATE TABLE ledger_audits (
    pipeline         TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    stage            TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    auditor          TEXT NOT NULL,
    decision         TEXT NOT NULL,
    auditor_decision TEXT NOT NULL,
    agreed           BOOLEAN,
    confidence       DOUBLE PRECISION,
    at               TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pipeline, job_id, stage)
);
CREATE INDEX ledger_audits_at ON ledger_audits (at);

-- Every threshold move gate.target_precision made, with the audit figures behind it.
CREATE TABLE ledger_threshold_moves (
    pipeline       TEXT NOT NULL,
    stage          TEXT NOT NULL,
    at             TIMESTAMPTZ NOT NULL,
    from_threshold DOUBLE PRECISION NOT NULL,
    to_threshold   DOUBLE PRECISION NOT NULL,
    target         DOUBLE PRECISION NOT NULL,
    audits         BIGINT NOT NULL,
    agreed         BIGINT NOT NULL,
    lower          DOUBLE PRECISION NOT NULL,
    upper          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pipeline, stage, at)
);
