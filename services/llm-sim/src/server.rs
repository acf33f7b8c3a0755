//! The HTTP face of the simulator: OpenAI chat completions at `/v1/chat/completions` and
//! `/{provider}/v1/chat/completions`, Anthropic messages at `/v1/messages` and
//! `/{provider}/v1/messages`, counters at `/sim/stats`, and runtime fault control at
//! `/sim/providers/{provider}/faults`.
//!
//! Prompt directives let a test force one behaviour for one job without a special profile:
//! `[sim:KIND]` in a user message forces KIND on the first turn of a conversation (a repair
//! re-ask, which carries an assistant turn, is answered normally); `[sim:KIND:always]` forces it
//! on every turn; `@TARGET` after KIND limits it to one model or one tier (`@cheap`, `@strong`).
//! KIND is one of `server_error`, `unavailable`, `timeout`, `in_band_error`, `malformed_json`,
//! `schema_violation`, `content_filter`, `low_confidence`, `high_confidence`.

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
use rand_distr::{Beta, Distribution, LogNormal, Normal};
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
        .route("/v1/messages", post(messages_bare))
        .route("/{provider}/v1/messages", post(messages_provider))
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
            None,
        ),
    }
}

async fn chat_bare(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(sim, None, headers, body, Api::OpenAi).await
}

async fn chat_provider(
    State(sim): State<Arc<Simulator>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(sim, Some(provider), headers, body, Api::OpenAi).await
}

async fn messages_bare(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(sim, None, headers, body, Api::Anthropic).await
}

async fn messages_provider(
    State(sim): State<Arc<Simulator>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(sim, Some(provider), headers, body, Api::Anthropic).await
}

/// Which wire format a request came in (and its answer goes out) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
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
    ContentFilter,
}

#[derive(Debug, Default, Clone, Copy)]
struct Directives {
    fault: Option<Fault>,
    confidence: Option<f64>,
}

/// A request in either API, reduced to what the simulator needs.
struct ChatInput {
    model: String,
    /// (role, text) in order; the system prompt, if any, first.
    messages: Vec<(String, String)>,
    schema: Option<Value>,
    /// Anthropic: the tool to answer with (structured output through a forced tool call).
    tool: Option<String>,
    /// OpenAI: token logprobs were asked for.
    logprobs: bool,
}

/// The simulator's answer before it is put in a wire format.
enum Outcome {
    Error {
        status: StatusCode,
        kind: &'static str,
        message: String,
        retry_after: Option<u64>,
    },
    InBandError,
    Answer {
        tool: Option<String>,
        content: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        filtered: bool,
        /// Tokens of `content` with their logprobs, when asked for.
        logprobs: Option<Vec<(String, f64)>>,
    },
}

fn fail(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::Error {
        status,
        kind,
        message: message.into(),
        retry_after: None,
    }
}

async fn serve(
    sim: Arc<Simulator>,
    provider: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Response {
    let _guard = sim.stats.enter();
    let profile = sim.profile();
    let parsed = serde_json::from_slice::<Value>(&body);
    let model = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("model").and_then(Value::as_str))
        .unwrap_or("-")
        .to_string();
    let outcome = match parsed {
        Ok(request) => match read_input(&request, api) {
            Ok(input) => simulate(&sim, &profile, provider.as_deref(), &headers, input).await,
            Err(message) => fail(StatusCode::BAD_REQUEST, "invalid_request_error", message),
        },
        Err(e) => fail(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("request body is not JSON: {e}"),
        ),
    };
    let (status, response) = match api {
        Api::OpenAi => openai_response(&model, outcome),
        Api::Anthropic => anthropic_response(&model, outcome),
    };
    sim.stats
        .record(provider.as_deref().unwrap_or("-"), &model, status.as_u16());
    response
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn read_input(request: &Value, api: Api) -> Result<ChatInput, String> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or("`model` is required")?
        .to_string();
    let raw = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` is required")?;
    let mut messages = Vec::new();
    if api == Api::Anthropic {
        if let Some(system) = request.get("system") {
            messages.push(("system".to_string(), text_of(system)));
        }
        if request.get("max_tokens").and_then(Value::as_u64).is_none() {
            return Err("max_tokens: Field required".into());
        }
    }
    for m in raw {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user")
            .to_string();
        messages.push((role, text_of(m.get("content").unwrap_or(&Value::Null))));
    }
    let (schema, tool) = match api {
        Api::OpenAi => (
            request
                .pointer("/response_format/json_schema/schema")
                .cloned(),
            None,
        ),
        Api::Anthropic => {
            let forced = request.pointer("/tool_choice/name").and_then(Value::as_str);
            let tool = request
                .get("tools")
                .and_then(Value::as_array)
                .and_then(|tools| {
                    tools.iter().find(|t| {
                        forced.is_none_or(|f| t.get("name").and_then(Value::as_str) == Some(f))
                    })
                });
            match tool {
                Some(t) => (
                    t.get("input_schema").cloned(),
                    t.get("name").and_then(Value::as_str).map(str::to_string),
                ),
                None => (request.pointer("/output_format/schema").cloned(), None),
            }
        }
    };
    Ok(ChatInput {
        logprobs: api == Api::OpenAi
            && request.get("logprobs").and_then(Value::as_bool) == Some(true),
        model,
        messages,
        schema,
        tool,
    })
}

async fn simulate(
    sim: &Simulator,
    profile: &Profile,
    provider: Option<&str>,
    headers: &HeaderMap,
    input: ChatInput,
) -> Outcome {
    let key = bearer(headers).unwrap_or("anonymous");
    let known = profile.keys.get(key);
    let rpm = known.map_or(profile.default_key_rpm, |k| k.rpm);
    if let Err(wait) = sim.stats.admit(key, &key_label(key), rpm, Instant::now()) {
        return Outcome::Error {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "rate limit of {} requests/min reached for this key",
                rpm.unwrap_or(0)
            ),
            retry_after: Some(wait.as_secs_f64().ceil() as u64),
        };
    }
    if known.is_some_and(|k| k.revoked) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key / bearer token",
        );
    }
    if known.is_some_and(|k| k.out_of_credit) {
        return fail(
            StatusCode::PAYMENT_REQUIRED,
            "billing_error",
            "this key has no credit left",
        );
    }
    let provider_profile = provider.and_then(|p| profile.providers.get(p));
    let served = provider_profile
        .is_none_or(|p| p.models.is_empty() || p.models.iter().any(|m| m == &input.model));
    let Some(model) = profile.models.get(&input.model).filter(|_| served) else {
        return fail(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!(
                "The model `{}` does not exist or is not served here",
                input.model
            ),
        );
    };
    let prompt_chars: usize = input.messages.iter().map(|(_, t)| t.len()).sum();
    let prompt_tokens = (prompt_chars / 4 + 1) as u64;
    if let Some(limit) = model.context_length
        && prompt_tokens > limit
    {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "This model's maximum context length is {limit} tokens; the prompt has {prompt_tokens} tokens"
            ),
        );
    }

    let conversation = serde_json::to_string(&input.messages).unwrap_or_default();
    let content_seed = crate::fnv1a_parts(&[
        &profile.seed.to_le_bytes(),
        input.model.as_bytes(),
        conversation.as_bytes(),
    ]);
    let fault_seed = crate::fnv1a_parts(&[
        &content_seed.to_le_bytes(),
        provider.unwrap_or("-").as_bytes(),
        b"fault",
    ]);
    let directives = if profile.directives {
        directives(&input.messages, &input.model, model.tier)
    } else {
        Directives::default()
    };
    let faults = profile.faults_for(provider, model);
    let fault = directives
        .fault
        .unwrap_or_else(|| draw_fault(&faults, &mut StdRng::seed_from_u64(fault_seed)));

    let mut rng = StdRng::seed_from_u64(content_seed);
    let scale = profile.latency_scale.max(0.0)
        * provider_profile.map_or(1.0, |p| p.latency_multiplier.max(0.0));
    let ttft = sample_latency(model, &mut rng).mul_f64(scale);

    match fault {
        Fault::ServerError => {
            tokio::time::sleep(ttft).await;
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "simulated internal error",
            );
        }
        Fault::Unavailable => {
            tokio::time::sleep(ttft / 4).await;
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded_error",
                "simulated outage: provider unavailable",
            );
        }
        Fault::Timeout => {
            tokio::time::sleep(profile.timeout_hang).await;
            return fail(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "simulated upstream timeout",
            );
        }
        _ => {}
    }

    // Oracle mode: the caller passed the gold answer. The model is right with probability
    // equal to the confidence it reports, and that confidence is drawn around its accuracy:
    // calibrated by construction, so the gate and the cascade can be measured against labels.
    let oracle = oracle(headers);
    let confidence = directives.confidence.unwrap_or_else(|| {
        if oracle.is_some() {
            // Beta around the model's accuracy, as a calibrated model's confidences spread:
            // most answers sure, a tail of unsure ones.
            let (a, b) = (
                model.accuracy * ORACLE_CONCENTRATION,
                (1.0 - model.accuracy) * ORACLE_CONCENTRATION,
            );
            Beta::new(a.max(1e-3), b.max(1e-3))
                .map(|d| d.sample(&mut rng))
                .unwrap_or(model.accuracy)
                .clamp(0.01, 0.99)
        } else {
            Normal::new(model.confidence.mean, model.confidence.spread.max(0.0))
                .map(|d| d.sample(&mut rng))
                .unwrap_or(model.confidence.mean)
                .clamp(0.01, 0.99)
        }
    });
    // An out-of-scope query (the gold answer is the out-of-scope label) that this model
    // confidently maps to some intent: wrong, and sure of it.
    let confused = model.oos_confusion > 0.0
        && oracle.as_ref().is_some_and(|g| {
            g.values()
                .any(|v| v.as_str() == Some(model.oos_label.as_str()))
        })
        && rng.random::<f64>() < model.oos_confusion;
    let confidence = if confused {
        0.90 + 0.09 * rng.random::<f64>()
    } else {
        confidence
    };
    // What the model reports: its real probability of being right, pushed towards 1 by the
    // profile's overconfidence. Right answers and logprobs follow the real probability.
    let reported =
        (confidence + (1.0 - confidence) * model.overconfidence.clamp(0.0, 1.0)).clamp(0.01, 0.99);
    let style = AnswerStyle {
        confidence: if directives.confidence.is_some() {
            confidence
        } else {
            reported
        },
    };
    let mut content = match (&input.schema, fault) {
        (Some(s), Fault::SchemaViolation) => generate::violating(s, &mut rng, style).to_string(),
        (Some(s), _) => {
            let mut answer = generate::conforming(s, &mut rng, style);
            if let Some(gold) = &oracle {
                let right = !confused && rng.random::<f64>() < confidence;
                generate::apply_gold(&mut answer, s, gold, right, &mut rng);
            }
            answer.to_string()
        }
        (None, _) => format!("This is a simulated answer from {}.", input.model),
    };
    if fault == Fault::MalformedJson {
        let cut = content.len() / 2;
        content = content.chars().take(cut).collect();
    }
    let completion_tokens = (content.len() / 4 + 1) as u64;
    let generation =
        Duration::from_secs_f64(completion_tokens as f64 / model.tokens_per_s.max(1.0) * scale);
    tokio::time::sleep(ttft + generation).await;
    if fault == Fault::InBandError {
        return Outcome::InBandError;
    }
    let logprobs = input.logprobs.then(|| {
        let decided: Vec<String> = match (&oracle, &input.schema) {
            (Some(gold), _) => gold.keys().cloned().collect(),
            (None, Some(s)) => generate::enum_fields(s),
            (None, None) => Vec::new(),
        };
        generate::token_logprobs(&content, &decided, confidence)
    });
    Outcome::Answer {
        tool: input.tool,
        content,
        prompt_tokens,
        completion_tokens,
        filtered: fault == Fault::ContentFilter,
        logprobs,
    }
}

fn openai_response(model: &str, outcome: Outcome) -> (StatusCode, Response) {
    match outcome {
        Outcome::Error {
            status,
            kind,
            message,
            retry_after,
        } => (status, error(status, kind, &message, retry_after)),
        Outcome::InBandError => {
            let body = json!({
                "id": "chatcmpl-sim-error", "object": "chat.completion", "model": model, "choices": [],
                "error": {"message": "simulated upstream error", "code": 502}
            });
            (StatusCode::OK, axum::Json(body).into_response())
        }
        Outcome::Answer {
            content,
            prompt_tokens,
            completion_tokens,
            filtered,
            logprobs,
            ..
        } => {
            let logprobs = logprobs.map(|tokens| {
                json!({"content": tokens.iter().map(|(t, lp)| json!({
                    "token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []
                })).collect::<Vec<_>>()})
            });
            let (content, finish) = if filtered {
                (Value::Null, "content_filter")
            } else {
                (json!(content), "stop")
            };
            let body = json!({
                "id": format!("chatcmpl-sim-{:016x}", crate::fnv1a(model.as_bytes()) ^ prompt_tokens),
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish, "logprobs": logprobs}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}
            });
            (StatusCode::OK, axum::Json(body).into_response())
        }
    }
}

fn anthropic_response(model: &str, outcome: Outcome) -> (StatusCode, Response) {
    match outcome {
        Outcome::Error {
            status,
            kind,
            message,
            retry_after,
        } => {
            let body = json!({"type": "error", "error": {"type": kind, "message": message}});
            let mut resp = (status, axum::Json(body)).into_response();
            if let Some(secs) = retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            (status, resp)
        }
        Outcome::InBandError => {
            // Anthropic reports overload mid-request as 529.
            let status = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": "simulated overload"}});
            (status, (status, axum::Json(body)).into_response())
        }
        Outcome::Answer {
            tool,
            content,
            prompt_tokens,
            completion_tokens,
            filtered,
            ..
        } => {
            let parsed: Option<Value> =
                serde_json::from_str(&content).ok().filter(Value::is_object);
            let (blocks, stop) = if filtered {
                (json!([]), "refusal")
            } else if let (Some(name), Some(input)) = (tool, parsed) {
                (
                    json!([{"type": "tool_use", "id": "toolu_sim", "name": name, "input": input}]),
                    "tool_use",
                )
            } else {
                (json!([{"type": "text", "text": content}]), "end_turn")
            };
            let body = json!({
                "id": "msg_sim", "type": "message", "role": "assistant", "model": model,
                "content": blocks, "stop_reason": stop,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
            });
            (StatusCode::OK, axum::Json(body).into_response())
        }
    }
}

fn error(status: StatusCode, kind: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// In oracle mode confidence is Beta(accuracy·κ, (1 − accuracy)·κ) with this κ.
pub const ORACLE_CONCENTRATION: f64 = 4.0;

/// The header that carries the gold answer in oracle mode (a JSON object of field values).
pub const ORACLE_HEADER: &str = "x-sim-oracle";

fn oracle(headers: &HeaderMap) -> Option<serde_json::Map<String, Value>> {
    let text = headers.get(ORACLE_HEADER)?.to_str().ok()?;
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
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

fn directives(messages: &[(String, String)], model: &str, tier: Tier) -> Directives {
    let repair_turn = messages.iter().any(|(role, _)| role == "assistant");
    let mut out = Directives::default();
    for text in messages
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, t)| t.as_str())
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
                "content_filter" => out.fault = Some(Fault::ContentFilter),
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

    fn user(text: &str) -> (String, String) {
        ("user".into(), text.into())
    }

    fn assistant(text: &str) -> (String, String) {
        ("assistant".into(), text.into())
    }

    #[test]
    fn directives_apply_to_first_turn_unless_always() {
        let first = [user("hello [sim:schema_violation] there")];
        let d = directives(&first, "m", Tier::Cheap);
        assert_eq!(d.fault, Some(Fault::SchemaViolation));
        let repair = [
            user("hello [sim:schema_violation]"),
            assistant("{}"),
            user("fix it"),
        ];
        assert_eq!(directives(&repair, "m", Tier::Cheap).fault, None);
        let always = [user("[sim:server_error:always@cheap] x"), assistant("{}")];
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
