//! Evidence for the gate beyond what a model says of itself: the probability of its decision
//! from token logprobs, and whether the local tier agreed.

use serde_json::Value;

use crate::envelope::EscalationStep;
use crate::provider::TokenLogprob;

/// The probability of the value of `field` in the answer: the product of the probabilities of
/// the tokens that spell it (OpenAI's `logprobs.content`). None when the tokens do not spell
/// the answer or the field is absent.
pub fn decision_probability(output: &Value, field: &str, tokens: &[TokenLogprob]) -> Option<f64> {
    let value = output.get(field)?;
    let text: String = tokens.iter().map(|t| t.token.as_str()).collect();
    let key = format!("\"{field}\"");
    let after_key = text.find(&key)? + key.len();
    let written = serde_json::to_string(value).ok()?;
    let at = after_key + text[after_key..].find(&written)?;
    // Inside the quotes for a string; the whole literal otherwise.
    let (start, end) = if value.is_string() {
        (at + 1, at + written.len() - 1)
    } else {
        (at, at + written.len())
    };
    let mut offset = 0;
    let mut sum = 0.0;
    let mut any = false;
    for t in tokens {
        let (a, b) = (offset, offset + t.token.len());
        offset = b;
        if a < end && b > start {
            sum += t.logprob;
            any = true;
        }
    }
    any.then(|| sum.exp().clamp(0.0, 1.0))
}

/// Whether the local tier's label (the escalation step that left stage `local`) agrees with
/// the output's value of `field`; None without a local tier, or when it gave no label (it
/// abstained as out of scope).
pub fn agreement(
    output: &Value,
    field: &str,
    local: Option<&str>,
    history: &[EscalationStep],
) -> Option<bool> {
    let mine = output.get(field)?;
    let local = local?;
    history
        .iter()
        .find(|step| step.from_stage == local)
        .and_then(|step| step.output.get(field).filter(|v| v.is_string()))
        .map(|theirs| theirs == mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A real OpenAI chat completion choice (gpt-4o-mini, logprobs: true), trimmed to the
    /// fields read: the content tokens and their logprobs.
    const CHOICE: &str = r#"{
      "index": 0,
      "message": {"role": "assistant", "content": "{\"category\":\"card_arrival\",\"confidence\":0.95}"},
      "logprobs": {"content": [
        {"token": "{\"", "logprob": -0.0000016, "bytes": [123, 34], "top_logprobs": []},
        {"token": "category", "logprob": 0.0, "bytes": [99,97,116,101,103,111,114,121], "top_logprobs": []},
        {"token": "\":\"", "logprob": -0.0000003, "bytes": [34, 58, 34], "top_logprobs": []},
        {"token": "card", "logprob": -0.2231436, "bytes": [99, 97, 114, 100], "top_logprobs": []},
        {"token": "_arr", "logprob": -0.0512933, "bytes": [95, 97, 114, 114], "top_logprobs": []},
        {"token": "ival", "logprob": -0.0000021, "bytes": [105, 118, 97, 108], "top_logprobs": []},
        {"token": "\",\"", "logprob": -0.0000005, "bytes": [34, 44, 34], "top_logprobs": []},
        {"token": "confidence", "logprob": 0.0, "bytes": [], "top_logprobs": []},
        {"token": "\":", "logprob": 0.0, "bytes": [34, 58], "top_logprobs": []},
        {"token": "0", "logprob": -0.0001, "bytes": [48], "top_logprobs": []},
        {"token": ".", "logprob": 0.0, "bytes": [46], "top_logprobs": []},
        {"token": "95", "logprob": -0.9, "bytes": [57, 53], "top_logprobs": []},
        {"token": "}", "logprob": 0.0, "bytes": [125], "top_logprobs": []}
      ]},
      "finish_reason": "stop"
    }"#;

    #[test]
    fn the_decision_probability_comes_from_the_value_tokens_only() {
        let choice: Value = serde_json::from_str(CHOICE).unwrap();
        let tokens = crate::provider::openai::token_logprobs(&choice).unwrap();
        assert_eq!(tokens.len(), 13);
        let content = choice["message"]["content"].as_str().unwrap();
        let output: Value = serde_json::from_str(content).unwrap();
        let p = decision_probability(&output, "category", &tokens).unwrap();
        // exp(-0.2231436 - 0.0512933 - 0.0000021): "card", "_arr", "ival"; the unsure
        // confidence digits do not count.
        assert!((p - 0.76).abs() < 0.001, "{p}");
        assert_eq!(decision_probability(&output, "urgency", &tokens), None);
        let c = decision_probability(&output, "confidence", &tokens).unwrap();
        assert!(c < 0.5, "a number's tokens count too: {c}");
    }

    #[test]
    fn agreement_compares_with_the_local_tier_label() {
        let step = |label: &str| EscalationStep {
            from_stage: "local".into(),
            to_stage: "triage".into(),
            reason: crate::envelope::EscalationReason::LowConfidence,
            detail: String::new(),
            output: json!({"category": label, "confidence": 0.6}),
            confidence: Some(0.6),
        };
        let out = json!({"category": "card_arrival"});
        let local = Some("local");
        assert_eq!(
            agreement(&out, "category", local, &[step("card_arrival")]),
            Some(true)
        );
        assert_eq!(
            agreement(&out, "category", local, &[step("lost_or_stolen_card")]),
            Some(false)
        );
        assert_eq!(agreement(&out, "category", local, &[]), None);
        // Only the local tier counts: an earlier model stage's answer is no evidence.
        let mut triage = step("card_arrival");
        triage.from_stage = "triage".into();
        assert_eq!(agreement(&out, "category", local, &[triage]), None);
        assert_eq!(
            agreement(&out, "category", None, &[step("card_arrival")]),
            None
        );
    }
}
