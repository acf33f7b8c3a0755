//! Running one job through one stage: render the prompt, call the route's candidates in order,
//! parse and validate the answer against the output schema, re-ask once with the validator's
//! errors if it is invalid, then let the gate decide. Returns an outcome and every attempt; it
//! publishes nothing (that is the consumer's job, after which offsets may move).

use std::sync::Arc;
use std::time::Instant;

use jsonschema::Validator;
use serde_json::Value;

use crate::config::{Endpoint, Stage};
use crate::envelope::{
    Attempt, AttemptClass, DeadLetterReason, EscalationReason, EscalationStep, Intake,
    validation_errors,
};
use crate::gate::{self, Verdict};
use crate::money::MicroUsd;
use crate::prompt::Prompts;
use crate::provider::{ChatRequest, Completion, Message, ProviderError, ProviderSet, Role, Usage};

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
    /// The next stage's name, if any.
    pub next: Option<String>,
    prompts: Prompts,
    validator: Validator,
    schema_text: String,
    providers: Arc<ProviderSet>,
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
        Ok(Self {
            stage,
            next,
            prompts,
            validator,
            schema_text,
            providers,
        })
    }

    /// Runs one job. `history` is the escalation trail so far (empty at the first stage).
    pub async fn run(&self, job: &Intake, history: &[EscalationStep]) -> StageRun {
        let mut run = Attempts::new(job, &self.stage.name);
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

        let mut invalid_requests = 0;
        for endpoint in crate::route::candidates(&self.stage) {
            let completion = match self.call(endpoint, &messages, false, &mut run).await {
                Ok(c) => c,
                Err(e) => match e.class {
                    AttemptClass::InvalidRequest => {
                        invalid_requests += 1;
                        if invalid_requests >= 2 {
                            return run.finish(Outcome::DeadLetter {
                                reason: DeadLetterReason::InvalidRequest,
                                detail: format!(
                                    "two endpoints refused the request as invalid; last: {}",
                                    e.message
                                ),
                            });
                        }
                        continue;
                    }
                    AttemptClass::ContentPolicy => {
                        return run.finish(Outcome::DeadLetter {
                            reason: DeadLetterReason::ContentPolicy,
                            detail: e.message,
                        });
                    }
                    _ => continue,
                },
            };
            let errors = match self.check(&completion.content) {
                Ok(output) => return run.finish(self.judge(output)),
                Err(errors) => errors,
            };
            run.mark_last_schema_invalid(&errors);
            // One repair re-ask at the same endpoint, carrying the validator's errors.
            let mut repair = messages.clone();
            repair.push(Message {
                role: Role::Assistant,
                content: completion.content.clone(),
            });
            repair.push(Message {
                role: Role::User,
                content: repair_prompt(&errors),
            });
            match self.call(endpoint, &repair, true, &mut run).await {
                Ok(second) => match self.check(&second.content) {
                    Ok(output) => return run.finish(self.judge(output)),
                    Err(errors) => {
                        run.mark_last_schema_invalid(&errors);
                        let output = parse_json(&second.content).unwrap_or(Value::Null);
                        return run.finish(self.schema_invalid(errors, output));
                    }
                },
                // The repair call itself failed: try the next candidate afresh.
                Err(_) => continue,
            }
        }
        let detail = run.exhausted_detail();
        run.finish(Outcome::DeadLetter {
            reason: DeadLetterReason::ProviderExhausted,
            detail,
        })
    }

    async fn call(
        &self,
        endpoint: &Endpoint,
        messages: &[Message],
        repair: bool,
        run: &mut Attempts,
    ) -> Result<Completion, ProviderError> {
        let request = ChatRequest {
            model: endpoint.model_id.clone(),
            messages: messages.to_vec(),
            json_schema: Some((
                schema_name(&self.stage.name),
                self.stage.output_schema.clone(),
            )),
            native_schema: endpoint.json_schema,
            max_tokens: self.stage.route.max_tokens,
            temperature: self.stage.route.temperature,
            timeout: self.stage.route.timeout,
        };
        let started = Instant::now();
        let result = self.providers.call(&endpoint.provider, &request).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let (status, class, error, usage) = match &result {
            Ok(c) => (Some(c.status), AttemptClass::Ok, None, c.usage),
            Err(e) => (e.status, e.class, Some(e.message.clone()), e.usage),
        };
        run.push(endpoint, status, class, error, latency_ms, usage, repair);
        result
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

/// The attempts of one job in one stage, numbered `job/stage/n`.
struct Attempts {
    prefix: String,
    stage: String,
    list: Vec<Attempt>,
}

impl Attempts {
    fn new(job: &Intake, stage: &str) -> Self {
        Self {
            prefix: format!("{}/{}", job.job_id, stage),
            stage: stage.to_string(),
            list: Vec::new(),
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
        });
    }

    fn mark_last_schema_invalid(&mut self, errors: &[String]) {
        if let Some(a) = self.list.last_mut() {
            a.class = AttemptClass::SchemaInvalid;
            a.error = Some(errors.join("; "));
        }
    }

    fn exhausted_detail(&self) -> String {
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
        format!(
            "every candidate failed ({}); replay the job once the providers recover",
            tried.join(", ")
        )
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
        };
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 400,
            reasoning_tokens: 0,
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
