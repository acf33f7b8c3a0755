//! Prompt templates. A stage's prompts are minijinja templates rendered with the job
//! (`job.payload.…`), the escalation history (`escalations`, `last_escalation`) and the output
//! schema (`output_schema`, as JSON text). Undefined variables are errors, so a template that
//! names a field the job lacks fails loudly instead of sending an empty prompt.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::envelope::{EscalationStep, Intake};

/// The compiled prompts of one stage.
#[derive(Debug)]
pub struct Prompts {
    env: Environment<'static>,
    has_system: bool,
}

/// What a template can see.
#[derive(Debug, Serialize)]
struct Context<'a> {
    job: &'a Intake,
    escalations: &'a [EscalationStep],
    last_escalation: Option<&'a EscalationStep>,
    output_schema: &'a str,
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// System message, if the stage has one.
    pub system: Option<String>,
    /// User message.
    pub user: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Checks that a template compiles.
pub fn check(source: &str) -> Result<(), minijinja::Error> {
    environment().template_from_str(source).map(|_| ())
}

impl Prompts {
    /// Compiles a stage's templates.
    pub fn new(system: Option<&str>, user: &str) -> Result<Self, minijinja::Error> {
        let mut env = environment();
        env.add_template_owned("user", user.to_string())?;
        if let Some(s) = system {
            env.add_template_owned("system", s.to_string())?;
        }
        Ok(Self {
            env,
            has_system: system.is_some(),
        })
    }

    /// Renders both messages for one job.
    pub fn render(
        &self,
        job: &Intake,
        escalations: &[EscalationStep],
        output_schema: &str,
    ) -> Result<Rendered, minijinja::Error> {
        // Converted once for both templates.
        let ctx = minijinja::Value::from_serialize(Context {
            job,
            escalations,
            last_escalation: escalations.last(),
            output_schema,
        });
        let user = self.env.get_template("user")?.render(&ctx)?;
        let system = if self.has_system {
            Some(self.env.get_template("system")?.render(&ctx)?)
        } else {
            None
        };
        Ok(Rendered { system, user })
    }

    /// The variables the templates use (as dotted paths, e.g. `job.payload.subject`) that this
    /// job's context lacks: what a strict render fails on, by name.
    pub fn missing_variables(
        &self,
        job: &Intake,
        escalations: &[EscalationStep],
        output_schema: &str,
    ) -> Vec<String> {
        let ctx = serde_json::to_value(Context {
            job,
            escalations,
            last_escalation: escalations.last(),
            output_schema,
        })
        .unwrap_or_default();
        let names = ["user", "system"];
        let mut out: Vec<String> = names
            .iter()
            .filter_map(|n| self.env.get_template(n).ok())
            .flat_map(|t| t.undeclared_variables(true))
            .filter(|path| {
                let mut at = &ctx;
                !path.split('.').all(|key| match at.get(key) {
                    Some(v) => {
                        at = v;
                        true
                    }
                    None => false,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Intake {
        serde_json::from_value(json!({
            "job_id": "j1", "tenant": "t", "pipeline": "p",
            "payload": {"text": "my card is lost"},
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn renders_job_fields_and_refuses_unknown_ones() {
        let p = Prompts::new(
            Some("sys {{ job.tenant }}"),
            "Ticket: {{ job.payload.text }}",
        )
        .unwrap();
        let r = p.render(&job(), &[], "{}").unwrap();
        assert_eq!(r.user, "Ticket: my card is lost");
        assert_eq!(r.system.as_deref(), Some("sys t"));
        let bad = Prompts::new(None, "{{ job.payload.subject }} {{ job.payload.text }}").unwrap();
        assert!(bad.render(&job(), &[], "{}").is_err());
        assert_eq!(
            bad.missing_variables(&job(), &[], "{}"),
            ["job.payload.subject"]
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = check("line one\n{% if %}").unwrap_err();
        assert_eq!(e.line(), Some(2));
    }
}
