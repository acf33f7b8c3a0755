//! Running one job through one stage: render the prompt, call the route's candidates in order,
//! parse and validate the answer against the output schema, re-ask once with the validator's
//! errors if it is invalid, then let the gate decide. Returns an outcome and every attempt; it
//! publishes nothing (that is the consumer's job, after which offsets may move).
//!
//! The attempt loop and its failure table are in [`attempt`]; what the stage needs from the
//! rest of the product comes as narrow handles in [`StageDeps`].

pub mod attempt;
pub mod evidence;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;
use std::time::Instant;

use jsonschema::Validator;
use serde_json::Value;

use crate::config::tenant::Tenant;
use crate::config::{Endpoint, Stage};
use crate::envelope::{
    Attempt, AttemptClass, DeadLetterReason, EscalationReason, EscalationStep, Intake,
    validation_errors,
};
use crate::gate::{self, Verdict};
use crate::ids::StageName;
use crate::limit::budget::Spend;
use crate::limit::{KeyChoice, Limits};
use crate::money::MicroUsd;
use crate::prompt::Prompts;
use crate::provider::{Adapters, Message, Role, Usage};
use crate::route::Needs;
use crate::route::health::Health;
use crate::telemetry::Telemetry;
use attempt::{Attempted, JobRequest};

/// What a stage needs from the rest of the product, each concern with its own owner: the
/// providers' APIs (the seam a test fills with fakes), rate limits and keys, endpoint health,
/// tenant spend, and where telemetry events go.
#[derive(Debug, Clone)]
pub struct StageDeps {
    /// Provider APIs by name.
    pub providers: Arc<Adapters>,
    /// Rate limits, concurrency caps and key standing.
    pub limits: Arc<Limits>,
    /// Endpoint health and breakers.
    pub health: Arc<Health>,
    /// Spend per tenant, for budgets.
    pub spend: Arc<Spend>,
    /// Telemetry events.
    pub telemetry: Telemetry,
    /// Audit figures and the thresholds `target_precision` moved.
    pub audits: Arc<crate::audit::AuditBook>,
}

/// What a stage decided for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish as the result.
    Accept {
        /// The validated output.
        output: Value,
        /// Its confidence.
        confidence: Option<f64>,
        /// Set when the last stage's gate was unsatisfied: why a person should look.
        review: Option<String>,
    },
    /// Hand to the next stage.
    Escalate(EscalationStep),
    /// Give up on the job.
    DeadLetter {
        /// Why.
        reason: DeadLetterReason,
        /// Details for a person.
        detail: String,
    },
}

/// An outcome with the attempts that led to it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRun {
    /// The decision.
    pub outcome: Outcome,
    /// Every LLM call made.
    pub attempts: Vec<Attempt>,
}

/// A stage ready to run jobs.
#[derive(Debug)]
pub struct StageRunner {
    /// The stage's configuration.
    pub stage: Stage,
    /// The pipeline's name (a metrics label).
    pub pipeline: String,
    /// The next stage's name, if any.
    pub next: Option<StageName>,
    /// The pipeline's local-tier stage, if any (whose label `agreement` compares with).
    pub local_stage: Option<StageName>,
    prompts: Prompts,
    validator: Validator,
    schema_text: String,
    /// The output schema as JSON text, put into every request body as it is.
    schema_raw: Box<serde_json::value::RawValue>,
    /// The name the schema goes by in requests.
    schema_name: String,
    deps: StageDeps,
    tenants: Option<Arc<std::collections::BTreeMap<String, Tenant>>>,
}

/// Errors building a stage runner (caught by `Pipeline::load` already; kept for safety).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A prompt template did not compile.
    #[error("stage `{stage}`: prompt template: {source}")]
    Template {
        /// Stage.
        stage: String,
        /// Why.
        source: minijinja::Error,
    },
    /// The output schema did not compile.
    #[error("stage `{stage}`: output schema: {message}")]
    Schema {
        /// Stage.
        stage: String,
        /// Why.
        message: String,
    },
}

/// How many validator errors a repair re-ask or a dead letter carries.
const MAX_REPORTED_ERRORS: usize = 8;

impl StageRunner {
    /// Compiles a stage's templates and schema.
    pub fn new(
        stage: Stage,
        next: Option<StageName>,
        deps: StageDeps,
        tenants: Option<Arc<std::collections::BTreeMap<String, Tenant>>>,
    ) -> Result<Self, StageError> {
        let prompts =
            Prompts::new(stage.system_prompt.as_deref(), &stage.prompt).map_err(|source| {
                StageError::Template {
                    stage: stage.name.to_string(),
                    source,
                }
            })?;
        let validator =
            crate::envelope::compile_schema(&stage.output_schema).map_err(|message| {
                StageError::Schema {
                    stage: stage.name.to_string(),
                    message: message.to_string(),
                }
            })?;
        let schema_text = stage.output_schema.to_string();
        let schema_raw =
            serde_json::value::RawValue::from_string(schema_text.clone()).map_err(|e| {
                StageError::Schema {
                    stage: stage.name.to_string(),
                    message: e.to_string(),
                }
            })?;
        let schema_name = schema_name(&stage.name);
        Ok(Self {
            stage,
            pipeline: String::new(),
            local_stage: None,
            next,
            prompts,
            validator,
            schema_text,
            schema_raw,
            schema_name,
            deps,
            tenants,
        })
    }

    /// Runs one job. `history` is the escalation trail so far (empty at the first stage).
    pub async fn run(&self, job: &Intake, history: &[EscalationStep]) -> StageRun {
        let mut run = Attempts::new(job, &self.stage.name);
        // An audit re-do's attempts get ids of their own: the same job may also reach this
        // stage as a real escalation (a redelivery judged differently), and the ledger keeps
        // one row per id.
        if history
            .last()
            .is_some_and(|s| s.reason == EscalationReason::Audit)
        {
            run.prefix.push_str("/audit");
        }
        let tenant = match &self.tenants {
            None => None,
            Some(map) => match map.get(job.tenant.as_str()) {
                Some(t) => Some(t),
                None => {
                    return run.finish(Outcome::DeadLetter {
                        reason: DeadLetterReason::UnknownTenant,
                        detail: format!(
                            "tenant `{}` is not in the pipeline's tenants file; add it (allowed models, budgets, keys) and replay the job",
                            job.tenant
                        ),
                    });
                }
            },
        };
        run.tenant = tenant.map(|t| t.name.clone());
        let choice = KeyChoice {
            tenant: tenant.map(|t| t.name.as_str()),
            shared: tenant.is_none_or(|t| t.shared_keys),
        };
        let rendered = match self.prompts.render(job, history, &self.schema_text) {
            Ok(r) => r,
            Err(e) => {
                return run.finish(Outcome::DeadLetter {
                    reason: DeadLetterReason::InvalidIntake,
                    detail: format!(
                        "stage `{}` cannot render its prompt for this job: {e}; the job's payload must carry every field the prompt uses",
                        self.stage.name
                    ),
                });
            }
        };
        // A local stage: the classifier reads the rendered prompt; no call, no cost.
        if let Some(local) = &self.stage.local {
            let p = local.classifier.predict(&rendered.user);
            if let Some(why) = p.abstain {
                return run.finish(self.abstained(&local.label_field, &p, why));
            }
            let mut output = serde_json::Map::new();
            output.insert(local.label_field.clone(), Value::String(p.label));
            output.insert("confidence".into(), serde_json::json!(p.confidence));
            let output = Value::Object(output);
            let errors = validation_errors(&self.validator, &output, MAX_REPORTED_ERRORS);
            return run.finish(if errors.is_empty() {
                self.judge(output, &gate::Evidence::default())
            } else {
                self.schema_invalid(errors, output)
            });
        }
        let mut messages = Vec::new();
        if let Some(system) = rendered.system {
            messages.push(Message {
                role: Role::System,
                content: system,
            });
        }
        messages.push(Message {
            role: Role::User,
            content: rendered.user,
        });

        let prompt_chars: usize = messages.iter().map(|m| m.content.len()).sum();
        let schema_tokens = self.schema_text.len() / 4;
        let prompt_tokens = (prompt_chars / 4 + schema_tokens) as u64;
        let needs = Needs {
            parameters: self.parameters(),
            prompt_tokens: Some(prompt_tokens),
            tenant: tenant.map(Tenant::rules),
        };
        let seed = crate::route::job_seed(&job.job_id);
        let max_tokens = self.stage.route.max_tokens.unwrap_or(256);
        let tokens = (prompt_chars / 4) as u32 + max_tokens;

        // Budgets are checked before any call, against the most the first candidate could cost.
        if let Some(t) = tenant.filter(|t| t.daily.is_some() || t.monthly.is_some()) {
            let now = Instant::now();
            let health = |e: &Endpoint| self.deps.health.view(&e.provider, &e.model, now);
            let plan = crate::route::plan(
                &self.stage.models,
                &self.stage.route.provider,
                &needs,
                &health,
                Some(seed),
            );
            if let Some(first) = plan.candidates.first() {
                let estimate = crate::limit::budget::estimate(
                    first.endpoint,
                    prompt_tokens,
                    u64::from(max_tokens),
                );
                let spent = self.deps.spend.get(&t.name, crate::envelope::now());
                if let Some(why) = crate::limit::budget::over_budget(t, spent, estimate) {
                    return run.finish(Outcome::DeadLetter {
                        reason: DeadLetterReason::BudgetExceeded,
                        detail: why,
                    });
                }
            }
        }

        let request = JobRequest {
            history,
            metadata: &job.metadata,
            messages: &messages,
            needs: &needs,
            seed,
            tokens,
            choice,
        };
        let mut outcome = self
            .attempt_models(&self.stage.models, &request, &mut run)
            .await;
        if let Attempted::ContentRefused(why) = &outcome {
            if self.stage.content_fallback.is_empty() {
                return run.finish(Outcome::DeadLetter {
                    reason: DeadLetterReason::ContentPolicy,
                    detail: format!("{why}; configure route.content_fallback to try other models"),
                });
            }
            outcome = self
                .attempt_models(&self.stage.content_fallback, &request, &mut run)
                .await;
        }
        match outcome {
            Attempted::Done(o) => run.finish(o),
            Attempted::ContentRefused(why) => run.finish(Outcome::DeadLetter {
                reason: DeadLetterReason::ContentPolicy,
                detail: format!("{why}; the content fallback models refused too"),
            }),
            Attempted::TooLarge(why) => run.finish(Outcome::DeadLetter {
                reason: DeadLetterReason::InputTooLarge,
                detail: why,
            }),
            Attempted::Exhausted(notes) => {
                let detail = run.exhausted_detail(&notes);
                run.finish(Outcome::DeadLetter {
                    reason: DeadLetterReason::ProviderExhausted,
                    detail,
                })
            }
        }
    }

    /// The confidence threshold in force: where audits moved it, else `min_confidence`.
    pub fn threshold(&self) -> Option<f64> {
        self.deps
            .audits
            .threshold(&self.stage.name)
            .or(self.stage.gate.min_confidence)
    }

    /// Audit figures and moved thresholds (shared by every stage of the process).
    pub fn audits(&self) -> &Arc<crate::audit::AuditBook> {
        &self.deps.audits
    }

    /// The request parameters every call of this stage uses (for `require_parameters`).
    fn parameters(&self) -> Vec<String> {
        parameters(&self.stage)
    }

    fn check(&self, content: &str) -> Result<Value, Vec<String>> {
        let value =
            parse_json(content).map_err(|e| vec![format!("the answer is not JSON: {e}")])?;
        let errors = validation_errors(&self.validator, &value, MAX_REPORTED_ERRORS);
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors)
        }
    }

    fn judge(&self, output: Value, evidence: &gate::Evidence) -> Outcome {
        let confidence = gate::confidence(&self.stage.gate, &output, evidence);
        match gate::judge(
            &self.stage.gate,
            self.threshold(),
            &output,
            self.next.is_some(),
            evidence,
        ) {
            Verdict::Accept => Outcome::Accept {
                output,
                confidence,
                review: None,
            },
            Verdict::Review { detail } => Outcome::Accept {
                output,
                confidence,
                review: Some(detail),
            },
            Verdict::Reject { detail } => Outcome::DeadLetter {
                reason: DeadLetterReason::GateRejected,
                detail,
            },
            Verdict::Escalate { reason, detail } => Outcome::Escalate(EscalationStep {
                from_stage: self.stage.name.clone(),
                to_stage: self.next.clone().unwrap_or_default(),
                reason,
                detail,
                output,
                confidence,
            }),
        }
    }

    /// The local tier does not answer: escalate, or at the last stage apply its policy.
    fn abstained(
        &self,
        label_field: &str,
        p: &crate::classify::Prediction,
        why: crate::classify::Abstain,
    ) -> Outcome {
        let mut output = serde_json::Map::new();
        if !p.label.is_empty() {
            output.insert(label_field.to_string(), Value::String(p.label.clone()));
        }
        output.insert("confidence".into(), serde_json::json!(p.confidence));
        let output = Value::Object(output);
        let detail = format!("local tier abstains: {why}");
        match &self.next {
            Some(next) => Outcome::Escalate(EscalationStep {
                from_stage: self.stage.name.clone(),
                to_stage: next.clone(),
                reason: EscalationReason::LowConfidence,
                detail,
                output,
                confidence: Some(p.confidence),
            }),
            None => match self.stage.gate.at_last_stage {
                crate::config::LastStagePolicy::Review => Outcome::Accept {
                    output,
                    confidence: Some(p.confidence),
                    review: Some(detail),
                },
                crate::config::LastStagePolicy::DeadLetter => Outcome::DeadLetter {
                    reason: DeadLetterReason::GateRejected,
                    detail,
                },
            },
        }
    }

    fn schema_invalid(&self, errors: Vec<String>, output: Value) -> Outcome {
        let detail = format!(
            "output broke the schema after one repair re-ask: {}",
            errors.join("; ")
        );
        match &self.next {
            Some(next) => Outcome::Escalate(EscalationStep {
                from_stage: self.stage.name.clone(),
                to_stage: next.clone(),
                reason: EscalationReason::SchemaInvalid,
                detail,
                output,
                confidence: None,
            }),
            None => Outcome::DeadLetter {
                reason: DeadLetterReason::SchemaInvalid,
                detail,
            },
        }
    }
}

/// The request parameters every call of `stage` uses (for `require_parameters`; `route
/// explain` shows the same).
pub fn parameters(stage: &Stage) -> Vec<String> {
    let mut p = vec!["response_format".to_string()];
    if stage.route.max_tokens.is_some() {
        p.push("max_tokens".into());
    }
    if stage.route.temperature.is_some() {
        p.push("temperature".into());
    }
    p
}

/// One call, as the attempt loop records it.
struct Call<'a> {
    endpoint: &'a Endpoint,
    status: Option<u16>,
    class: AttemptClass,
    error: Option<String>,
    latency_ms: u64,
    usage: Usage,
    repair: bool,
    key: Option<String>,
    tenant_key: bool,
}

/// The attempts of one job in one stage, numbered `job/stage/n`.
struct Attempts {
    prefix: String,
    stage: StageName,
    list: Vec<Attempt>,
    tenant: Option<String>,
}

impl Attempts {
    fn new(job: &Intake, stage: &str) -> Self {
        // Unique across tenants (two tenants may use the same job id) and across replays (a
        // replayed job's calls cost money too and must reach the ledger, whose key this is).
        let redrive = if job.redrive_count > 0 {
            format!("/redrive-{}", job.redrive_count)
        } else {
            String::new()
        };
        Self {
            prefix: format!("{}:{}{redrive}/{}", job.tenant, job.job_id, stage),
            stage: stage.into(),
            list: Vec::new(),
            tenant: None,
        }
    }

    fn push(&mut self, call: Call<'_>) {
        let Call {
            endpoint,
            status,
            class,
            error,
            latency_ms,
            usage,
            repair,
            key,
            tenant_key,
        } = call;
        let (usage, overstated) = bounded_usage(endpoint, usage);
        let error = match (error, overstated) {
            (e, None) => e,
            (None, Some(note)) => Some(note),
            (Some(e), Some(note)) => Some(format!("{e}; {note}")),
        };
        self.list.push(Attempt {
            attempt_id: format!("{}/{}", self.prefix, self.list.len() + 1),
            stage: self.stage.clone(),
            provider: endpoint.provider.clone(),
            model: endpoint.model.clone(),
            status,
            class,
            error,
            latency_ms,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micro_usd: cost(endpoint, usage),
            repair,
            key,
            tenant_key,
            cached_tokens: usage.cached_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            provider_cost_micro_usd: usage.reported_cost,
        });
    }

    fn mark_last_schema_invalid(&mut self, errors: &[String]) {
        if let Some(a) = self.list.last_mut() {
            a.class = AttemptClass::SchemaInvalid;
            a.error = Some(errors.join("; "));
        }
    }

    fn exhausted_detail(&self, notes: &[String]) -> String {
        let tried: Vec<String> = self
            .list
            .iter()
            .map(|a| {
                let status = a
                    .status
                    .map_or("no answer".to_string(), |s| format!("HTTP {s}"));
                format!(
                    "{}/{}: {} ({status})",
                    a.provider,
                    a.model,
                    a.class.as_str()
                )
            })
            .collect();
        let mut detail = format!("every candidate failed ({})", tried.join(", "));
        if !notes.is_empty() {
            detail.push_str(&format!("; {}", notes.join("; ")));
        }
        detail.push_str("; replay the job once the providers recover");
        detail
    }

    fn finish(self, outcome: Outcome) -> StageRun {
        StageRun {
            outcome,
            attempts: self.list,
        }
    }
}

/// Usage as the provider reported it, unless it is more than one call at this endpoint can
/// use (prompt and completion together beyond the context window): then it is cut to the
/// window and a note says so. A provider's `2^64` tokens must not bill a tenant into lockout.
pub fn bounded_usage(endpoint: &Endpoint, usage: Usage) -> (Usage, Option<String>) {
    let window = u64::from(endpoint.context_length);
    let total = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    if window == 0 || total <= window {
        return (usage, None);
    }
    let prompt = usage.prompt_tokens.min(window);
    let completion = usage.completion_tokens.min(window - prompt);
    let note = format!(
        "the provider reported {} prompt and {} completion tokens, more than {}'s context window of {window}; charged as {prompt} + {completion}",
        usage.prompt_tokens, usage.completion_tokens, endpoint.model
    );
    (
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: usage.cached_tokens.min(prompt),
            reasoning_tokens: usage.reasoning_tokens.min(completion),
            ..usage
        },
        Some(note),
    )
}

/// What an attempt cost at an endpoint's prices.
pub fn cost(endpoint: &Endpoint, usage: Usage) -> MicroUsd {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    endpoint.input.cost(usage.prompt_tokens - cached)
        + endpoint.cached.cost(cached)
        + endpoint.output.cost(usage.completion_tokens)
}

/// Parses a model's answer as JSON, tolerating a Markdown code fence around it.
pub fn parse_json(content: &str) -> Result<Value, serde_json::Error> {
    let t = content.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(t.trim())
}

fn repair_prompt(errors: &[String]) -> String {
    let mut text = String::from(
        "Your answer does not satisfy the required JSON Schema. The validator reported:\n",
    );
    for e in errors {
        let short: String = e.chars().take(400).collect();
        text.push_str("- ");
        text.push_str(&short);
        text.push('\n');
    }
    text.push_str("Reply again with only the corrected JSON object, nothing else.");
    text
}

fn schema_name(stage: &str) -> String {
    let clean: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}_output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::PerMTok;

    #[test]
    fn parse_json_accepts_fenced_answers() {
        assert_eq!(parse_json("```json\n{\"a\":1}\n```").unwrap()["a"], 1);
        assert_eq!(parse_json(" {\"a\":2} ").unwrap()["a"], 2);
        assert!(parse_json("{\"a\":").is_err());
    }

    #[test]
    fn cost_prices_cached_tokens_separately() {
        let e = Endpoint {
            model: "m".into(),
            provider: "p".into(),
            model_id: "m".into(),
            input: PerMTok(1_000_000),
            output: PerMTok(4_000_000),
            cached: PerMTok(250_000),
            json_schema: true,
            context_length: 1000,
            data_collection: crate::config::DataPolicy::Allow,
            zdr: false,
            quantization: None,
            throughput: None,
            latency: None,
            parameters: Vec::new(),
        };
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 400,
            reasoning_tokens: 0,
            reported_cost: None,
        };
        // 600 × $1/M + 400 × $0.25/M + 100 × $4/M = 600 + 100 + 400 µ$.
        assert_eq!(cost(&e, u), MicroUsd(1100));

        // A provider claiming 2^64 − 1 tokens is charged for at most the window.
        let absurd = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..u
        };
        let (bounded, note) = bounded_usage(&e, absurd);
        assert_eq!(
            (bounded.prompt_tokens, bounded.completion_tokens),
            (1000, 0)
        );
        assert!(note.unwrap().contains("context window of 1000"));
        assert!(cost(&e, bounded) <= MicroUsd(1000));
        let fine = Usage {
            prompt_tokens: 700,
            completion_tokens: 300,
            ..u
        };
        assert_eq!(bounded_usage(&e, fine), (fine, None));
    }

    #[test]
    fn repair_prompt_lists_errors() {
        let p = repair_prompt(&["/category: bad".into()]);
        assert!(p.contains("- /category: bad"));
    }
}
