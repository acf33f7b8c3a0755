//! The ledger: every LLM attempt and every job's final outcome, so teams see which models are
//! used where, by whom, why and at what cost.
//!
//! Stages publish [`LedgerRecord`]s to the pipeline's ledger topic together with the job's
//! output (both acknowledged before the offset moves). The sink ([`run_sink`]) reads that topic
//! and writes to a [`LedgerStore`]: PostgreSQL through deadpool-postgres with versioned
//! migrations (refinery), idempotent on `attempt_id` and on `(pipeline, tenant, job_id,
//! redrive_count)`, or an
//! in-memory store for the demo. When the database is down the sink waits and retries the same
//! batch; its offsets only move after a write succeeds, so it catches up without losing or
//! double-counting anything, while the pipeline keeps running.

pub mod sink;
pub mod store;
pub mod usage;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::{Attempt, DeadLetter, DeadLetterReason, EscalationReason, JobResult};
use crate::ids::{JobId, StageName, TenantId};

pub use sink::{SinkError, run_sink};
pub use store::{LedgerStore, MemoryLedger, PgLedger, StoreError};
pub use usage::{AuditedStage, GroupBy, UsageFigures, UsageReport, usage, usage_csv, usage_table};

/// One ledger message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerRecord {
    /// One LLM attempt.
    Attempt(LedgerAttempt),
    /// A job's final outcome.
    Job(LedgerJob),
    /// An audit: a later stage re-did a job an earlier stage accepted.
    Audit(LedgerAudit),
    /// A threshold `target_precision` moved from audit data.
    ThresholdMove(LedgerThresholdMove),
}

/// One audit of an accepted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerAudit {
    /// Job id.
    pub job_id: JobId,
    /// Tenant.
    pub tenant: TenantId,
    /// Pipeline.
    pub pipeline: String,
    /// The stage whose accepted answer was audited.
    pub stage: StageName,
    /// The stage that re-did the job.
    pub auditor: StageName,
    /// The audited stage's decision (its `decision_field` value).
    pub decision: serde_json::Value,
    /// The auditor's decision (null when it produced none).
    pub auditor_decision: serde_json::Value,
    /// Whether they agree; none when the auditor gave no answer to compare.
    pub agreed: Option<bool>,
    /// The confidence the audited stage accepted the job with.
    pub confidence: Option<f64>,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A threshold move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerThresholdMove {
    /// Pipeline.
    pub pipeline: String,
    /// The move.
    #[serde(flatten)]
    pub change: crate::audit::ThresholdMove,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An attempt with the job's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerAttempt {
    /// Job id.
    pub job_id: JobId,
    /// Tenant.
    pub tenant: TenantId,
    /// Pipeline.
    pub pipeline: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The attempt itself.
    #[serde(flatten)]
    pub attempt: Attempt,
}

/// A job's final outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerJob {
    /// Job id (or `topic/partition/offset` for input that was not a job).
    pub job_id: JobId,
    /// Tenant (empty when unknown).
    pub tenant: TenantId,
    /// Pipeline.
    pub pipeline: String,
    /// How often the job had been replayed from the dead-letter topic when it ended (each
    /// replay's outcome is its own ledger row).
    #[serde(default)]
    pub redrive_count: u32,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The stage where it ended.
    pub stage: StageName,
    /// Dead-letter reason, if any.
    pub reason: Option<DeadLetterReason>,
    /// Whether it went past its first stage.
    pub escalated: bool,
    /// Every escalation's reason.
    pub escalation_reasons: Vec<EscalationReason>,
    /// Whether the result was flagged for review.
    pub needs_review: bool,
    /// Total cost of its attempts.
    pub cost_micro_usd: u64,
    /// End-to-end latency, for results.
    pub latency_ms: Option<u64>,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A job's final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// Published as a result.
    Result,
    /// Dead-lettered.
    DeadLetter,
}

impl JobOutcome {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Result => "result",
            JobOutcome::DeadLetter => "dead_letter",
        }
    }
}

impl LedgerJob {
    /// The record of a job that ended with `r`.
    pub fn result(r: &JobResult) -> LedgerJob {
        LedgerJob {
            job_id: r.job_id.clone(),
            tenant: r.tenant.clone(),
            pipeline: r.pipeline.clone(),
            redrive_count: 0,
            outcome: JobOutcome::Result,
            stage: r.stage.clone(),
            reason: None,
            escalated: !r.escalations.is_empty(),
            escalation_reasons: r.escalations.iter().map(|s| s.reason).collect(),
            needs_review: r.needs_review,
            cost_micro_usd: r.cost_micro_usd.0,
            latency_ms: Some(r.latency_ms),
            at: r.completed_at,
        }
    }

    /// The record of a job that ended as `d` (an empty job id when the dead letter has none:
    /// the composer fills in the message's position).
    pub fn dead_letter(d: &DeadLetter) -> LedgerJob {
        LedgerJob {
            job_id: d.job_id.clone().unwrap_or_default(),
            tenant: d.tenant.clone().unwrap_or_default(),
            pipeline: d.pipeline.clone(),
            redrive_count: d.redrive_count,
            outcome: JobOutcome::DeadLetter,
            stage: d.stage.clone(),
            reason: Some(d.reason),
            escalated: !d.escalations.is_empty(),
            escalation_reasons: d.escalations.iter().map(|s| s.reason).collect(),
            needs_review: false,
            cost_micro_usd: d.attempts.iter().map(|a| a.cost_micro_usd.0).sum(),
            latency_ms: None,
            at: d.failed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::AttemptClass;
    use crate::money::MicroUsd;

    pub(crate) fn record(id: &str, cost: u64) -> LedgerRecord {
        LedgerRecord::Attempt(LedgerAttempt {
            job_id: "j".into(),
            tenant: "t".into(),
            pipeline: "p".into(),
            at: OffsetDateTime::UNIX_EPOCH,
            attempt: Attempt {
                attempt_id: id.into(),
                stage: "s".into(),
                provider: "p".into(),
                model: "m".into(),
                status: Some(200),
                class: AttemptClass::Ok,
                error: None,
                latency_ms: 1,
                prompt_tokens: 1,
                completion_tokens: 1,
                cost_micro_usd: MicroUsd(cost),
                repair: false,
                key: Some("env:K".into()),
                tenant_key: false,
                cached_tokens: 0,
                reasoning_tokens: 0,
                provider_cost_micro_usd: None,
            },
        })
    }

    #[test]
    fn records_round_trip_with_a_kind_tag() {
        let r = record("a", 5);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"kind\":\"attempt\""), "{text}");
        assert!(text.contains("\"attempt_id\":\"a\""), "flattened: {text}");
        assert_eq!(serde_json::from_str::<LedgerRecord>(&text).unwrap(), r);
    }
}
