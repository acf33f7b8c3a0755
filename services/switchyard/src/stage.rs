//! Running one job through one stage: render the prompt, call the route's candidates in order,
//! parse and validate the answer against the output schema, re-ask once with the validator's
//! errors if it is invalid, then let the gate decide. Returns an outcome and every attempt; it
//! publishes nothing (that is the consumer's job, after which offsets may move).

use std::sync::Arc;
use std::time::Instant;

use jsonschema::Validator;
use serde_json::Value;
use tracing::Instrument;

use std::time::Duration;

use crate::config::{Endpoint, RouteModel, Stage};
use crate::envelope::{
    Attempt, AttemptClass, DeadLetterReason, EscalationReason, EscalationStep, Intake,
    validation_errors,
};
use crate::gate::{self, Verdict};
use crate::limit::{Capacity, KeyChoice, Permit};
use crate::money::MicroUsd;
use crate::prompt::Prompts;
use crate::provider::{ChatRequest, Completion, Message, ProviderError, ProviderSet, Role, Usage};
use crate::route::Needs;
use crate::tenant::Tenant;

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
    pub next: Option<String>,
    prompts: Prompts,
    validator: Validator,
    schema_text: String,
    /// The output schema as JSON text, put into every request body as it is.
    schema_raw: Box<serde_json::value::RawValue>,
    /// The name the schema goes by in requests.
    schema_name: String,
    providers: Arc<ProviderSet>,
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
        next: Option<String>,
        providers: Arc<ProviderSet>,
        tenants: Option<Arc<std::collections::BTreeMap<String, Tenant>>>,
    ) -> Result<Self, StageError> {
        let prompts =
            Prompts::new(stage.system_prompt.as_deref(), &stage.prompt).map_err(|source| {
                StageError::Template {
                    stage: stage.name.clone(),
                    source,
                }
            })?;
        let validator =
            crate::envelope::compile_schema(&stage.output_schema).map_err(|message| {
                StageError::Schema {
                    stage: stage.name.clone(),
                    message,
                }
            })?;
        let schema_text = stage.output_schema.to_string();
        let schema_raw =
            serde_json::value::RawValue::from_string(schema_text.clone()).map_err(|e| {
                StageError::Schema {
                    stage: stage.name.clone(),
                    message: e.to_string(),
                }
            })?;
        let schema_name = schema_name(&stage.name);
        Ok(Self {
            stage,
            pipeline: String::new(),
            next,
            prompts,
            validator,
            schema_text,
            schema_raw,
            schema_name,
            providers,
            tenants,
        })
    }

    /// Runs one job. `history` is the escalation trail so far (empty at the first stage).
    pub async fn run(&self, job: &Intake, history: &[EscalationStep]) -> StageRun {
        let mut run = Attempts::new(job, &self.stage.name);
        let tenant = match &self.tenants {
            None => None,
            Some(map) => match map.get(&job.tenant) {
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
            let mut output = serde_json::Map::new();
            output.insert(local.label_field.clone(), Value::String(p.label));
            output.insert("confidence".into(), serde_json::json!(p.confidence));
            let output = Value::Object(output);
            let errors = validation_errors(&self.validator, &output, MAX_REPORTED_ERRORS);
            return run.finish(if errors.is_empty() {
                self.judge(output)
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
        let seed = llm_sim::fnv1a(job.job_id.as_bytes());
        let max_tokens = self.stage.route.max_tokens.unwrap_or(256);
        let tokens = (prompt_chars / 4) as u32 + max_tokens;

        // Budgets are checked before any call, against the most the first candidate could cost.
        if let Some(t) = tenant.filter(|t| t.daily.is_some() || t.monthly.is_some()) {
            let now = Instant::now();
            let health = |e: &Endpoint| self.providers.health.view(&e.provider, &e.model, now);
            let plan = crate::route::plan(
                &self.stage.models,
                &self.stage.route.provider,
                &needs,
                &health,
                Some(seed),
            );
            if let Some(first) = plan.candidates.first() {
                let estimate =
                    crate::tenant::estimate(first.endpoint, prompt_tokens, u64::from(max_tokens));
                let spent = self.providers.spend.get(&t.name, crate::envelope::now());
                if let Some(why) = crate::tenant::over_budget(t, spent, estimate) {
                    return run.finish(Outcome::DeadLetter {
                        reason: DeadLetterReason::BudgetExceeded,
                        detail: why,
                    });
                }
            }
        }

        let request = JobRequest {
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
            Attempted::Exhausted(notes) => {
                let detail = run.exhausted_detail(&notes);
                run.finish(Outcome::DeadLetter {
                    reason: DeadLetterReason::ProviderExhausted,
                    detail,
                })
            }
        }
    }

    /// The request parameters every call of this stage uses (for `require_parameters`).
    fn parameters(&self) -> Vec<String> {
        let mut p = vec!["response_format".to_string()];
        if self.stage.route.max_tokens.is_some() {
            p.push("max_tokens".into());
        }
        if self.stage.route.temperature.is_some() {
            p.push("temperature".into());
        }
        p
    }

    /// Waits for capacity at `endpoint` up to the route's max_wait.
    async fn capacity(
        &self,
        endpoint: &Endpoint,
        tokens: u32,
        choice: KeyChoice<'_>,
    ) -> Result<Permit, Duration> {
        let max_wait = self.stage.route.max_wait;
        let mut waited = Duration::ZERO;
        loop {
            match self.providers.limits.try_acquire(
                &endpoint.provider,
                tokens,
                Instant::now(),
                choice,
            ) {
                Capacity::Ready(p) => return Ok(p),
                Capacity::Wait(d) if waited + d <= max_wait => {
                    tokio::time::sleep(d).await;
                    crate::telemetry::LimiterWaited {
                        provider: &endpoint.provider,
                        waited: d,
                    }
                    .emit();
                    waited += d;
                }
                Capacity::Wait(d) => return Err(d),
                Capacity::NoKey(_) => return Err(Duration::MAX),
            }
        }
    }

    /// Tries `models`' endpoints in route order, each failure class deciding the next move.
    async fn attempt_models(
        &self,
        models: &[RouteModel],
        request: &JobRequest<'_>,
        run: &mut Attempts,
    ) -> Attempted {
        let JobRequest {
            metadata,
            messages,
            needs,
            seed,
            tokens,
            choice,
        } = *request;
        // Across rounds: endpoints already called (one call per candidate), and what failures
        // taught us. A round ends with a wait only when some candidate lacked rate-limit capacity.
        let mut called: Vec<(String, String)> = Vec::new();
        let mut invalid_requests = 0;
        let mut smaller_than: Option<u32> = None;
        loop {
            let now = Instant::now();
            let health = |e: &Endpoint| self.providers.health.view(&e.provider, &e.model, now);
            let plan = crate::route::plan(
                models,
                &self.stage.route.provider,
                needs,
                &health,
                Some(seed),
            );
            let mut notes: Vec<String> = plan
                .excluded
                .iter()
                .map(|x| format!("{}:{} left out ({})", x.provider, x.model, x.rule))
                .collect();
            if plan.candidates.is_empty() {
                notes.push("no endpoint is eligible under the route's rules".into());
                return Attempted::Exhausted(notes);
            }
            let mut soonest_capacity: Option<Duration> = None;
            let mut i = 0;
            while i < plan.candidates.len() {
                let endpoint = plan.candidates[i].endpoint;
                i += 1;
                if called
                    .iter()
                    .any(|(p, m)| *p == endpoint.provider && *m == endpoint.model)
                {
                    continue;
                }
                if smaller_than.is_some_and(|c| endpoint.context_length <= c) {
                    notes.push(format!(
                        "{} skipped: its context window is not larger",
                        endpoint.id()
                    ));
                    continue;
                }
                if !self
                    .providers
                    .health
                    .allow(&endpoint.provider, &endpoint.model, Instant::now())
                {
                    // Like a rate limit: wait for the breaker's probe rather than give the job up.
                    notes.push(format!("{} skipped: circuit breaker open", endpoint.id()));
                    let probe = Duration::from_millis(500);
                    soonest_capacity = Some(soonest_capacity.map_or(probe, |s| s.min(probe)));
                    continue;
                }
                let permit = match self.capacity(endpoint, tokens, choice).await {
                    Ok(p) => p,
                    Err(wait) => {
                        if wait != Duration::MAX {
                            soonest_capacity = Some(soonest_capacity.map_or(wait, |s| s.min(wait)));
                            notes.push(format!(
                                "{} skipped: no rate-limit capacity within max_wait",
                                endpoint.id()
                            ));
                        } else {
                            notes.push(format!(
                                "{} skipped: every key is out of rotation",
                                endpoint.id()
                            ));
                        }
                        continue;
                    }
                };
                let result = self
                    .call(endpoint, messages, metadata, false, permit, run)
                    .await;
                if !matches!(&result, Err((e, _)) if matches!(e.class, AttemptClass::Auth | AttemptClass::OutOfCredit))
                {
                    called.push((endpoint.provider.clone(), endpoint.model.clone()));
                }
                let completion = match result {
                    Ok(c) => c,
                    Err((e, key)) => match e.class {
                        AttemptClass::RateLimited => {
                            let rest = e.retry_after.unwrap_or(Duration::from_secs(1));
                            self.providers.limits.cool_down(
                                &endpoint.provider,
                                &key,
                                rest,
                                Instant::now(),
                            );
                            continue;
                        }
                        AttemptClass::Auth | AttemptClass::OutOfCredit => {
                            let why = format!("HTTP {}", e.status.unwrap_or(0));
                            self.providers
                                .limits
                                .disable(&endpoint.provider, &key, &why);
                            // The same endpoint again: another key may serve it.
                            i -= 1;
                            continue;
                        }
                        AttemptClass::ContextWindow => {
                            smaller_than = Some(endpoint.context_length);
                            continue;
                        }
                        AttemptClass::ContentPolicy => return Attempted::ContentRefused(e.message),
                        AttemptClass::InvalidRequest => {
                            invalid_requests += 1;
                            if invalid_requests >= 2 {
                                return Attempted::Done(Outcome::DeadLetter {
                                    reason: DeadLetterReason::InvalidRequest,
                                    detail: format!(
                                        "two endpoints refused the request as invalid; last: {}",
                                        e.message
                                    ),
                                });
                            }
                            continue;
                        }
                        _ => continue,
                    },
                };
                let errors = match self.check(&completion.content) {
                    Ok(output) => return Attempted::Done(self.judge(output)),
                    Err(errors) => errors,
                };
                run.mark_last_schema_invalid(&errors);
                // One repair re-ask at the same endpoint, carrying the validator's errors.
                let mut repair = messages.to_vec();
                repair.push(Message {
                    role: Role::Assistant,
                    content: completion.content.clone(),
                });
                repair.push(Message {
                    role: Role::User,
                    content: repair_prompt(&errors),
                });
                let Ok(permit) = self.capacity(endpoint, tokens, choice).await else {
                    continue;
                };
                match self
                    .call(endpoint, &repair, metadata, true, permit, run)
                    .await
                {
                    Ok(second) => match self.check(&second.content) {
                        Ok(output) => return Attempted::Done(self.judge(output)),
                        Err(errors) => {
                            run.mark_last_schema_invalid(&errors);
                            let output = parse_json(&second.content).unwrap_or(Value::Null);
                            return Attempted::Done(self.schema_invalid(errors, output));
                        }
                    },
                    // The repair call itself failed: try the next candidate afresh.
                    Err(_) => continue,
                }
            }
            match soonest_capacity {
                // Candidates left untried only for want of rate-limit capacity or behind an open
                // breaker: hold the job (its in-flight slot makes the partitions pause) until they
                // can be tried. A rate limit or an open breaker never dead-letters a job.
                Some(wait) => {
                    tracing::debug!(?wait, "candidates at their rate limit; waiting");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
                None => return Attempted::Exhausted(notes),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        endpoint: &Endpoint,
        messages: &[Message],
        metadata: &std::collections::BTreeMap<String, String>,
        repair: bool,
        permit: Permit,
        run: &mut Attempts,
    ) -> Result<Completion, (ProviderError, crate::limit::KeyId)> {
        let request = ChatRequest {
            model: &endpoint.model_id,
            messages,
            json_schema: Some((&self.schema_name, &self.schema_raw)),
            native_schema: endpoint.json_schema,
            max_tokens: self.stage.route.max_tokens,
            temperature: self.stage.route.temperature,
            timeout: self.stage.route.timeout,
            key: permit.secret.as_ref(),
            metadata: Some(metadata),
        };
        let started = Instant::now();
        // One span per attempt, with OpenTelemetry's GenAI attribute names.
        let span = tracing::info_span!(
            "chat",
            gen_ai.operation.name = "chat",
            gen_ai.system = %endpoint.provider,
            gen_ai.request.model = %endpoint.model_id,
            gen_ai.request.max_tokens = self.stage.route.max_tokens,
            gen_ai.response.finish = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            switchyard.repair = repair,
        );
        let result = self
            .providers
            .call(&endpoint.provider, &request)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(c) => {
                span.record("gen_ai.usage.input_tokens", c.usage.prompt_tokens);
                span.record("gen_ai.usage.output_tokens", c.usage.completion_tokens);
                span.record("gen_ai.response.finish", "stop");
            }
            Err(e) => {
                span.record("gen_ai.response.finish", e.class.as_str());
            }
        }
        tracing::debug!(parent: &span, ok = result.is_ok(), "attempt ended");
        let elapsed = started.elapsed();
        let (status, class, error, usage) = match &result {
            Ok(c) => {
                let h = &self.providers.health;
                h.success(
                    &endpoint.provider,
                    &endpoint.model,
                    elapsed,
                    c.usage.completion_tokens,
                );
                (Some(c.status), AttemptClass::Ok, None, c.usage)
            }
            Err(e) => {
                self.providers.health.failure(
                    &endpoint.provider,
                    &endpoint.model,
                    e.class,
                    Instant::now(),
                );
                (e.status, e.class, Some(e.message.clone()), e.usage)
            }
        };
        crate::telemetry::AttemptEnded {
            pipeline: &self.pipeline,
            stage: &self.stage.name,
            provider: &endpoint.provider,
            model: &endpoint.model,
            class: class.as_str(),
            duration: elapsed,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micro_usd: cost(endpoint, usage).0,
        }
        .emit();
        let key_label = (permit.secret.is_some()).then(|| permit.key_label.clone());
        if let Some(t) = &run.tenant {
            self.providers
                .spend
                .add(t, cost(endpoint, usage), crate::envelope::now());
        }
        run.push(
            endpoint,
            status,
            class,
            error,
            elapsed.as_millis() as u64,
            usage,
            repair,
            key_label,
            permit.tenant_key,
        );
        let key = permit.key.clone();
        drop(permit);
        result.map_err(|e| (e, key))
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

    fn judge(&self, output: Value) -> Outcome {
        let confidence = gate::confidence(&self.stage.gate, &output);
        match gate::judge(&self.stage.gate, &output, self.next.is_some()) {
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

/// What every attempt of one job in one stage shares.
#[derive(Clone, Copy)]
struct JobRequest<'a> {
    metadata: &'a std::collections::BTreeMap<String, String>,
    messages: &'a [Message],
    needs: &'a Needs,
    seed: u64,
    tokens: u32,
    choice: KeyChoice<'a>,
}

/// How trying a list of models ended.
enum Attempted {
    /// With a decision.
    Done(Outcome),
    /// A provider refused the content.
    ContentRefused(String),
    /// Every candidate failed or was skipped; notes say why.
    Exhausted(Vec<String>),
}

/// The attempts of one job in one stage, numbered `job/stage/n`.
struct Attempts {
    prefix: String,
    stage: String,
    list: Vec<Attempt>,
    tenant: Option<String>,
}

impl Attempts {
    fn new(job: &Intake, stage: &str) -> Self {
        Self {
            prefix: format!("{}/{}", job.job_id, stage),
            stage: stage.to_string(),
            list: Vec::new(),
            tenant: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        endpoint: &Endpoint,
        status: Option<u16>,
        class: AttemptClass,
        error: Option<String>,
        latency_ms: u64,
        usage: Usage,
        repair: bool,
        key: Option<String>,
        tenant_key: bool,
    ) {
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
    }

    #[test]
    fn repair_prompt_lists_errors() {
        let p = repair_prompt(&["/category: bad".into()]);
        assert!(p.contains("- /category: bad"));
    }
}
