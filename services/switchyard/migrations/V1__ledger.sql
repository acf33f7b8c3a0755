-- Every LLM attempt, keyed by attempt_id (job/stage/attempt-number): replays are no-ops.
CREATE TABLE ledger_attempts (
    attempt_id              TEXT PRIMARY KEY,
    job_id                  TEXT NOT NULL,
    tenant                  TEXT NOT NULL,
    pipeline                TEXT NOT NULL,
    stage                   TEXT NOT NULL,
    provider                TEXT NOT NULL,
    model                   TEXT NOT NULL,
    key_ref                 TEXT,
    tenant_key              BOOLEAN NOT NULL,
    status                  INTEGER,
    class                   TEXT NOT NULL,
    error                   TEXT,
    prompt_tokens           BIGINT NOT NULL,
    completion_tokens       BIGINT NOT NULL,
    cached_tokens           BIGINT NOT NULL,
    reasoning_tokens        BIGINT NOT NULL,
    cost_micro_usd          BIGINT NOT NULL,
    provider_cost_micro_usd BIGINT,
    latency_ms              BIGINT NOT NULL,
    repair                  BOOLEAN NOT NULL,
    at                      TIMESTAMPTZ NOT NULL
);
CREATE INDEX ledger_attempts_at ON ledger_attempts (at);
CREATE INDEX ledger_attempts_tenant_at ON ledger_attempts (tenant, at);

-- Each job's final outcome; the first one recorded wins.
CREATE TABLE ledger_jobs (
    pipeline           TEXT NOT NULL,
    job_id             TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    stage              TEXT NOT NULL,
    reason             TEXT,
    escalated          BOOLEAN NOT NULL,
    escalation_reasons TEXT[] NOT NULL,
    needs_review       BOOLEAN NOT NULL,
    cost_micro_usd     BIGINT NOT NULL,
    latency_ms         BIGINT,
    at                 TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pipeline, job_id)
);
CREATE INDEX ledger_jobs_at ON ledger_jobs (at);
