//! Composing what a job leaves behind, from typed outcomes: the result, the escalation to the
//! next stage, or the dead letter — every dead letter through one builder, [`Composer::dead_letter`]
//! — plus the ledger records of the job's attempts and its final outcome. Outgoing envelopes are
//! checked against their schemas; one that breaks its schema (a bug) becomes a dead letter so the
//! job is not lost. Pure: nothing here talks to Kafka.

use serde::Serialize;
use serde_json::Value;

use crate::config::Pipeline;
use crate::envelope::{
    Attempt, DeadLetter, DeadLetterReason, Escalation, EscalationReason, EscalationStep, Intake,
    JobEnd, JobResult, Original, Schemas, Source, now, validation_errors,
};
use crate::ids::{StageName, TenantId};
use crate::ledger::{LedgerAttempt, LedgerJob, LedgerRecord};
use crate::output::Envelope;
use crate::stage::Outcome;

/// The largest excerpt of the original message a dead letter keeps when the whole message may
/// be what the broker refused; the source position finds the rest.
pub const REFUSED_EXCERPT_BYTES: usize = 16 * 1024;

/// The excerpt of the smallest dead letter, the last resort before a worker stops.
pub const MINIMAL_EXCERPT_BYTES: usize = 256;

/// Composes the envelopes of one stage of one pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Composer<'a> {
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// The stage whose worker received the message.
    pub stage: &'a str,
    /// Envelope schemas.
    pub schemas: &'a Schemas,
}

/// A message as it was received: where from, and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic, partition, offset and key.
    pub source: &'a Source,
    /// The raw value.
    pub payload: &'a [u8],
}

/// A job's envelopes and how it left the stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Composed {
    /// Result, escalation or dead letter, then the ledger records.
    pub envelopes: Vec<Envelope>,
    /// How the job left.
    pub end: JobEnd,
}

/// What a stage decided for a job, with what came with it.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// The stage that decided (with ordering, a later stage run inline).
    pub stage: &'a str,
    /// The decision.
    pub outcome: Outcome,
    /// The escalation trail (the job's, plus inline escalations).
    pub history: Vec<EscalationStep>,
    /// Attempts of earlier stages, as the job brought them.
    pub prior: Vec<Attempt>,
    /// Attempts made in this worker.
    pub this_stage: Vec<Attempt>,
}

/// What went wrong, for the dead-letter builder.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The reason class.
    pub reason: DeadLetterReason,
    /// Details for a person.
    pub detail: String,
    /// The stage where the job failed.
    pub stage: StageName,
    /// The escalation trail.
    pub escalations: Vec<EscalationStep>,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
}

impl Composer<'_> {
    /// The one dead-letter builder. With the decoded `job`, the dead letter carries the job
    /// itself (so a replay can send it straight back) and its redrive count; without one, the
    /// original bytes (cut to `excerpt` bytes when given) and any job id readable from them.
    pub fn dead_letter(
        &self,
        input: Input<'_>,
        job: Option<&Intake>,
        failure: Failure,
        excerpt: Option<usize>,
    ) -> DeadLetter {
        let original = match job {
            Some(j) => Original::Json(serde_json::to_value(j).unwrap_or(Value::Null)),
            None => {
                let end = excerpt.map_or(input.payload.len(), |n| n.min(input.payload.len()));
                Original::from_bytes(&input.payload[..end])
            }
        };
        DeadLetter {
            job_id: job
                .map(|j| j.job_id.clone())
                .or_else(|| crate::envelope::job_id_hint(input.payload)),
            tenant: job.map(|j| j.tenant.clone()),
            pipeline: self.pipeline.name.clone(),
            stage: failure.stage,
            reason: failure.reason,
            detail: failure.detail,
            original,
            source: input.source.clone(),
            attempts: failure.attempts,
            escalations: failure.escalations,
            redrive_count: job.map_or(0, |j| j.redrive_count),
            replayable: failure.reason.replayable(),
            failed_at: now(),
        }
    }

    /// A failure at this composer's stage with nothing attempted.
    pub fn failure(&self, reason: DeadLetterReason, detail: String) -> Failure {
        Failure {
            reason,
            detail,
            stage: self.stage.into(),
            escalations: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// What a message that is not a job for this stage leaves: a dead letter and its ledger
    /// record.
    pub fn undecodable(&self, input: Input<'_>, detail: &str) -> Composed {
        let failure = self.failure(
            DeadLetterReason::InvalidIntake,
            format!(
                "{detail} (topic {} partition {} offset {})",
                input.source.topic, input.source.partition, input.source.offset
            ),
        );
        let dl = self.dead_letter(input, None, failure, None);
        self.finish(input, None, Vec::new(), Ended::DeadLetter(Box::new(dl)))
    }

    /// What a message whose job task panicked leaves: a dead letter (`internal_error`) with a
    /// bounded excerpt of the message, and its ledger record.
    pub fn internal_error(
        &self,
        input: Input<'_>,
        job: Option<&Intake>,
        history: Vec<EscalationStep>,
        what: &str,
    ) -> Composed {
        let what: String = what.chars().take(500).collect();
        let mut failure = self.failure(
            DeadLetterReason::InternalError,
            format!(
                "the stage failed on this message ({what}) at topic {} partition {} offset {}; it is kept here, not retried. Please report it",
                input.source.topic, input.source.partition, input.source.offset
            ),
        );
        failure.escalations = history;
        // With the decoded job, the dead letter carries it whole (tenant, redrive count, a
        // replayable original); without, a bounded excerpt.
        let excerpt = job.is_none().then_some(REFUSED_EXCERPT_BYTES);
        let dl = self.dead_letter(input, job, failure, excerpt);
        self.finish(input, job, Vec::new(), Ended::DeadLetter(Box::new(dl)))
    }

    /// What a stage's decision for `job` leaves.
    pub fn outcome(&self, input: Input<'_>, job: &Intake, decision: Decision<'_>) -> Composed {
        let Decision {
            stage,
            outcome,
            history,
            prior,
            this_stage,
        } = decision;
        let mut attempts = prior;
        attempts.extend(this_stage.iter().cloned());
        let ended = match outcome {
            Outcome::Accept {
                output,
                confidence,
                review,
            } => {
                let shadow = if review.is_none() {
                    self.audit_copy(job, stage, &output, confidence, &history, &attempts)
                } else {
                    None
                };
                let completed_at = now();
                let latency_ms = (completed_at - job.created_at).whole_milliseconds().max(0) as u64;
                let result = Box::new(JobResult {
                    job_id: job.job_id.clone(),
                    tenant: job.tenant.clone(),
                    pipeline: self.pipeline.name.clone(),
                    stage: stage.into(),
                    output,
                    confidence,
                    needs_review: review.is_some(),
                    review_reason: review,
                    cost_micro_usd: attempts.iter().map(|a| a.cost_micro_usd).sum(),
                    escalations: history,
                    attempts,
                    created_at: job.created_at,
                    completed_at,
                    latency_ms,
                    metadata: job.metadata.clone(),
                });
                Ended::Result(result, shadow)
            }
            Outcome::Escalate(step) => {
                let to = step.to_stage.clone();
                match self.pipeline.stages.iter().find(|s| s.name == to) {
                    Some(next) => {
                        let mut escalations = history;
                        escalations.push(step);
                        Ended::Escalated {
                            topic: next.input_topic.clone(),
                            escalation: Box::new(Escalation {
                                job: job.clone(),
                                to_stage: to,
                                escalations,
                                attempts,
                            }),
                        }
                    }
                    // Cannot happen with a loaded pipeline; dead-letter rather than lose the job.
                    None => Ended::DeadLetter(Box::new(self.dead_letter(
                        input,
                        Some(job),
                        Failure {
                            reason: DeadLetterReason::OutputRejected,
                            detail: format!("escalation target stage `{to}` does not exist"),
                            stage: stage.into(),
                            escalations: history,
                            attempts,
                        },
                        None,
                    ))),
                }
            }
            Outcome::DeadLetter { reason, detail } => {
                Ended::DeadLetter(Box::new(self.dead_letter(
                    input,
                    Some(job),
                    Failure {
                        reason,
                        detail,
                        stage: stage.into(),
                        escalations: history,
                        attempts,
                    },
                    None,
                )))
            }
        };
        self.finish(input, Some(job), this_stage, ended)
    }

    /// The dead letter for a message whose output the broker refused for good: a bounded
    /// excerpt, since the whole input may be what made the output too large.
    ///
    /// When what the broker refused was itself a dead letter (`refused`), its reason is kept —
    /// the job failed for that reason, its dead letter was only too large to publish whole.
    pub fn refused(&self, input: Input<'_>, why: &str, refused: &Envelope) -> Envelope {
        self.refused_with(input, why, refused, REFUSED_EXCERPT_BYTES)
    }

    /// The smallest dead letter of a message: its position, the reason and a short excerpt,
    /// for when even [`Composer::refused`]'s was refused.
    pub fn minimal_dead_letter(&self, input: Input<'_>, why: &str, refused: &Envelope) -> Envelope {
        self.refused_with(input, why, refused, MINIMAL_EXCERPT_BYTES)
    }

    fn refused_with(
        &self,
        input: Input<'_>,
        why: &str,
        refused: &Envelope,
        excerpt: usize,
    ) -> Envelope {
        let why: String = why.chars().take(500).collect();
        let position = format!(
            "input of {} bytes at {}/{}/{}",
            input.payload.len(),
            input.source.topic,
            input.source.partition,
            input.source.offset
        );
        // A dead letter too large for the broker: the job's own reason stands.
        let original = (refused.topic == self.pipeline.topics.dlq)
            .then(|| serde_json::from_slice::<DeadLetter>(&refused.payload).ok())
            .flatten();
        let failure = match original {
            Some(d) => {
                let detail: String = d.detail.chars().take(1000).collect();
                let mut f = self.failure(
                    d.reason,
                    format!(
                        "{detail} (its dead letter was refused by the broker — {why} — so it is cut to an excerpt of the {position})"
                    ),
                );
                f.stage = d.stage;
                f
            }
            None => self.failure(
                DeadLetterReason::OutputRejected,
                format!("{why}; the stage's output could not be published ({position})"),
            ),
        };
        let dl = self.dead_letter(input, None, failure, Some(excerpt));
        self.dead_letter_envelope(input, &dl)
    }

    /// Envelopes for how the job ended, each checked against its schema, then the ledger.
    fn finish(
        &self,
        input: Input<'_>,
        job: Option<&Intake>,
        this_stage: Vec<Attempt>,
        ended: Ended,
    ) -> Composed {
        let key = input
            .source
            .key
            .clone()
            .or_else(|| job.map(|j| j.job_id.to_string()));
        let mut shadow_env = None;
        let (envelope, end, record) = match ended {
            Ended::Result(result, shadow) => {
                // The audit copy rides with the result: both are published before the offset
                // moves. One that breaks its schema (a bug) is dropped, never the job.
                if let Some((topic, copy)) = shadow {
                    let env = envelope(
                        &topic,
                        key.clone().unwrap_or_else(|| copy.job.job_id.to_string()),
                        &*copy,
                        &copy.job.job_id,
                        self.stage_of(&copy),
                        Some(EscalationReason::Audit.as_str().to_string()),
                    );
                    let errors = serde_json::to_value(&*copy)
                        .map(|v| validation_errors(&self.schemas.escalation, &v, 4))
                        .unwrap_or_else(|e| vec![e.to_string()]);
                    if errors.is_empty() {
                        shadow_env = Some(env);
                    } else {
                        tracing::error!(
                            ?errors,
                            "audit copy breaks the escalation schema (a bug); not audited"
                        );
                    }
                }
                let env = envelope(
                    &self.pipeline.topics.results,
                    key.unwrap_or_else(|| result.job_id.to_string()),
                    &*result,
                    &result.job_id,
                    &result.stage,
                    None,
                );
                match self.checked(input, &self.schemas.result, env, &*result) {
                    Ok(env) => (env, JobEnd::Result, Some(LedgerJob::result(&result))),
                    Err(dl) => {
                        // No result, so nothing to audit.
                        shadow_env = None;
                        (dl.0, JobEnd::DeadLetter, Some(*dl.1))
                    }
                }
            }
            Ended::Escalated { topic, escalation } => {
                let reason = escalation
                    .escalations
                    .last()
                    .map(|s| s.reason.as_str().to_string());
                let env = envelope(
                    &topic,
                    key.unwrap_or_else(|| escalation.job.job_id.to_string()),
                    &*escalation,
                    &escalation.job.job_id,
                    self.stage_of(&escalation),
                    reason,
                );
                match self.checked(input, &self.schemas.escalation, env, &*escalation) {
                    Ok(env) => (env, JobEnd::Escalated, None),
                    Err(dl) => (dl.0, JobEnd::DeadLetter, Some(*dl.1)),
                }
            }
            Ended::DeadLetter(dl) => (
                self.dead_letter_envelope(input, &dl),
                JobEnd::DeadLetter,
                Some(LedgerJob::dead_letter(&dl)),
            ),
        };
        let mut envelopes = vec![envelope];
        envelopes.extend(shadow_env);
        envelopes.extend(self.ledger(input, job, this_stage, record, Vec::new()));
        Composed { envelopes, end }
    }

    /// The audit copy of a job `stage` accepted, when its gate audits and the job is in the
    /// sample: an escalation to the next stage whose last step says `audit`.
    fn audit_copy(
        &self,
        job: &Intake,
        stage: &str,
        output: &Value,
        confidence: Option<f64>,
        history: &[EscalationStep],
        attempts: &[Attempt],
    ) -> Option<(String, Box<Escalation>)> {
        let at = self.pipeline.stages.iter().position(|s| s.name == stage)?;
        let this = &self.pipeline.stages[at];
        let next = self.pipeline.stages.get(at + 1)?;
        let rate = this.gate.audit?;
        let seed = crate::route::job_seed(&format!("{}/{}", job.job_id, stage));
        if !crate::audit::sampled(seed, rate) {
            return None;
        }
        let mut escalations = history.to_vec();
        escalations.push(EscalationStep {
            from_stage: this.name.clone(),
            to_stage: next.name.clone(),
            reason: EscalationReason::Audit,
            detail: format!(
                "audit sample ({:.0}% of accepted jobs); the result is already published",
                rate * 100.0
            ),
            output: output.clone(),
            confidence,
        });
        Some((
            next.input_topic.clone(),
            Box::new(Escalation {
                job: job.clone(),
                to_stage: next.name.clone(),
                escalations,
                attempts: attempts.to_vec(),
            }),
        ))
    }

    /// What an audit copy leaves once the next stage re-did it: only ledger records (its
    /// attempts, the audit, any threshold move). Nothing is published for the job again.
    pub fn audited(
        &self,
        input: Input<'_>,
        job: &Intake,
        this_stage: Vec<Attempt>,
        records: Vec<LedgerRecord>,
    ) -> Composed {
        Composed {
            envelopes: self.ledger(input, Some(job), this_stage, None, records),
            end: JobEnd::Audited,
        }
    }

    /// The stage an escalation leaves from.
    fn stage_of<'e>(&'e self, e: &'e Escalation) -> &'e str {
        e.escalations
            .last()
            .map_or(self.stage, |s| s.from_stage.as_str())
    }

    /// The ledger's records of one message: this stage's attempts, and the job's final outcome
    /// when this message ended it.
    fn ledger(
        &self,
        input: Input<'_>,
        job: Option<&Intake>,
        attempts: Vec<Attempt>,
        end: Option<LedgerJob>,
        extra: Vec<LedgerRecord>,
    ) -> Vec<Envelope> {
        let at = now();
        let (job_id, tenant) = match job {
            Some(j) => (j.job_id.clone(), j.tenant.clone()),
            None => (
                crate::envelope::job_id_hint(input.payload).unwrap_or_else(|| {
                    format!(
                        "{}/{}/{}",
                        input.source.topic, input.source.partition, input.source.offset
                    )
                    .into()
                }),
                TenantId::default(),
            ),
        };
        let mut records: Vec<LedgerRecord> = attempts
            .into_iter()
            .map(|attempt| {
                LedgerRecord::Attempt(LedgerAttempt {
                    job_id: job_id.clone(),
                    tenant: tenant.clone(),
                    pipeline: self.pipeline.name.clone(),
                    at,
                    attempt,
                })
            })
            .collect();
        records.extend(end.map(|mut j| {
            if j.job_id.is_empty() {
                j.job_id = job_id.clone();
            }
            if let Some(job) = job {
                j.redrive_count = job.redrive_count;
            }
            j.at = at;
            LedgerRecord::Job(j)
        }));
        records.extend(extra);
        records
            .iter()
            .map(|r| Envelope {
                topic: self.pipeline.topics.ledger.clone(),
                key: job_id.to_string(),
                payload: serde_json::to_vec(r).unwrap_or_default(),
                headers: vec![("switchyard.job_id", job_id.to_string())],
            })
            .collect()
    }

    /// A dead letter as an envelope: keyed by the message's key, else the job id, else its
    /// position.
    fn dead_letter_envelope(&self, input: Input<'_>, dl: &DeadLetter) -> Envelope {
        let key = input
            .source
            .key
            .clone()
            .or_else(|| dl.job_id.as_ref().map(ToString::to_string))
            .unwrap_or_else(|| format!("{}-{}", input.source.partition, input.source.offset));
        let mut env = envelope(
            &self.pipeline.topics.dlq,
            key,
            dl,
            dl.job_id.as_deref().unwrap_or(""),
            &dl.stage,
            Some(dl.reason.as_str().to_string()),
        );
        if let Ok(v) = serde_json::to_value(dl) {
            let errors = validation_errors(&self.schemas.dead_letter, &v, 4);
            if !errors.is_empty() {
                tracing::error!(
                    ?errors,
                    "dead letter does not match schemas/dead-letter.schema.json (a bug); publishing anyway so nothing is lost"
                );
            }
        }
        env.headers
            .push(("switchyard.replayable", dl.replayable.to_string()));
        env
    }

    /// Validates an outgoing envelope; one that breaks its schema (a bug) becomes a dead letter
    /// with the validator's errors, so the job is not lost.
    fn checked<T: Serialize>(
        &self,
        input: Input<'_>,
        validator: &jsonschema::Validator,
        env: Envelope,
        body: &T,
    ) -> Result<Envelope, (Envelope, Box<LedgerJob>)> {
        let errors = serde_json::to_value(body)
            .map(|v| validation_errors(validator, &v, 4))
            .unwrap_or_else(|e| vec![e.to_string()]);
        if errors.is_empty() {
            return Ok(env);
        }
        tracing::error!(?errors, topic = %env.topic, "outgoing envelope breaks its schema (a bug); dead-lettering the job");
        let failure = self.failure(
            DeadLetterReason::OutputRejected,
            format!(
                "outgoing envelope for {} broke its schema: {}",
                env.topic,
                errors.join("; ")
            ),
        );
        let dl = self.dead_letter(input, None, failure, None);
        Err((
            self.dead_letter_envelope(input, &dl),
            Box::new(LedgerJob::dead_letter(&dl)),
        ))
    }
}

/// How a job ended, before it is put on the wire.
enum Ended {
    /// A result, and the audit copy for the next stage when the job is in the audit sample.
    Result(Box<JobResult>, Option<(String, Box<Escalation>)>),
    Escalated {
        topic: String,
        escalation: Box<Escalation>,
    },
    DeadLetter(Box<DeadLetter>),
}

/// An envelope with the routing headers every output carries.
fn envelope<T: Serialize>(
    topic: &str,
    key: String,
    body: &T,
    job_id: &str,
    stage: &str,
    reason: Option<String>,
) -> Envelope {
    let mut headers = vec![
        ("switchyard.job_id", job_id.to_string()),
        ("switchyard.stage", stage.to_string()),
    ];
    if let Some(r) = reason {
        headers.push(("switchyard.reason", r));
    }
    Envelope {
        topic: topic.to_string(),
        key,
        payload: serde_json::to_vec(body).unwrap_or_default(),
        headers,
    }
}
