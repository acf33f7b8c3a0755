//! The messages Switchyard reads and writes, and the JSON Schemas (in `schemas/`) that every
//! one of them is validated against on the way in and out.

use std::collections::BTreeMap;

use jsonschema::{Resource, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::ids::{JobId, StageName, TenantId};
use crate::money::MicroUsd;

const INTAKE: &str = include_str!("../../../schemas/intake.schema.json");
const RESULT: &str = include_str!("../../../schemas/result.schema.json");
const ESCALATION: &str = include_str!("../../../schemas/escalation.schema.json");
const ESCALATION_STEP: &str = include_str!("../../../schemas/escalation-step.schema.json");
const DEAD_LETTER: &str = include_str!("../../../schemas/dead-letter.schema.json");
const ATTEMPT: &str = include_str!("../../../schemas/attempt.schema.json");

/// A job as it arrives on the intake topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intake {
    /// Unique job id.
    pub job_id: JobId,
    /// Tenant the job belongs to.
    pub tenant: TenantId,
    /// Pipeline name.
    pub pipeline: String,
    /// The work.
    pub payload: Value,
    /// When the job was created (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Free-form string labels carried through to the result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Times replayed from the dead-letter topic.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redrive_count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What one LLM attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptClass {
    /// A usable answer came back (it may still have failed the schema: see `SchemaInvalid`).
    Ok,
    /// Timeout, connection error, 408, 5xx, 529.
    Transient,
    /// 429.
    RateLimited,
    /// 401, 403.
    Auth,
    /// 402.
    OutOfCredit,
    /// 404 model or endpoint.
    Catalog,
    /// 413 or context too long.
    ContextWindow,
    /// Refused by a content filter.
    ContentPolicy,
    /// 200 with an error object, no choices, or truncated output.
    ProviderBadOutput,
    /// The answer was not JSON or broke the output schema.
    SchemaInvalid,
    /// 400 for another reason.
    InvalidRequest,
}

impl AttemptClass {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptClass::Ok => "ok",
            AttemptClass::Transient => "transient",
            AttemptClass::RateLimited => "rate_limited",
            AttemptClass::Auth => "auth",
            AttemptClass::OutOfCredit => "out_of_credit",
            AttemptClass::Catalog => "catalog",
            AttemptClass::ContextWindow => "context_window",
            AttemptClass::ContentPolicy => "content_policy",
            AttemptClass::ProviderBadOutput => "provider_bad_output",
            AttemptClass::SchemaInvalid => "schema_invalid",
            AttemptClass::InvalidRequest => "invalid_request",
        }
    }
}

/// One call to one model at one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// `job_id/stage/n`.
    pub attempt_id: String,
    /// Stage name.
    pub stage: StageName,
    /// Provider name.
    pub provider: String,
    /// Catalog model name.
    pub model: String,
    /// HTTP status, if an answer came back.
    pub status: Option<u16>,
    /// Outcome class.
    pub class: AttemptClass,
    /// Error text, scrubbed of secrets.
    pub error: Option<String>,
    /// Wall time of the call.
    pub latency_ms: u64,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// Cost of this attempt.
    pub cost_micro_usd: MicroUsd,
    /// Whether this was the repair re-ask.
    pub repair: bool,
    /// The key's reference (`env:NAME`), never the key.
    #[serde(default)]
    pub key: Option<String>,
    /// Whether the tenant's own key (BYOK) was used.
    #[serde(default)]
    pub tenant_key: bool,
    /// Prompt tokens served from cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Reasoning tokens.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// What the provider said the call cost, when it did.
    #[serde(default)]
    pub provider_cost_micro_usd: Option<MicroUsd>,
}

/// Why a stage escalated a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// Confidence under the gate's threshold.
    LowConfidence,
    /// A gate rule matched.
    Rule,
    /// The output broke the schema even after the repair re-ask.
    SchemaInvalid,
    /// Not an escalation: a shadow copy of a job the stage accepted (its result is already
    /// out), for the next stage to re-do and compare (`gate.audit`).
    Audit,
}

impl EscalationReason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationReason::LowConfidence => "low_confidence",
            EscalationReason::Rule => "rule",
            EscalationReason::SchemaInvalid => "schema_invalid",
            EscalationReason::Audit => "audit",
        }
    }
}

/// One hand-off from a stage to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationStep {
    /// The stage that escalated.
    pub from_stage: StageName,
    /// The stage it went to.
    pub to_stage: StageName,
    /// Why.
    pub reason: EscalationReason,
    /// Details (which rule, which confidence, which schema errors).
    pub detail: String,
    /// What the earlier stage produced (null when it produced nothing valid).
    #[serde(default)]
    pub output: Value,
    /// The earlier stage's confidence.
    #[serde(default)]
    pub confidence: Option<f64>,
}

/// A job on its way to a later stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// The original job.
    pub job: Intake,
    /// The stage that should take it.
    pub to_stage: StageName,
    /// Every hand-off so far.
    pub escalations: Vec<EscalationStep>,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Job id.
    pub job_id: JobId,
    /// Tenant.
    pub tenant: TenantId,
    /// Pipeline.
    pub pipeline: String,
    /// The stage that produced `output`.
    pub stage: StageName,
    /// The validated output.
    pub output: Value,
    /// Its confidence, when the output reports one.
    pub confidence: Option<f64>,
    /// Whether a person should review it.
    pub needs_review: bool,
    /// Why, when it needs review.
    pub review_reason: Option<String>,
    /// Every hand-off.
    pub escalations: Vec<EscalationStep>,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// Total cost of all attempts.
    pub cost_micro_usd: MicroUsd,
    /// When the job was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    /// completed_at − created_at.
    pub latency_ms: u64,
    /// The job's metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Not JSON, not UTF-8, or not an intake envelope.
    InvalidIntake,
    /// Every candidate endpoint failed.
    ProviderExhausted,
    /// The output broke the schema at the last stage.
    SchemaInvalid,
    /// The last stage's gate rejected it (with `at_last_stage: dead_letter`).
    GateRejected,
    /// The provider refused the request as malformed.
    InvalidRequest,
    /// A content filter refused it.
    ContentPolicy,
    /// The broker refused the output message.
    OutputRejected,
    /// The tenant is not configured.
    UnknownTenant,
    /// The tenant's budget would be exceeded.
    BudgetExceeded,
    /// The job's task failed inside Switchyard (a bug, or input it could not handle); the job
    /// is kept here rather than retried forever.
    InternalError,
    /// The job's prompt is larger than the context window of every model its stage routes to:
    /// no call was made, and a replay cannot succeed (split or shorten it, or route to a model
    /// with a larger window).
    InputTooLarge,
}

impl DeadLetterReason {
    /// Every reason.
    pub const ALL: [DeadLetterReason; 11] = [
        DeadLetterReason::InvalidIntake,
        DeadLetterReason::ProviderExhausted,
        DeadLetterReason::SchemaInvalid,
        DeadLetterReason::GateRejected,
        DeadLetterReason::InvalidRequest,
        DeadLetterReason::ContentPolicy,
        DeadLetterReason::OutputRejected,
        DeadLetterReason::UnknownTenant,
        DeadLetterReason::BudgetExceeded,
        DeadLetterReason::InternalError,
        DeadLetterReason::InputTooLarge,
    ];

    /// The reason named `name` (snake_case); an unknown name is an error listing the valid ones.
    pub fn parse(name: &str) -> Result<DeadLetterReason, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown dead-letter reason `{name}`; the reasons are: {}",
                    Self::ALL.map(|r| r.as_str()).join(", ")
                )
            })
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidIntake => "invalid_intake",
            DeadLetterReason::ProviderExhausted => "provider_exhausted",
            DeadLetterReason::SchemaInvalid => "schema_invalid",
            DeadLetterReason::GateRejected => "gate_rejected",
            DeadLetterReason::InvalidRequest => "invalid_request",
            DeadLetterReason::ContentPolicy => "content_policy",
            DeadLetterReason::OutputRejected => "output_rejected",
            DeadLetterReason::UnknownTenant => "unknown_tenant",
            DeadLetterReason::BudgetExceeded => "budget_exceeded",
            DeadLetterReason::InternalError => "internal_error",
            DeadLetterReason::InputTooLarge => "input_too_large",
        }
    }

    /// Whether sending the job back unchanged may succeed later.
    pub fn replayable(self) -> bool {
        matches!(
            self,
            DeadLetterReason::ProviderExhausted
                | DeadLetterReason::SchemaInvalid
                | DeadLetterReason::BudgetExceeded
                | DeadLetterReason::InternalError
                | DeadLetterReason::UnknownTenant
                | DeadLetterReason::OutputRejected
        )
    }
}

/// How a job left a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEnd {
    /// Published as a result.
    Result,
    /// Handed to the next stage.
    Escalated,
    /// Dead-lettered.
    DeadLetter,
    /// A shadow copy re-done for an audit: recorded, nothing published.
    Audited,
}

impl JobEnd {
    /// The name used in metrics and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEnd::Result => "result",
            JobEnd::Escalated => "escalated",
            JobEnd::DeadLetter => "dead_letter",
            JobEnd::Audited => "audited",
        }
    }
}

/// The message as it arrived, kept whole in a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "snake_case")]
pub enum Original {
    /// Parsed JSON (the intake job, or any JSON that was not one).
    Json(Value),
    /// UTF-8 text that is not JSON.
    Utf8(String),
    /// Raw bytes that are not UTF-8, base64-encoded.
    Base64(String),
}

impl Original {
    /// Keeps bytes in the most readable lossless form.
    pub fn from_bytes(bytes: &[u8]) -> Original {
        use base64::Engine;
        match std::str::from_utf8(bytes) {
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) => Original::Json(v),
                Err(_) => Original::Utf8(text.to_string()),
            },
            Err(_) => Original::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// The original bytes (JSON re-serialised).
    pub fn to_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        match self {
            Original::Json(v) => v.to_string().into_bytes(),
            Original::Utf8(s) => s.clone().into_bytes(),
            Original::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
        }
    }
}

/// Where a message was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key, if UTF-8.
    pub key: Option<String>,
}

/// A job that could not be finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Job id, when the message could be read as a job.
    pub job_id: Option<JobId>,
    /// Tenant, when known.
    pub tenant: Option<TenantId>,
    /// Pipeline.
    pub pipeline: String,
    /// Stage where it failed.
    pub stage: StageName,
    /// Why.
    pub reason: DeadLetterReason,
    /// What went wrong and what to do.
    pub detail: String,
    /// The message as it arrived at the failing stage's input.
    pub original: Original,
    /// Where it was read.
    pub source: Source,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// Every hand-off before it failed.
    pub escalations: Vec<EscalationStep>,
    /// Times replayed so far.
    pub redrive_count: u32,
    /// Whether a replay may succeed.
    pub replayable: bool,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

/// The envelope schemas, compiled once.
pub struct Schemas {
    /// Intake.
    pub intake: Validator,
    /// Result.
    pub result: Validator,
    /// Escalation.
    pub escalation: Validator,
    /// Dead letter.
    pub dead_letter: Validator,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schemas")
    }
}

/// An envelope schema problem: a bug in `schemas/`, caught at start.
#[derive(Debug, thiserror::Error)]
#[error("envelope schema {name}: {message}")]
pub struct SchemaError {
    name: &'static str,
    message: String,
}

fn parse(name: &'static str, text: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(text).map_err(|e| SchemaError {
        name,
        message: e.to_string(),
    })
}

impl Schemas {
    /// Compiles every envelope schema (formats checked; only local references resolve).
    pub fn load() -> Result<Schemas, SchemaError> {
        let shared = [
            ("urn:switchyard:intake", "intake", INTAKE),
            ("urn:switchyard:attempt", "attempt", ATTEMPT),
            (
                "urn:switchyard:escalation-step",
                "escalation-step",
                ESCALATION_STEP,
            ),
        ];
        let mut resources = Vec::new();
        for (uri, name, text) in shared {
            let value = parse(name, text)?;
            let resource = Resource::from_contents(value).map_err(|e| SchemaError {
                name,
                message: e.to_string(),
            })?;
            resources.push((uri.to_string(), resource));
        }
        let build = |name: &'static str, text: &str| -> Result<Validator, SchemaError> {
            let schema = parse(name, text)?;
            jsonschema::options()
                .should_validate_formats(true)
                .with_resources(resources.clone().into_iter())
                .build(&schema)
                .map_err(|e| SchemaError {
                    name,
                    message: e.to_string(),
                })
        };
        Ok(Schemas {
            intake: build("intake", INTAKE)?,
            result: build("result", RESULT)?,
            escalation: build("escalation", ESCALATION)?,
            dead_letter: build("dead-letter", DEAD_LETTER)?,
        })
    }
}

/// Compiles a stage's output schema (formats checked, no remote references).
pub fn compile_schema(schema: &Value) -> Result<Validator, InvalidSchema> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| InvalidSchema(e.to_string()))
}

/// A JSON Schema that does not compile, with the compiler's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSchema(pub String);

/// Every validation error as `path: message`, at most `limit` of them.
pub fn validation_errors(validator: &Validator, value: &Value, limit: usize) -> Vec<String> {
    // The common case, valid, short-circuits without building error values.
    if validator.is_valid(value) {
        return Vec::new();
    }
    validator
        .iter_errors(value)
        .take(limit)
        .map(|e| {
            let path = e.instance_path.to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            // An error quotes the offending value; a 500 KiB value must not make every error
            // text (and the dead letter carrying it) that long.
            let text = format!("{path}: {e}");
            if text.len() > MAX_ERROR_CHARS {
                let cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
                format!("{cut}… ({} bytes in all)", text.len())
            } else {
                text
            }
        })
        .collect()
}

/// The longest validation error text kept.
const MAX_ERROR_CHARS: usize = 300;

/// Now, in UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The job id of a message that could not be decoded, when one can be read from it.
pub fn job_id_hint(payload: &[u8]) -> Option<JobId> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    v.get("job_id")
        .or_else(|| v.pointer("/job/job_id"))
        .and_then(Value::as_str)
        .filter(|id| usable_id(id))
        .map(JobId::from)
}

/// The longest job id (and Kafka key) Switchyard repeats in what it publishes.
pub const MAX_ID_BYTES: usize = 200;

/// Whether `id` may be repeated as a job id in outputs, keys and headers: what the intake
/// schema allows (1–200 of `A-Z a-z 0-9 . _ : -`). A message with any other id is
/// dead-lettered without it, so a 0.5 MB id cannot make the dead letter too large to publish.
pub fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A Kafka key Switchyard may reuse for its outputs: UTF-8, at most [`MAX_ID_BYTES`], no
/// control characters. Any other key is dropped (outputs are keyed by job id or position).
pub fn usable_key(key: &[u8]) -> Option<String> {
    let k = std::str::from_utf8(key).ok()?;
    (k.len() <= MAX_ID_BYTES && !k.chars().any(char::is_control)).then(|| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intake() -> Value {
        json!({"job_id": "j-1", "tenant": "acme", "pipeline": "p", "payload": {"text": "hi"},
               "created_at": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn escalation_reason_names_match_their_serialized_form() {
        for r in [
            EscalationReason::LowConfidence,
            EscalationReason::Rule,
            EscalationReason::SchemaInvalid,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
        }
    }

    #[test]
    fn schemas_compile_and_check_intake() {
        let s = Schemas::load().unwrap();
        assert!(s.intake.is_valid(&intake()));
        let mut bad = intake();
        bad["created_at"] = json!("yesterday");
        let errs = validation_errors(&s.intake, &bad, 5);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("/created_at"), "{errs:?}");
        let mut extra = intake();
        extra["surprise"] = json!(1);
        assert!(!s.intake.is_valid(&extra));
    }

    #[test]
    fn envelopes_serialise_to_valid_json() {
        let s = Schemas::load().unwrap();
        let job: Intake = serde_json::from_value(intake()).unwrap();
        let attempt = Attempt {
            attempt_id: "j-1/triage/1".into(),
            stage: "triage".into(),
            provider: "p".into(),
            model: "m".into(),
            status: Some(500),
            class: AttemptClass::Transient,
            error: Some("boom".into()),
            latency_ms: 3,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micro_usd: MicroUsd(0),
            repair: false,
            key: Some("env:A_KEY".into()),
            tenant_key: false,
            cached_tokens: 0,
            reasoning_tokens: 0,
            provider_cost_micro_usd: None,
        };
        let step = EscalationStep {
            from_stage: "triage".into(),
            to_stage: "resolve".into(),
            reason: EscalationReason::LowConfidence,
            detail: "0.4 < 0.7".into(),
            output: json!({"a": 1}),
            confidence: Some(0.4),
        };
        let esc = Escalation {
            job: job.clone(),
            to_stage: "resolve".into(),
            escalations: vec![step.clone()],
            attempts: vec![attempt.clone()],
        };
        let v = serde_json::to_value(&esc).unwrap();
        assert!(
            s.escalation.is_valid(&v),
            "{:?}",
            validation_errors(&s.escalation, &v, 5)
        );
        let dl = DeadLetter {
            job_id: None,
            tenant: None,
            pipeline: "p".into(),
            stage: "triage".into(),
            reason: DeadLetterReason::InvalidIntake,
            detail: "not JSON".into(),
            original: Original::from_bytes(&[0xff, 0x00, 0x41]),
            source: Source {
                topic: "t".into(),
                partition: 0,
                offset: 7,
                key: None,
            },
            attempts: vec![attempt],
            escalations: vec![step],
            redrive_count: 0,
            replayable: false,
            failed_at: now(),
        };
        let v = serde_json::to_value(&dl).unwrap();
        assert!(
            s.dead_letter.is_valid(&v),
            "{:?}",
            validation_errors(&s.dead_letter, &v, 5)
        );
        assert_eq!(v["original"]["encoding"], "base64");
        let back: DeadLetter = serde_json::from_value(v).unwrap();
        assert_eq!(back.original.to_bytes(), vec![0xff, 0x00, 0x41]);
    }
}
