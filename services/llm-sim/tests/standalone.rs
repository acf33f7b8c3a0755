//! The `llm-sim` binary, run standalone and spoken to over HTTP as a provider client would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

struct Sim {
    child: Child,
    base: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(profile: &str) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, profile).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
        .args(["--port", "0", "--profile"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().strip_prefix("listening=").unwrap().to_string();
    Sim { child, base }
}

const PROFILE: &str = r#"
seed: 3
latency_scale: 0
models:
  sim/small:
    tier: cheap
    confidence: { mean: 0.5, spread: 0.0 }
keys:
  k-limited: { rpm: 3 }
"#;

fn request() -> Value {
    json!({
        "model": "sim/small",
        "messages": [{"role": "user", "content": "classify: card lost"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": true, "schema": {
            "type": "object", "additionalProperties": false,
            "required": ["category", "confidence"],
            "properties": {
                "category": {"type": "string", "enum": ["lost_card", "card_arrival"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1}
            }
        }}}
    })
}

#[tokio::test]
async fn answers_conform_to_the_schema_and_repeat_for_the_same_prompt() {
    let sim = start(PROFILE);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", sim.base);
    let mut contents = Vec::new();
    for _ in 0..2 {
        let r: Value = http
            .post(&url)
            .json(&request())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        contents.push(
            r["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        contents[0], contents[1],
        "same seed, model and prompt give the same answer"
    );
    let answer: Value = serde_json::from_str(&contents[0]).unwrap();
    assert!(["lost_card", "card_arrival"].contains(&answer["category"].as_str().unwrap()));
    assert_eq!(answer["confidence"], json!(0.5));

    let missing = http
        .post(&url)
        .json(&json!({"model": "sim/nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_stats_report_it() {
    let sim = start(PROFILE);
    let http = reqwest::Client::new();
    let url = format!("{}/simcloud/v1/chat/completions", sim.base);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = http
            .post(&url)
            .bearer_auth("k-limited")
            .json(&request())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let wait = retry_after.unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    let stats: Value = http
        .get(format!("{}/sim/stats", sim.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["sent_429"], 2);
    assert_eq!(stats["by_provider"]["simcloud"], 5);
    let keys = stats["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 1);
    let (label, k) = keys.iter().next().unwrap();
    assert!(
        !label.contains("k-limited"),
        "stats never show a key: {label}"
    );
    assert_eq!(k["max_rpm_observed"], 5);
    assert_eq!(k["configured_rpm"], 3);
    assert!(stats["peak_concurrency"].as_u64().unwrap() >= 1);
}
