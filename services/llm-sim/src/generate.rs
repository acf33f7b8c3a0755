//! Makes JSON answers that conform to a JSON Schema, and answers that deliberately do not.
//!
//! Supports the subset of JSON Schema that structured-output APIs accept: objects with
//! properties and required, arrays with items, enums, const, strings with length bounds,
//! numbers and integers with bounds, booleans, nullable type lists and `anyOf`/`oneOf` (first
//! branch). The same RNG state always yields the same answer.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

/// Knobs that shape a generated answer.
#[derive(Debug, Clone, Copy)]
pub struct AnswerStyle {
    /// Value for any number property named `confidence`.
    pub confidence: f64,
}

const WORDS: &[&str] = &[
    "account", "card", "payment", "transfer", "pending", "refund", "customer", "balance", "charge",
    "verify", "identity", "limit", "exchange", "rate", "top-up", "fee", "declined", "arrived",
    "request", "update", "issue", "support", "delay", "review",
];

/// Oracle mode: puts the gold values into `answer` when `right`, else a wrong one — another
/// value of the field's enum when it has one, else what was generated (never the gold).
pub fn apply_gold(
    answer: &mut Value,
    schema: &Value,
    gold: &Map<String, Value>,
    right: bool,
    rng: &mut StdRng,
) {
    let Some(obj) = answer.as_object_mut() else {
        return;
    };
    for (field, value) in gold {
        if right {
            obj.insert(field.clone(), value.clone());
            continue;
        }
        let others: Vec<&Value> = schema
            .pointer(&format!("/properties/{field}/enum"))
            .and_then(Value::as_array)
            .map(|e| e.iter().filter(|v| *v != value).collect())
            .unwrap_or_default();
        if !others.is_empty() {
            obj.insert(
                field.clone(),
                others[rng.random_range(0..others.len())].clone(),
            );
        } else if obj.get(field) == Some(value) {
            obj.insert(field.clone(), Value::Null);
        }
    }
}

/// Generates a value that conforms to `schema`.
pub fn conforming(schema: &Value, rng: &mut StdRng, style: AnswerStyle) -> Value {
    generate(schema, rng, style, None, 0)
}

/// Generates a value that breaks `schema` in a way a validator notices: a required property
/// is dropped or an enum gets a value outside its list.
pub fn violating(schema: &Value, rng: &mut StdRng, style: AnswerStyle) -> Value {
    let mut value = conforming(schema, rng, style);
    if let (Some(obj), Some(props)) = (
        value.as_object_mut(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        // Prefer breaking an enum (a plausible model mistake), else drop a required field.
        if let Some((name, _)) = props.iter().find(|(_, s)| s.get("enum").is_some()) {
            obj.insert(name.clone(), json!("something_else_entirely"));
            return value;
        }
        if let Some(first) = schema
            .get("required")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(Value::as_str)
        {
            obj.remove(first);
            return value;
        }
    }
    json!({"unexpected": true})
}

fn generate(
    schema: &Value,
    rng: &mut StdRng,
    style: AnswerStyle,
    name: Option<&str>,
    depth: usize,
) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.is_empty()
    {
        return options[rng.random_range(0..options.len())].clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return generate(first, rng, style, name, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // A type list such as ["string", "null"]: use the first non-null type.
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, sub) in props {
                    out.insert(
                        key.clone(),
                        generate(sub, rng, style, Some(key.as_str()), depth + 1),
                    );
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(min.max(3));
            let n = rng.random_range(min..=max.max(min));
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            Value::Array(
                (0..n)
                    .map(|_| generate(&items, rng, style, name, depth + 1))
                    .collect(),
            )
        }
        "number" | "integer" => number(schema, rng, style, name, ty == "integer"),
        "boolean" => Value::Bool(rng.random_bool(0.5)),
        "null" => Value::Null,
        _ => Value::String(string(schema, rng, name)),
    }
}

fn number(
    schema: &Value,
    rng: &mut StdRng,
    style: AnswerStyle,
    name: Option<&str>,
    integer: bool,
) -> Value {
    let lo = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
    let hi = schema
        .get("maximum")
        .and_then(Value::as_f64)
        .unwrap_or(lo + 100.0);
    if integer {
        let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
        return json!(rng.random_range(lo..=hi.max(lo)));
    }
    let v = if name == Some("confidence") {
        style.confidence.clamp(lo, hi)
    } else {
        lo + (hi - lo) * rng.random::<f64>()
    };
    // Two decimals, like a model would write.
    json!((v * 100.0).round() / 100.0)
}

fn string(schema: &Value, rng: &mut StdRng, name: Option<&str>) -> String {
    if schema.get("format").and_then(Value::as_str) == Some("date") {
        return format!(
            "20{:02}-{:02}-{:02}",
            rng.random_range(10..30),
            rng.random_range(1..13),
            rng.random_range(1..29)
        );
    }
    let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(1) as usize;
    let max = schema
        .get("maxLength")
        .and_then(Value::as_u64)
        .unwrap_or(160) as usize;
    let words = rng.random_range(4..14);
    let mut text = match name {
        Some(n) => format!("{}:", n.replace('_', " ")),
        None => String::new(),
    };
    for _ in 0..words {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    while text.chars().count() < min {
        text.push_str(" ok");
    }
    if text.chars().count() > max {
        text = text.chars().take(max).collect();
    }
    text
}

/// Top-level properties of `schema` whose values are enumerated (the answer's decisions).
pub fn enum_fields(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter(|(_, p)| p.get("enum").is_some())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// `content` cut into tokens (runs of letters, digits and `_`, or single other characters)
/// with OpenAI-style logprobs: the first token of each decided field's string value carries
/// ln(`p`), the model's real probability of being right; every other token is near-certain.
pub fn token_logprobs(content: &str, decided: &[String], p: f64) -> Vec<(String, f64)> {
    // Byte offsets where a decided value starts (just after its opening quote).
    let mut starts = Vec::new();
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(content) {
        for field in decided {
            if let Some(Value::String(v)) = map.get(field) {
                let key = format!("\"{field}\"");
                if let Some(k) = content.find(&key) {
                    let quoted =
                        format!("\"{}", &serde_json::to_string(v).unwrap_or_default()[1..]);
                    if let Some(off) = content[k + key.len()..].find(&quoted) {
                        starts.push(k + key.len() + off + 1);
                    }
                }
            }
        }
    }
    let mut tokens: Vec<(String, f64)> = Vec::new();
    let mut current = String::new();
    let mut current_start = 0;
    let push = |tokens: &mut Vec<(String, f64)>, text: &str, start: usize| {
        if text.is_empty() {
            return;
        }
        let lp = if starts.contains(&start) {
            p.clamp(1e-6, 1.0).ln()
        } else {
            -1e-4
        };
        tokens.push((text.to_string(), lp));
    };
    for (i, c) in content.char_indices() {
        if c.is_alphanumeric() || c == '_' {
            if current.is_empty() {
                current_start = i;
            }
            current.push(c);
        } else {
            push(&mut tokens, &current, current_start);
            current.clear();
            push(&mut tokens, &c.to_string(), i);
        }
    }
    push(&mut tokens, &current, current_start);
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["category", "confidence", "summary", "tags"],
            "additionalProperties": false,
            "properties": {
                "category": {"type": "string", "enum": ["a", "b", "c"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "summary": {"type": "string", "minLength": 5, "maxLength": 40},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "count": {"type": "integer", "minimum": 1, "maximum": 3}
            }
        })
    }

    #[test]
    fn gold_is_put_in_when_right_and_another_enum_value_when_wrong() {
        let s = schema();
        let gold: Map<String, Value> = [("category".to_string(), json!("b"))].into_iter().collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let mut v = conforming(&s, &mut rng, AnswerStyle { confidence: 0.5 });
            apply_gold(&mut v, &s, &gold, true, &mut rng);
            assert_eq!(v["category"], "b");
            apply_gold(&mut v, &s, &gold, false, &mut rng);
            assert_ne!(v["category"], "b");
            assert!(["a", "c"].contains(&v["category"].as_str().unwrap()));
        }
    }

    #[test]
    fn conforming_answers_validate() {
        let s = schema();
        let validator = jsonschema_lite_check;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let v = conforming(&s, &mut rng, AnswerStyle { confidence: 0.42 });
            validator(&v);
            assert_eq!(v["confidence"], json!(0.42));
        }
    }

    #[test]
    fn same_seed_same_answer_and_violations_differ() {
        let s = schema();
        let style = AnswerStyle { confidence: 0.9 };
        let a = conforming(&s, &mut StdRng::seed_from_u64(5), style);
        let b = conforming(&s, &mut StdRng::seed_from_u64(5), style);
        assert_eq!(a, b);
        let bad = violating(&s, &mut StdRng::seed_from_u64(5), style);
        assert_eq!(bad["category"], json!("something_else_entirely"));
    }

    // A hand check of the properties above, so this crate does not need a validator.
    fn jsonschema_lite_check(v: &Value) {
        let cat = v["category"].as_str().unwrap();
        assert!(["a", "b", "c"].contains(&cat));
        let summary = v["summary"].as_str().unwrap();
        assert!((5..=40).contains(&summary.chars().count()), "{summary}");
        assert!(v["tags"].as_array().unwrap().len() <= 2);
        let count = v["count"].as_i64().unwrap();
        assert!((1..=3).contains(&count));
    }

    #[test]
    fn logprobs_put_the_real_probability_on_the_decided_value() {
        let content = r#"{"category":"card_arrival","confidence":0.97,"summary":"late card"}"#;
        let tokens = token_logprobs(content, &["category".to_string()], 0.6);
        let text: String = tokens.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(text, content, "tokens rebuild the content");
        let decided: Vec<_> = tokens.iter().filter(|(_, lp)| *lp < -0.01).collect();
        assert_eq!(decided.len(), 1, "{tokens:?}");
        assert_eq!(decided[0].0, "card_arrival");
        assert!((decided[0].1.exp() - 0.6).abs() < 1e-9);
    }
}
