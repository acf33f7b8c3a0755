//! The gate: reads a stage's validated output and decides what happens to the job. Pure
//! functions over plain data; no I/O.

use serde_json::Value;

use crate::config::{ConfidenceSource, GateSpec, LastStagePolicy, Rule};
use crate::envelope::EscalationReason;

/// The gate's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Publish the output as the job's result.
    Accept,
    /// Hand the job to the next stage.
    Escalate {
        /// Why.
        reason: EscalationReason,
        /// Which rule or threshold.
        detail: String,
    },
    /// Last stage, gate unsatisfied: publish flagged for a person.
    Review {
        /// Why.
        detail: String,
    },
    /// Last stage, gate unsatisfied, policy says dead-letter.
    Reject {
        /// Why.
        detail: String,
    },
}

/// What the call showed besides the output itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    /// Probability of the decision's tokens (from logprobs), when the provider gave them.
    pub logprob: Option<f64>,
    /// Whether the local tier's label agrees with the output's decision, when there is one.
    pub agreement: Option<bool>,
}

/// The output's self-reported confidence, if it has one.
pub fn reported(spec: &GateSpec, output: &Value) -> Option<f64> {
    lookup(output, &spec.confidence_field).and_then(Value::as_f64)
}

/// The confidence the gate compares: the lowest of the configured sources that are available,
/// else the reported one.
pub fn confidence(spec: &GateSpec, output: &Value, evidence: &Evidence) -> Option<f64> {
    let available: Vec<f64> = spec
        .confidence_from
        .iter()
        .filter_map(|s| match s {
            ConfidenceSource::Reported => reported(spec, output),
            ConfidenceSource::Logprob => evidence.logprob,
            ConfidenceSource::Agreement => evidence.agreement.map(|a| f64::from(u8::from(a))),
        })
        .collect();
    if available.is_empty() {
        reported(spec, output)
    } else {
        available.into_iter().reduce(f64::min)
    }
}

/// Decides for one output. `has_next` says whether a later stage exists; `threshold` is the
/// confidence threshold in force (`min_confidence`, or where `target_precision` moved it).
pub fn judge(
    spec: &GateSpec,
    threshold: Option<f64>,
    output: &Value,
    has_next: bool,
    evidence: &Evidence,
) -> Verdict {
    let mut unsatisfied: Option<(EscalationReason, String)> = None;
    if let Some(min) = threshold {
        match confidence(spec, output, evidence) {
            Some(c) if c >= min => {}
            Some(c) => {
                unsatisfied = Some((
                    EscalationReason::LowConfidence,
                    format!("confidence {c:.2} is below {min:.2}"),
                ))
            }
            None => {
                unsatisfied = Some((
                    EscalationReason::LowConfidence,
                    format!("output has no numeric `{}`", spec.confidence_field),
                ))
            }
        }
    }
    if unsatisfied.is_none()
        && let Some(rule) = spec.escalate_if.iter().find(|r| matches(r, output))
    {
        unsatisfied = Some((EscalationReason::Rule, describe(rule, output)));
    }
    match unsatisfied {
        None => Verdict::Accept,
        Some((reason, detail)) if has_next => Verdict::Escalate { reason, detail },
        Some((_, detail)) => match spec.at_last_stage {
            LastStagePolicy::Review => Verdict::Review { detail },
            LastStagePolicy::DeadLetter => Verdict::Reject { detail },
        },
    }
}

fn matches(rule: &Rule, output: &Value) -> bool {
    let Some(v) = lookup(output, &rule.field) else {
        return false;
    };
    rule.equals.as_ref().is_some_and(|e| e == v)
        || rule.one_of.as_ref().is_some_and(|list| list.contains(v))
}

fn describe(rule: &Rule, output: &Value) -> String {
    let v = lookup(output, &rule.field).cloned().unwrap_or(Value::Null);
    match (&rule.equals, &rule.one_of) {
        (Some(e), _) if e == &v => format!("rule: {} == {}", rule.field, e),
        _ => format!("rule: {} = {} is in the escalation list", rule.field, v),
    }
}

/// The value at a dotted field path of an output (`category`, `ticket.category`).
pub fn lookup<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(value, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> GateSpec {
        GateSpec {
            confidence_field: "confidence".into(),
            min_confidence: Some(0.7),
            escalate_if: vec![
                Rule {
                    field: "urgency".into(),
                    equals: Some(json!("high")),
                    one_of: None,
                },
                Rule {
                    field: "category".into(),
                    equals: None,
                    one_of: Some(vec![
                        json!("compromised_card"),
                        json!("lost_or_stolen_card"),
                    ]),
                },
            ],
            at_last_stage: LastStagePolicy::Review,
            confidence_from: vec![ConfidenceSource::Reported],
            ..GateSpec::default()
        }
    }

    /// The verdict at the spec's own threshold, with no evidence beyond the output.
    fn verdict(s: &GateSpec, out: &Value, has_next: bool) -> Verdict {
        judge(s, s.min_confidence, out, has_next, &Evidence::default())
    }

    #[test]
    fn confident_and_harmless_is_accepted() {
        let out = json!({"confidence": 0.9, "urgency": "low", "category": "card_arrival"});
        assert_eq!(verdict(&spec(), &out, true), Verdict::Accept);
    }

    #[test]
    fn low_confidence_escalates_with_the_numbers() {
        let out = json!({"confidence": 0.5, "urgency": "low", "category": "x"});
        match verdict(&spec(), &out, true) {
            Verdict::Escalate { reason, detail } => {
                assert_eq!(reason, EscalationReason::LowConfidence);
                assert_eq!(detail, "confidence 0.50 is below 0.70");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn rules_escalate_even_when_confident() {
        let out =
            json!({"confidence": 0.99, "urgency": "normal", "category": "lost_or_stolen_card"});
        assert!(matches!(
            verdict(&spec(), &out, true),
            Verdict::Escalate {
                reason: EscalationReason::Rule,
                ..
            }
        ));
        let out = json!({"confidence": 0.99, "urgency": "high", "category": "x"});
        assert!(matches!(
            verdict(&spec(), &out, true),
            Verdict::Escalate {
                reason: EscalationReason::Rule,
                ..
            }
        ));
    }

    #[test]
    fn last_stage_reviews_or_rejects_by_policy() {
        let out = json!({"confidence": 0.2});
        assert!(matches!(
            verdict(&spec(), &out, false),
            Verdict::Review { .. }
        ));
        let mut s = spec();
        s.at_last_stage = LastStagePolicy::DeadLetter;
        assert!(matches!(verdict(&s, &out, false), Verdict::Reject { .. }));
    }

    #[test]
    fn missing_confidence_is_not_trusted() {
        let out = json!({"urgency": "low"});
        assert!(matches!(
            verdict(&spec(), &out, true),
            Verdict::Escalate { .. }
        ));
        let mut s = spec();
        s.min_confidence = None;
        assert_eq!(verdict(&s, &out, true), Verdict::Accept);
    }

    #[test]
    fn dotted_paths_reach_nested_fields() {
        let out = json!({"customer": {"tier": "gold"}});
        let mut s = spec();
        s.min_confidence = None;
        s.escalate_if = vec![Rule {
            field: "customer.tier".into(),
            equals: Some(json!("gold")),
            one_of: None,
        }];
        assert!(matches!(verdict(&s, &out, true), Verdict::Escalate { .. }));
    }

    #[test]
    fn logprob_and_agreement_evidence_override_a_confident_claim() {
        let mut s = spec();
        s.escalate_if.clear();
        s.confidence_from = vec![ConfidenceSource::Logprob, ConfidenceSource::Agreement];
        let out = json!({"category": "card_arrival", "urgency": "low", "confidence": 0.99});
        // The model says 0.99, its tokens say 0.55: the gate believes the tokens.
        let unsure = Evidence {
            logprob: Some(0.55),
            agreement: None,
        };
        assert_eq!(confidence(&s, &out, &unsure), Some(0.55));
        assert!(matches!(
            judge(&s, s.min_confidence, &out, true, &unsure),
            Verdict::Escalate {
                reason: EscalationReason::LowConfidence,
                ..
            }
        ));
        // Sure tokens, but the local tier disagreed: the lowest source wins.
        let disagreed = Evidence {
            logprob: Some(0.97),
            agreement: Some(false),
        };
        assert_eq!(confidence(&s, &out, &disagreed), Some(0.0));
        let agreed = Evidence {
            logprob: Some(0.97),
            agreement: Some(true),
        };
        assert_eq!(
            judge(&s, s.min_confidence, &out, true, &agreed),
            Verdict::Accept
        );
        // No evidence at all (a provider without logprobs): the reported confidence counts.
        assert_eq!(confidence(&s, &out, &Evidence::default()), Some(0.99));
    }
}
