//! Test fixtures for the stage and the data path: the shipped triage stage behind a scripted
//! fake provider (no network), every provider with two keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::*;
use crate::config::{Pipeline, ProviderKey};
use crate::envelope::AttemptClass;
use crate::envelope::Intake;
use crate::limit::Limits;
use crate::limit::budget::Spend;
use crate::provider::{Adapters, ProviderApi, Usage};
use crate::provider::{ChatRequest, Completion, ProviderError};
use crate::route::health::{BreakerConfig, Health};
use crate::secret::{KeyRef, Secret};
use crate::stage::{StageDeps, StageRun};
use crate::telemetry::Telemetry;
use std::time::Duration;

pub(crate) type Script = Arc<Mutex<HashMap<String, VecDeque<Result<Completion, ProviderError>>>>>;

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) key: Option<String>,
    pub(crate) repair: bool,
}

/// A provider whose answers are scripted per model id; unscripted calls get a valid answer.
#[derive(Debug)]
pub(crate) struct Scripted {
    provider: String,
    pub(crate) script: Script,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
}

impl ProviderApi for Scripted {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(Seen {
                provider: self.provider.clone(),
                model: request.model.to_string(),
                key: request.key.map(|k| k.expose().to_string()),
                repair: request.messages.len() > 2,
            });
            self.script
                .lock()
                .unwrap()
                .get_mut(request.model)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Ok(answer(GOOD)))
        })
    }
}

pub(crate) const GOOD: &str = r#"{"category": "card_arrival", "urgency": "low", "sentiment": "neutral",
    "summary": "The card has not arrived yet.",
    "draft_reply": "Sorry to hear that; we are checking the delivery of your card.",
    "confidence": 0.99}"#;

pub(crate) fn answer(content: &str) -> Completion {
    Completion {
        logprobs: None,
        content: content.to_string(),
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 20,
            ..Usage::default()
        },
        status: 200,
    }
}

pub(crate) fn failure(class: AttemptClass, status: u16) -> ProviderError {
    ProviderError {
        class,
        status: Some(status),
        message: format!("scripted {}", class.as_str()),
        retry_after: (class == AttemptClass::RateLimited).then(|| Duration::from_secs(30)),
        usage: Usage::default(),
    }
}

pub(crate) struct Fixture {
    pub(crate) pipeline: Pipeline,
    pub(crate) runner: StageRunner,
    pub(crate) script: Script,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    pub(crate) contexts: HashMap<String, u32>,
}

/// The shipped triage stage, sorted by price so the order is fixed, every provider with
/// two keys, and the fake behind every provider name.
pub(crate) fn fixture(models_smallest_first: bool) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/support-triage");
    let mut pipeline = Pipeline::load(&dir).unwrap().llm_stages_only();
    for (name, p) in pipeline.providers.iter_mut() {
        p.keys = ["one", "two"]
            .iter()
            .map(|k| ProviderKey {
                key_ref: KeyRef::Env(format!("KEY_{k}")),
                secret: Secret::new(format!("{name}-{k}")),
                rpm: None,
                tpm: None,
            })
            .collect();
    }
    let mut stage = pipeline.stages[0].clone();
    stage.route.provider.sort = Some(crate::config::SortBy::Price);
    if models_smallest_first {
        stage
            .models
            .sort_by_key(|m| m.endpoints.first().map_or(0, |e| e.context_length));
    }
    let contexts = stage
        .models
        .iter()
        .flat_map(|m| &m.endpoints)
        .map(|e| (e.model_id.clone(), e.context_length))
        .collect();
    let script = Arc::new(Mutex::new(HashMap::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let apis = pipeline.providers.keys().map(|name| {
        let api: Arc<dyn ProviderApi> = Arc::new(Scripted {
            provider: name.clone(),
            script: script.clone(),
            seen: seen.clone(),
        });
        (name.clone(), api)
    });
    let deps = StageDeps {
        providers: Arc::new(Adapters::from_apis(apis)),
        limits: Arc::new(Limits::new(pipeline.providers.values())),
        health: Arc::new(Health::new(BreakerConfig::default())),
        spend: Arc::new(Spend::default()),
        telemetry: Telemetry::default(),
        audits: Arc::default(),
    };
    Fixture {
        pipeline: pipeline.clone(),
        runner: StageRunner::new(stage, None, deps, None).unwrap(),
        script,
        seen,
        contexts,
    }
}

impl Fixture {
    /// Every call to `model` answers with these, in order.
    pub(crate) fn script(&self, model: &str, answers: Vec<Result<Completion, ProviderError>>) {
        self.script
            .lock()
            .unwrap()
            .insert(model.to_string(), answers.into());
    }

    /// The model the loop calls first (found by a dry run).
    pub(crate) async fn first_model(&self) -> String {
        self.run().await;
        let first = self.seen.lock().unwrap()[0].model.clone();
        self.seen.lock().unwrap().clear();
        first
    }

    pub(crate) async fn run(&self) -> StageRun {
        let job: Intake = serde_json::from_value(serde_json::json!({
            "job_id": "job-1", "tenant": "acme", "pipeline": "support-triage",
            "payload": {"text": "my card has not arrived", "channel": "email"},
            "created_at": "2026-12-07T00:00:00Z"
        }))
        .unwrap();
        self.runner.run(&job, &[]).await
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
