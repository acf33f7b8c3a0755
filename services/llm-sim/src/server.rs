//! The HTTP face of the simulator: OpenAI chat completions at `/v1/chat/completions` and
//! `/{provider}/v1/chat/completions`, counters at `/sim/stats`, and runtime fault control at
//! `/sim/providers/{provider}/faults`.
//!
//! Prompt directives let a test force one behaviour for one job without a special profile:
//! `[sim:KIND]` in a user message forces KIND on the first turn of a conversation (a repair
//! re-ask, which carries an assistant turn, is answered normally); `[sim:KIND:always]` forces it
//! on every turn; `@TARGET` after KIND limits it to one model or one tier (`@cheap`, `@strong`).
//! KIND is one of `server_error`, `unavailable`, `timeout`, `in_band_error`, `malformed_json`,
//! `schema_violation`, `low_confidence`, `high_confidence`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::generate::{self, AnswerStyle};
use crate::profile::{FaultRates, ModelProfile, Profile, Tier};
use crate::stats::{Stats, StatsSnapshot, key_label};

/// The simulator's state: its profile (faults can change at run time) and its counters.
#[derive(Debug)]
pub struct Simulator {
    profile: RwLock<Profile>,
    stats: Stats,
}

/// A running simulator server.
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for reading stats or changing faults in-process.
    pub sim: Arc<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl SimServer {
    /// `http://ADDR`, the root every provider path hangs from.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `profile` in a background task.
pub async fn spawn(profile: Profile, addr: SocketAddr) -> std::io::Result<SimServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Simulator::new(profile));
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(sim.clone());
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "llm-sim server stopped with an error");
        }
    });
    Ok(SimServer {
        addr,
        sim,
        stop: Some(tx),
        task,
    })
}

/// The axum router for a simulator.
pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_bare))
        .route("/{provider}/v1/chat/completions", post(chat_provider))
        .route("/sim/stats", get(stats))
        .route("/sim/reset", post(reset))
        .route("/sim/providers/{provider}/faults", put(set_faults))
        .with_state(sim)
}

impl Simulator {
    /// A simulator for `profile` with zeroed counters.
    pub fn new(profile: Profile) -> Self {
        Self {
            profile: RwLock::new(profile),
            stats: Stats::default(),
        }
    }

    /// The counters as they are now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.stats.reset()
    }

    /// Replaces the faults a provider adds to every model it serves (e.g. an outage window).
    pub fn set_provider_faults(&self, provider: &str, faults: FaultRates) {
        let mut p = self.profile.write().unwrap_or_else(|e| e.into_inner());
        p.providers.entry(provider.to_string()).or_default().faults = faults;
    }

    fn profile(&self) -> Profile {
        self.profile
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn stats(State(sim): State<Arc<Simulator>>) -> Response {
    axum::Json(sim.stats()).into_response()
}

async fn reset(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.reset_stats();
    StatusCode::NO_CONTENT
}

async fn set_faults(
    State(sim): State<Arc<Simulator>>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<FaultRates>(&body) {
        Ok(f) => {
            sim.set_provider_faults(&provider, f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &e.to_string(),
        ),
    }
}

async fn chat_bare(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    chat(sim, None, headers, body).await
}

async fn chat_provider(
    State(sim): State<Arc<Simulator>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    chat(sim, Some(provider), headers, body).await
}

/// What one request turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    ServerError,
    Unavailable,
    Timeout,
    InBandError,
    MalformedJson,
    SchemaViolation,
}

#[derive(Debug, Default, Clone, Copy)]
struct Directives {
    fault: Option<Fault>,
    confidence: Option<f64>,
}

async fn chat(
    sim: Arc<Simulator>,
    provider: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _guard = sim.stats.enter();
    let profile = sim.profile();
    let provider_name = provider.clone().unwrap_or_else(|| "-".to_string());
    let (status, response) = answer(&sim, &profile, provider.as_deref(), &headers, &body).await;
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "-".to_string());
    sim.stats.record(&provider_name, &model, status.as_u16());
    response
}

async fn answer(
    sim: &Simulator,
    profile: &Profile,
    provider: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Response) {
    let key = bearer(headers).unwrap_or("anonymous");
    let (label, rpm) = match profile.keys.get(key) {
        Some(k) => (key_label(key), Some(k.rpm)),
        None => (key_label(key), profile.default_key_rpm),
    };
    if let Err(wait) = sim.stats.admit(key, &label, rpm, Instant::now()) {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &format!(
                "rate limit of {} requests/min reached for this key",
                rpm.unwrap_or(0)
            ),
        );
        let secs = wait.as_secs_f64().ceil() as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return (StatusCode::TOO_MANY_REQUESTS, resp);
    }

    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("request body is not JSON: {e}");
            return bad(StatusCode::BAD_REQUEST, "invalid_request_error", &msg);
        }
    };
    let Some(model_name) = request.get("model").and_then(Value::as_str) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`model` is required",
        );
    };
    let served = provider
        .and_then(|p| profile.providers.get(p))
        .is_none_or(|p| p.models.is_empty() || p.models.iter().any(|m| m == model_name));
    let Some(model) = profile.models.get(model_name).filter(|_| served) else {
        let msg = format!("The model `{model_name}` does not exist or is not served here");
        return bad(StatusCode::NOT_FOUND, "invalid_request_error", &msg);
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`messages` is required",
        );
    };

    let conversation = serde_json::to_string(messages).unwrap_or_default();
    let content_seed = crate::fnv1a_parts(&[
        &profile.seed.to_le_bytes(),
        model_name.as_bytes(),
        conversation.as_bytes(),
    ]);
    let fault_seed = crate::fnv1a_parts(&[
        &content_seed.to_le_bytes(),
        provider.unwrap_or("-").as_bytes(),
        b"fault",
    ]);
    let directives = directives(messages, model_name, model.tier);
    let faults = profile.faults_for(provider, model);
    let fault = directives
        .fault
        .unwrap_or_else(|| draw_fault(&faults, &mut StdRng::seed_from_u64(fault_seed)));

    let mut rng = StdRng::seed_from_u64(content_seed);
    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .map(str::len)
        .sum();
    let ttft = sample_latency(model, &mut rng).mul_f64(profile.latency_scale.max(0.0));

    match fault {
        Fault::ServerError => {
            tokio::time::sleep(ttft).await;
            return bad(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "simulated internal error",
            );
        }
        Fault::Unavailable => {
            tokio::time::sleep(ttft / 4).await;
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "simulated outage: provider unavailable",
            );
        }
        Fault::Timeout => {
            tokio::time::sleep(profile.timeout_hang).await;
            return bad(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "simulated upstream timeout",
            );
        }
        _ => {}
    }

    let schema = request
        .pointer("/response_format/json_schema/schema")
        .cloned();
    let confidence = directives.confidence.unwrap_or_else(|| {
        Normal::new(model.confidence.mean, model.confidence.spread.max(0.0))
            .map(|d| d.sample(&mut rng))
            .unwrap_or(model.confidence.mean)
            .clamp(0.01, 0.99)
    });
    let style = AnswerStyle { confidence };
    let mut content = match (&schema, fault) {
        (Some(s), Fault::SchemaViolation) => generate::violating(s, &mut rng, style).to_string(),
        (Some(s), _) => generate::conforming(s, &mut rng, style).to_string(),
        (None, _) => format!("This is a simulated answer from {model_name}."),
    };
    if fault == Fault::MalformedJson {
        let cut = content.len() / 2;
        content = content.chars().take(cut).collect();
    }
    let prompt_tokens = (prompt_chars / 4 + 1) as u64;
    let completion_tokens = (content.len() / 4 + 1) as u64;
    let generation = Duration::from_secs_f64(
        completion_tokens as f64 / model.tokens_per_s.max(1.0) * profile.latency_scale.max(0.0),
    );
    tokio::time::sleep(ttft + generation).await;

    let id = format!("chatcmpl-sim-{content_seed:016x}");
    if fault == Fault::InBandError {
        let body = json!({
            "id": id, "object": "chat.completion", "model": model_name, "choices": [],
            "error": {"message": "simulated upstream error", "code": 502}
        });
        return (StatusCode::OK, axum::Json(body).into_response());
    }
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    });
    (StatusCode::OK, axum::Json(body).into_response())
}

fn bad(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Response) {
    (status, error(status, kind, message))
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

fn sample_latency(model: &ModelProfile, rng: &mut StdRng) -> Duration {
    let p50 = model.latency.p50.as_secs_f64();
    if p50 <= 0.0 {
        return Duration::ZERO;
    }
    let secs = LogNormal::new(p50.ln(), model.latency.sigma.max(0.0))
        .map(|d| d.sample(rng))
        .unwrap_or(p50);
    Duration::from_secs_f64(secs.min(600.0))
}

fn draw_fault(f: &FaultRates, rng: &mut StdRng) -> Fault {
    let u: f64 = rng.random();
    let table = [
        (f.server_error, Fault::ServerError),
        (f.unavailable, Fault::Unavailable),
        (f.timeout, Fault::Timeout),
        (f.in_band_error, Fault::InBandError),
        (f.malformed_json, Fault::MalformedJson),
        (f.schema_violation, Fault::SchemaViolation),
    ];
    let mut acc = 0.0;
    for (rate, fault) in table {
        acc += rate;
        if u < acc {
            return fault;
        }
    }
    Fault::None
}

fn directives(messages: &[Value], model: &str, tier: Tier) -> Directives {
    let repair_turn = messages
        .iter()
        .any(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
    let mut out = Directives::default();
    for text in messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .filter_map(|m| m.get("content").and_then(Value::as_str))
    {
        let mut rest = text;
        while let Some(start) = rest.find("[sim:") {
            let after = &rest[start + 5..];
            let Some(end) = after.find(']') else { break };
            let spec = &after[..end];
            rest = &after[end..];
            let (spec, target) = match spec.split_once('@') {
                Some((s, t)) => (s, Some(t)),
                None => (spec, None),
            };
            let (kind, always) = match spec.strip_suffix(":always") {
                Some(k) => (k, true),
                None => (spec, false),
            };
            if repair_turn && !always {
                continue;
            }
            let hits = match target {
                None => true,
                Some("cheap") => tier == Tier::Cheap,
                Some("strong") => tier == Tier::Strong,
                Some(name) => name == model,
            };
            if !hits {
                continue;
            }
            match kind {
                "server_error" => out.fault = Some(Fault::ServerError),
                "unavailable" => out.fault = Some(Fault::Unavailable),
                "timeout" => out.fault = Some(Fault::Timeout),
                "in_band_error" => out.fault = Some(Fault::InBandError),
                "malformed_json" => out.fault = Some(Fault::MalformedJson),
                "schema_violation" => out.fault = Some(Fault::SchemaViolation),
                "ok" => out.fault = Some(Fault::None),
                "low_confidence" => out.confidence = Some(0.2),
                "high_confidence" => out.confidence = Some(0.97),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn directives_apply_to_first_turn_unless_always() {
        let first = [user("hello [sim:schema_violation] there")];
        let d = directives(&first, "m", Tier::Cheap);
        assert_eq!(d.fault, Some(Fault::SchemaViolation));
        let repair = [
            user("hello [sim:schema_violation]"),
            json!({"role": "assistant", "content": "{}"}),
            user("fix it"),
        ];
        assert_eq!(directives(&repair, "m", Tier::Cheap).fault, None);
        let always = [
            user("[sim:server_error:always@cheap] x"),
            json!({"role": "assistant", "content": "{}"}),
        ];
        assert_eq!(
            directives(&always, "m", Tier::Cheap).fault,
            Some(Fault::ServerError)
        );
        assert_eq!(directives(&always, "m", Tier::Strong).fault, None);
    }

    #[test]
    fn fault_draw_follows_rates() {
        let f = FaultRates {
            server_error: 0.25,
            schema_violation: 0.25,
            ..FaultRates::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let n = 4000;
        let errors = (0..n)
            .filter(|_| draw_fault(&f, &mut rng) == Fault::ServerError)
            .count();
        assert!((800..1200).contains(&errors), "{errors}");
    }
}
