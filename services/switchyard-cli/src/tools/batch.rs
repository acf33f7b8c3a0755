//! `switchyard batch`: a file of documents through a pipeline on an embedded broker — each
//! document split into parts that fit the first stage's smallest context window, every part a
//! job, the parts' outputs merged back per document — then the outputs written as JSON lines
//! and, where the input carries expected values, scored by F1 over upper-cased key=value pairs
//! (the Kleister-NDA rule).
//!
//! Against the simulator, the expected values ride along as the oracle header (see
//! `switchyard eval`); that measures the plumbing and the cascade, not a real model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::tools::eval::{ORACLE, oracle_sim, run_variant};
use switchyard::config::Pipeline;
use switchyard::envelope::{Intake, now};

/// What to run.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Pipeline folder.
    pub pipeline: PathBuf,
    /// Input: JSON lines `{"payload": {...}, "expected": {key: [values]}}` (expected optional).
    pub input: PathBuf,
    /// Output: one JSON line per document.
    pub out: PathBuf,
    /// The payload field holding the document text.
    pub text_field: String,
    /// The payload field naming the document.
    pub id_field: String,
    /// Largest part, in characters; by default what fits the first stage's smallest context
    /// window next to the prompt and the answer.
    pub chunk_chars: Option<usize>,
    /// Call the providers configured in providers.yaml instead of the in-process simulator.
    pub real_providers: bool,
    /// Simulator latency scale.
    pub latency_scale: f64,
    /// Progress bar on stderr.
    pub progress: bool,
}

/// The F1 score over key=value pairs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Score {
    /// Pairs predicted and expected.
    pub true_positives: usize,
    /// Pairs predicted.
    pub predicted: usize,
    /// Pairs expected.
    pub expected: usize,
    /// TP / predicted.
    pub precision: f64,
    /// TP / expected.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
}

/// What the command prints at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchSummary {
    /// Documents read.
    pub documents: usize,
    /// Jobs run (document parts).
    pub jobs: usize,
    /// Documents split into more than one part.
    pub split_documents: usize,
    /// Parts that ended as dead letters.
    pub dead_lettered: usize,
    /// Escalated parts.
    pub escalated: usize,
    /// Total cost, US dollars.
    pub cost_usd: f64,
    /// The score, when the input has expected values.
    pub score: Option<Score>,
    /// Whether the models were simulated with oracle values.
    pub oracle: bool,
    /// Where the outputs went.
    pub out: String,
}

#[derive(Debug, Deserialize)]
struct Document {
    payload: Value,
    #[serde(default)]
    expected: Option<BTreeMap<String, Vec<String>>>,
}

/// Splits `text` into parts of at most `max` characters, at a line break where there is one
/// in the second half of a part.
pub fn split(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit]
            .rfind('\n')
            .filter(|&i| i > limit / 2)
            .map_or(limit, |i| i + 1);
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Merges the outputs of one document's parts: for single values, the one from the most
/// confident part that has one; arrays are united (first spelling kept, case ignored).
pub fn merge(parts: &[Value]) -> Value {
    let mut by_confidence: Vec<&Map<String, Value>> =
        parts.iter().filter_map(Value::as_object).collect();
    let conf = |m: &Map<String, Value>| m.get("confidence").and_then(Value::as_f64).unwrap_or(0.0);
    by_confidence.sort_by(|a, b| conf(b).total_cmp(&conf(a)));
    let mut out = Map::new();
    for part in &by_confidence {
        for (k, v) in *part {
            match (out.get_mut(k), v) {
                (None, _) => {
                    out.insert(k.clone(), v.clone());
                }
                (Some(Value::Null), v) if !v.is_null() => {
                    out.insert(k.clone(), v.clone());
                }
                (Some(Value::Array(have)), Value::Array(more)) => {
                    for item in more {
                        let seen = have.iter().any(|h| match (h.as_str(), item.as_str()) {
                            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                            _ => h == item,
                        });
                        if !seen {
                            have.push(item.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Value::Object(out)
}

/// A value as Kleister writes it: spaces and colons as `_`, upper case.
fn normal(v: &str) -> String {
    v.trim()
        .chars()
        .map(|c| if c == ' ' || c == ':' { '_' } else { c })
        .collect::<String>()
        .to_uppercase()
}

/// The key=value pairs of an NDA output (`parties` gives one `party` pair each).
pub fn predicted_pairs(output: &Value) -> BTreeSet<String> {
    let mut pairs = BTreeSet::new();
    let Some(obj) = output.as_object() else {
        return pairs;
    };
    for (k, v) in obj {
        if k == "confidence" {
            continue;
        }
        let key = if k == "parties" { "party" } else { k.as_str() };
        let values: Vec<&str> = match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for value in values.into_iter().filter(|s| !s.trim().is_empty()) {
            pairs.insert(format!("{}={}", key.to_uppercase(), normal(value)));
        }
    }
    pairs
}

/// The key=value pairs expected.
pub fn expected_pairs(expected: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    expected
        .iter()
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| format!("{}={}", k.to_uppercase(), normal(v)))
        })
        .collect()
}

/// F1 over the pairs of every document (micro-averaged).
pub fn score(docs: &[(BTreeSet<String>, BTreeSet<String>)]) -> Score {
    let mut s = Score::default();
    for (predicted, expected) in docs {
        s.true_positives += predicted.intersection(expected).count();
        s.predicted += predicted.len();
        s.expected += expected.len();
    }
    s.precision = if s.predicted > 0 {
        s.true_positives as f64 / s.predicted as f64
    } else {
        0.0
    };
    s.recall = if s.expected > 0 {
        s.true_positives as f64 / s.expected as f64
    } else {
        0.0
    };
    s.f1 = if s.precision + s.recall > 0.0 {
        2.0 * s.precision * s.recall / (s.precision + s.recall)
    } else {
        0.0
    };
    s
}

/// The expected values in the output schema's shape (for the simulator's oracle): single
/// values for the keys the schema types as strings, `party` → `parties`, `_` → space.
fn oracle_gold(expected: &BTreeMap<String, Vec<String>>, schema: &Value) -> Value {
    let mut gold = Map::new();
    for (k, vs) in expected {
        let plain: Vec<String> = vs.iter().map(|v| v.replace('_', " ")).collect();
        let (field, is_array) = if schema.pointer(&format!("/properties/{k}")).is_some() {
            let array = schema.pointer(&format!("/properties/{k}/type")) == Some(&json!("array"));
            (k.clone(), array)
        } else {
            // Kleister names a repeated key in the singular (`party`); schemas, the plural.
            let plural = match k.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{k}s"),
            };
            (plural, true)
        };
        let value = if is_array {
            json!(plain)
        } else {
            plain.first().map_or(Value::Null, |v| json!(v))
        };
        gold.insert(field, value);
    }
    Value::Object(gold)
}

/// JSON text with every non-ASCII character escaped, so it can travel as an HTTP header.
pub fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The default part size: the first LLM stage's smallest context window (≈ 4 characters a
/// token) less the prompt template, the schema and the answer, with a fifth to spare.
fn default_chunk_chars(pipeline: &Pipeline) -> usize {
    let Some(stage) = pipeline.stages.iter().find(|s| !s.models.is_empty()) else {
        return 40_000;
    };
    let window = stage
        .models
        .iter()
        .flat_map(|m| m.endpoints.iter())
        .map(|e| e.context_length as usize)
        .min()
        .unwrap_or(16_000);
    let answer = stage.route.max_tokens.unwrap_or(1024) as usize;
    let fixed = (stage.prompt.len() + stage.output_schema.to_string().len()) / 4 + 500;
    (window.saturating_sub(answer + fixed) * 4) * 4 / 5
}

/// Runs the batch.
pub async fn run_batch(options: BatchOptions) -> anyhow::Result<BatchSummary> {
    let mut pipeline = Pipeline::load(&options.pipeline).map_err(|e| anyhow!("{e}"))?;
    let text = std::fs::read_to_string(&options.input)
        .with_context(|| format!("cannot read {}", options.input.display()))?;
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let d: Document = serde_json::from_str(line).map_err(|e| {
            anyhow!(
                "{}:{}: a line must be {{\"payload\": {{...}}, \"expected\": {{...}}}}: {e}",
                options.input.display(),
                i + 1
            )
        })?;
        if d.payload
            .get(&options.text_field)
            .and_then(Value::as_str)
            .is_none()
        {
            bail!(
                "{}:{}: the payload has no text field `{}` (set --text-field)",
                options.input.display(),
                i + 1,
                options.text_field
            );
        }
        docs.push(d);
    }
    if docs.is_empty() {
        bail!(
            "{} has no documents: one JSON object per line, {{\"payload\": {{...}}, \"expected\": {{...}}}}",
            options.input.display()
        );
    }
    let chunk_chars = options
        .chunk_chars
        .unwrap_or_else(|| default_chunk_chars(&pipeline));
    let oracle = !options.real_providers;
    let sim = if oracle {
        Some(oracle_sim(&mut pipeline, options.latency_scale, None, 0.0, 0.0).await?)
    } else {
        None
    };
    let schema = pipeline
        .stages
        .first()
        .map(|s| s.output_schema.clone())
        .unwrap_or(Value::Null);

    // Every document's parts, as jobs.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut jobs = Vec::new();
    let mut parts_of: Vec<Vec<String>> = Vec::new();
    let mut split_documents = 0;
    for (d, doc) in docs.iter().enumerate() {
        let text = doc
            .payload
            .get(&options.text_field)
            .and_then(Value::as_str)
            .unwrap_or_default();
        let parts = split(text, chunk_chars);
        if parts.len() > 1 {
            split_documents += 1;
        }
        let mut ids = Vec::new();
        for (p, part) in parts.iter().enumerate() {
            let mut payload = doc.payload.clone();
            payload[&options.text_field] = json!(part);
            let mut metadata = BTreeMap::new();
            metadata.insert("part".to_string(), format!("{}/{}", p + 1, parts.len()));
            if let (true, Some(expected)) = (oracle, &doc.expected) {
                metadata.insert(
                    ORACLE.to_string(),
                    ascii_json(&oracle_gold(expected, &schema)),
                );
            }
            let job_id = format!("batch-{}-{d:05}-{p:03}", &run_id[..8]);
            ids.push(job_id.clone());
            jobs.push(Intake {
                job_id: job_id.into(),
                tenant: "batch".into(),
                pipeline: pipeline.name.clone(),
                payload,
                created_at: now(),
                metadata,
                redrive_count: 0,
            });
        }
        parts_of.push(ids);
    }

    let bar = if options.progress {
        ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} parts  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (tally, _) = run_variant(pipeline.clone(), &jobs, &bar).await?;
    bar.finish_and_clear();
    if let Some(sim) = sim {
        sim.stop().await;
    }

    let mut summary = BatchSummary {
        documents: docs.len(),
        jobs: jobs.len(),
        split_documents,
        oracle,
        out: options.out.display().to_string(),
        ..BatchSummary::default()
    };
    let mut lines = String::new();
    let mut scored = Vec::new();
    let mut cost = 0u64;
    for (doc, ids) in docs.iter().zip(&parts_of) {
        let mut outputs = Vec::new();
        let mut failed = Vec::new();
        for id in ids {
            if let Some(r) = tally.results.get(id).and_then(|v| v.first()) {
                outputs.push(r.output.clone());
                cost += r.cost_micro_usd.0;
                if !r.escalations.is_empty() {
                    summary.escalated += 1;
                }
            } else if let Some(d) = tally.dead.get(id).and_then(|v| v.first()) {
                summary.dead_lettered += 1;
                cost += d.attempts.iter().map(|a| a.cost_micro_usd.0).sum::<u64>();
                failed.push(json!({"job_id": id, "reason": d.reason.as_str(), "detail": d.detail}));
            }
        }
        let merged = merge(&outputs);
        if let Some(expected) = &doc.expected {
            scored.push((predicted_pairs(&merged), expected_pairs(expected)));
        }
        let line = json!({
            "id": doc.payload.get(&options.id_field),
            "output": merged,
            "parts": ids.len(),
            "dead_letters": failed,
            "expected": doc.expected,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(&options.out, lines)
        .with_context(|| format!("cannot write {}", options.out.display()))?;
    summary.cost_usd = cost as f64 / 1e6;
    if !scored.is_empty() {
        summary.score = Some(score(&scored));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_character_and_prefers_line_breaks() {
        let text = "aaaa\nbbbb\ncccc\ndd";
        let parts = split(text, 7);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.chars().count() <= 7), "{parts:?}");
        assert_eq!(parts[0], "aaaa\n");
        assert_eq!(split("short", 100), vec!["short"]);
        assert_eq!(split("", 10), vec![""]);
        // Multi-byte characters are never cut.
        let accents = "é".repeat(25);
        assert!(split(&accents, 10).iter().all(|p| p.chars().count() <= 10));
    }

    #[test]
    fn merge_takes_the_most_confident_value_and_unites_lists() {
        let a = json!({"jurisdiction": "Delaware", "effective_date": null, "parties": ["Acme Inc."], "confidence": 0.6});
        let b = json!({"jurisdiction": "New York", "effective_date": "2014-05-20", "parties": ["ACME INC.", "Beta LLC"], "confidence": 0.9});
        let m = merge(&[a, b]);
        assert_eq!(m["jurisdiction"], "New York");
        assert_eq!(m["effective_date"], "2014-05-20");
        assert_eq!(m["parties"], json!(["ACME INC.", "Beta LLC"]));
    }

    #[test]
    fn kleister_f1_over_upper_cased_pairs() {
        let out = json!({"effective_date": "2014-05-20", "jurisdiction": "New York",
                         "parties": ["Visser Precision Cast LLC", "Wrong Co"], "term": null, "confidence": 0.8});
        let expected: BTreeMap<String, Vec<String>> = [
            ("effective_date".to_string(), vec!["2014-05-20".to_string()]),
            ("jurisdiction".to_string(), vec!["New_York".to_string()]),
            (
                "party".to_string(),
                vec![
                    "Visser_Precision_Cast_LLC".to_string(),
                    "Liquidmetal_Technology_Inc.".to_string(),
                ],
            ),
            ("term".to_string(), vec!["3_years".to_string()]),
        ]
        .into();
        let s = score(&[(predicted_pairs(&out), expected_pairs(&expected))]);
        assert_eq!(s.true_positives, 3);
        assert_eq!(s.predicted, 4);
        assert_eq!(s.expected, 5);
        assert!((s.f1 - 2.0 * 0.75 * 0.6 / 1.35).abs() < 1e-9);
    }

    #[test]
    fn oracle_gold_has_the_schema_shape_and_travels_as_ascii() {
        let schema = json!({"properties": {"effective_date": {"type": ["string", "null"]},
            "parties": {"type": "array"}, "term": {"type": ["string", "null"]}}});
        let expected: BTreeMap<String, Vec<String>> = [
            (
                "party".to_string(),
                vec!["Orchestra-Prémaman_Sa".to_string()],
            ),
            ("term".to_string(), vec![]),
        ]
        .into();
        let g = oracle_gold(&expected, &schema);
        assert_eq!(g["parties"], json!(["Orchestra-Prémaman Sa"]));
        assert_eq!(g["term"], Value::Null);
        let header = ascii_json(&g);
        assert!(header.is_ascii());
        assert_eq!(serde_json::from_str::<Value>(&header).unwrap(), g);
    }
}
