//! Decoding a message once into a typed [`Job`]: UTF-8, JSON, the envelope's schema (intake at
//! the first stage, escalation later), addressed to this pipeline and stage. Anything else is a
//! [`DecodeError`] whose text says what was wrong and what to do; the caller dead-letters it.

use serde_json::Value;

use crate::envelope::{Attempt, Escalation, EscalationStep, Intake, Schemas, validation_errors};

pub use crate::envelope::job_id_hint;

/// A job as a stage receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The intake job.
    pub intake: Intake,
    /// The escalation trail so far (empty at the first stage).
    pub history: Vec<EscalationStep>,
    /// Attempts of earlier stages.
    pub prior: Vec<Attempt>,
}

/// Why a message is not a job for this stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Who says which tenant an intake message belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantOrigin {
    /// The job's own `tenant` field (`tenant_from: payload`).
    #[default]
    Payload,
    /// Something the broker authenticates: the topic it arrived on, or a bridge's header.
    Bound {
        /// The tenant.
        tenant: String,
        /// What bound it, for error texts (e.g. "its intake topic `x.intake.acme`").
        by: String,
    },
    /// The pipeline binds tenants by header and this message has no usable one.
    Unbound {
        /// Why, and what to do.
        why: String,
    },
}

/// Where a message is being decoded: which stage of which pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Decoder<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The stage's name.
    pub stage: &'a str,
    /// Whether this is the first stage (reads intake jobs, not escalations).
    pub first: bool,
    /// Envelope schemas.
    pub schemas: &'a Schemas,
}

impl Decoder<'_> {
    /// Decodes one message's value, its tenant taken from the job.
    pub fn decode(&self, payload: &[u8]) -> Result<Job, DecodeError> {
        self.decode_from(payload, &TenantOrigin::Payload)
    }

    /// Decodes one message's value. At the first stage, a tenant bound by `origin` is the
    /// job's tenant: a job that names another is refused, one that names none gets it.
    pub fn decode_from(&self, payload: &[u8], origin: &TenantOrigin) -> Result<Job, DecodeError> {
        let fail = |s: String| Err(DecodeError(s));
        if payload.is_empty() {
            return fail("empty message: a job must be a JSON object".into());
        }
        let text = match std::str::from_utf8(payload) {
            Ok(t) => t,
            Err(e) => {
                return fail(format!(
                    "message is not UTF-8 ({e}); a job must be UTF-8 JSON"
                ));
            }
        };
        let mut value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return fail(format!("message is not JSON: {e}")),
        };
        if self.first {
            match origin {
                TenantOrigin::Payload => {}
                TenantOrigin::Unbound { why } => return fail(why.clone()),
                TenantOrigin::Bound { tenant, by } => match value.get("tenant") {
                    None if value.is_object() => {
                        value["tenant"] = Value::String(tenant.clone());
                    }
                    Some(Value::String(claimed)) if claimed == tenant => {}
                    Some(claimed) => {
                        let claimed: String = claimed.to_string().chars().take(100).collect();
                        return fail(format!(
                            "job claims tenant {claimed}, but {by} binds it to tenant `{tenant}`; produce each tenant's jobs where its own tenant is bound (or leave `tenant` out)"
                        ));
                    }
                    None => {}
                },
            }
        }
        let (validator, what, file) = if self.first {
            (&self.schemas.intake, "intake job", "intake")
        } else {
            (&self.schemas.escalation, "escalation", "escalation")
        };
        let errors = validation_errors(validator, &value, 8);
        if !errors.is_empty() {
            return fail(format!(
                "not a valid {what} (schemas/{file}.schema.json): {}",
                errors.join("; ")
            ));
        }
        let job = if self.first {
            match serde_json::from_value::<Intake>(value) {
                Ok(intake) => Job {
                    intake,
                    history: Vec::new(),
                    prior: Vec::new(),
                },
                Err(e) => return fail(format!("not a valid intake job: {e}")),
            }
        } else {
            let esc: Escalation = match serde_json::from_value(value) {
                Ok(e) => e,
                Err(e) => return fail(format!("not a valid escalation: {e}")),
            };
            if esc.to_stage != self.stage {
                return fail(format!(
                    "escalation is addressed to stage `{}`, but this is stage `{}`",
                    esc.to_stage, self.stage
                ));
            }
            Job {
                intake: esc.job,
                history: esc.escalations,
                prior: esc.attempts,
            }
        };
        if job.intake.pipeline != self.pipeline {
            return fail(format!(
                "job names pipeline `{}`, but this topic belongs to pipeline `{}`; send it to that pipeline's intake topic",
                job.intake.pipeline, self.pipeline
            ));
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(schemas: &Schemas, first: bool) -> Decoder<'_> {
        Decoder {
            pipeline: "support-triage",
            stage: if first { "triage" } else { "resolve" },
            first,
            schemas,
        }
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let schemas = Schemas::load().unwrap();
        let d = decoder(&schemas, true);
        let cases: [(&[u8], &str); 4] = [
            (b"", "empty message"),
            (b"\xff\xfe", "not UTF-8"),
            (b"{not json", "not JSON"),
            (br#"{"job_id": 5}"#, "not a valid intake job"),
        ];
        for (payload, expected) in cases {
            let e = d.decode(payload).unwrap_err().to_string();
            assert!(e.contains(expected), "{payload:?}: {e}");
        }
    }

    #[test]
    fn a_job_for_another_pipeline_is_refused_and_a_good_one_decodes() {
        let schemas = Schemas::load().unwrap();
        let d = decoder(&schemas, true);
        let job = |pipeline: &str| {
            serde_json::json!({
                "job_id": "j1", "tenant": "acme", "pipeline": pipeline,
                "payload": {"text": "hi"}, "created_at": "2026-01-01T00:00:00Z"
            })
            .to_string()
        };
        let e = d.decode(job("other").as_bytes()).unwrap_err().to_string();
        assert!(e.contains("pipeline `other`"), "{e}");
        let ok = d.decode(job("support-triage").as_bytes()).unwrap();
        assert_eq!(ok.intake.job_id, "j1");
        assert!(ok.history.is_empty());
        assert_eq!(job_id_hint(job("x").as_bytes()).as_deref(), Some("j1"));
    }
}
