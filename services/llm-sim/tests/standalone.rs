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
    start_with(profile, &[])
}

fn start_with(profile: &str, extra: &[&str]) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, profile).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-sim"))
        .args(["--port", "0", "--profile"])
        .arg(&path)
        .args(extra)
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

/// Out-of-scope queries: with `oos_confusion`, a model answers some intent instead of "none",
/// sure of it in its reported confidence and its token logprobs alike; without it, it answers
/// them like any other query (right with its accuracy).
#[tokio::test]
async fn out_of_scope_queries_get_confident_wrong_intents_when_the_profile_says_so() {
    let profile = |confusion: f64| {
        format!(
            "seed: 5\nlatency_scale: 0\nmodels:\n  sim/small:\n    tier: cheap\n    accuracy: 0.99\n    oos_confusion: {confusion}\n"
        )
    };
    let ask = |sim: &Sim, i: usize| {
        let url = format!("{}/v1/chat/completions", sim.base);
        let mut body = request();
        body["messages"][0]["content"] = json!(format!("what is the meaning of life, take {i}"));
        body["response_format"]["json_schema"]["schema"]["properties"]["category"]["enum"] =
            json!(["lost_card", "card_arrival", "none"]);
        body["logprobs"] = json!(true);
        async move {
            let r: Value = reqwest::Client::new()
                .post(url)
                .header("x-sim-oracle", r#"{"category": "none"}"#)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let answer: Value =
                serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap())
                    .unwrap();
            let category_prob: f64 = r["choices"][0]["logprobs"]["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .sum::<f64>()
                .exp();
            (answer, category_prob)
        }
    };
    let confused = start(&profile(1.0));
    for i in 0..10 {
        let (answer, prob) = ask(&confused, i).await;
        assert_ne!(answer["category"], "none", "{answer}");
        assert!(answer["confidence"].as_f64().unwrap() >= 0.9, "{answer}");
        assert!(prob >= 0.85, "the logprobs are sure too: {prob}");
    }
    let honest = start(&profile(0.0));
    let mut right = 0;
    for i in 0..10 {
        if ask(&honest, i).await.0["category"] == "none" {
            right += 1;
        }
    }
    assert!(
        right >= 9,
        "{right} of 10 out-of-scope queries answered `none`"
    );
}

/// `--no-directives`: what a ticket says cannot steer the simulator; by default it can (tests).
#[tokio::test]
async fn directives_steer_the_simulator_unless_it_is_started_without_them() {
    let mut steered = request();
    steered["messages"][0]["content"] = json!("[sim:server_error:always] classify: card lost");
    let mut statuses = Vec::new();
    for extra in [&[][..], &["--no-directives"][..]] {
        let sim = start_with(PROFILE, extra);
        let r = reqwest::Client::new()
            .post(format!("{}/simcloud/v1/chat/completions", sim.base))
            .json(&steered)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [500, 200]);
}
