//! OpenRouter compatibility, against a real `switchyard run` process and a local server that
//! records the request bodies it receives: a provider with `api: openrouter` gets the route's
//! upstream preferences as OpenRouter's `provider` object (written with OpenRouter's own field
//! names), and `extra_body` fields reach the provider as written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use serde_json::{Value, json};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{
    chat_completion, copy_llm_pipelines, job, quiet_profile, run_command,
};

type Bodies = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers every chat completion with a valid triage answer and keeps (provider path, body).
async fn recording_provider(bodies: Bodies) -> u16 {
    async fn complete(
        State(bodies): State<Bodies>,
        Path(provider): Path<String>,
        body: axum::Json<Value>,
    ) -> ([(&'static str, &'static str); 1], String) {
        bodies.lock().unwrap().push((provider, body.0));
        ([("content-type", "application/json")], chat_completion(50))
    }
    let app = axum::Router::new()
        .route(
            "/{provider}/v1/chat/completions",
            axum::routing::post(complete),
        )
        .with_state(bodies);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_openrouter_provider_gets_the_provider_object_and_passthrough_fields() {
    let bodies: Bodies = Arc::default();
    let port = recording_provider(bodies.clone()).await;
    let h = Harness::start(quiet_profile(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    // simcloud speaks OpenRouter's dialect, with a provider-wide passthrough; simedge stays a
    // plain OpenAI-compatible server.
    let providers = pipelines.join("providers.yaml");
    let text = std::fs::read_to_string(&providers).unwrap();
    let simcloud = text.find("  simcloud:").unwrap();
    let api = simcloud + text[simcloud..].find("api: openai").unwrap();
    let mut edited = text.clone();
    edited.replace_range(
        api..api + "api: openai".len(),
        "api: openrouter\n    extra_body: { provider: { order: [anthropic] }, usage: { include: true } }",
    );
    std::fs::write(&providers, edited).unwrap();
    // The triage route, written with OpenRouter's names: max_price prompt/completion, sort as
    // an object, quantizations; plus a route-level passthrough.
    let yaml = pipelines.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let edited = text.replacen(
        "      max_tokens: 800\n",
        "      max_tokens: 800\n      provider:\n        sort: { by: price, partition: none }\n        max_price: { prompt: 5, completion: 10 }\n        quantizations: [fp8, bf16]\n      extra_body: { reasoning: { effort: low } }\n",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&yaml, edited).unwrap();

    let mut child = run_command(
        &pipelines,
        h.broker.bootstrap(),
        &format!("http://127.0.0.1:{port}"),
    )
    .spawn()
    .unwrap();
    let jobs = vec![job("or-1", "my card has not arrived")];
    h.produce(&jobs).await;
    let want: HashSet<String> = ["or-1".to_string()].into();
    let tally = h.collect(&want, 0, Duration::from_secs(60)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(tally.results.contains_key("or-1"), "{:?}", tally.dead);

    let seen = bodies.lock().unwrap().clone();
    // Sorted by price, the first candidate is swift-mini at simcloud (the cheaper endpoint).
    let to_openrouter: Vec<&Value> = seen
        .iter()
        .filter(|(p, _)| p == "simcloud")
        .map(|(_, b)| b)
        .collect();
    let to_plain: Vec<&Value> = seen
        .iter()
        .filter(|(p, _)| p == "simedge")
        .map(|(_, b)| b)
        .collect();
    assert!(
        !to_openrouter.is_empty(),
        "no request went to the OpenRouter-shaped provider: {seen:?}"
    );
    for b in &to_openrouter {
        assert_eq!(
            b["provider"],
            json!({
                "sort": "price",
                "max_price": {"prompt": 5.0, "completion": 10.0},
                "quantizations": ["fp8", "bf16"],
                "order": ["anthropic"],
            }),
            "{b}"
        );
        assert_eq!(b["usage"], json!({"include": true}));
        assert_eq!(b["reasoning"], json!({"effort": "low"}));
        assert!(b["messages"].is_array() && b["model"].is_string());
    }
    for b in &to_plain {
        assert!(b.get("provider").is_none(), "{b}");
        assert_eq!(b["reasoning"], json!({"effort": "low"}));
    }
}
