//! What an operations team looks at while `switchyard run` works: Prometheus `/metrics`,
//! `/healthz` and `/readyz` on the metrics address, and an admin page on the admin address —
//! stage throughput and escalation rate, provider health and breakers, cost today by tenant,
//! and the dead-letter topic with a filter and a replay button.
//!
//! It owns the HTTP side only. The numbers come from the typed events of [`crate::telemetry`]
//! (kept here in a small in-process tally as well as in the Prometheus recorder), the provider
//! set's health, and the pipeline's topics (read on request for the dead letters).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub mod access;
mod admin;
pub mod html;

use crate::config::Pipeline;
use crate::intake::readiness::Readiness;
use crate::kafka::KafkaSettings;
use crate::route::health::Health;
use crate::telemetry::{AdminTally, Telemetry};

/// Shared by the servers and the running pipeline.
pub struct Ops {
    pipeline: Arc<Pipeline>,
    kafka: KafkaSettings,
    readiness: Arc<Readiness>,
    health: OnceLock<Arc<Health>>,
    audits: OnceLock<Arc<crate::audit::AuditBook>>,
    prometheus: Option<PrometheusHandle>,
    admin: Arc<AdminTally>,
    telemetry: Telemetry,
    started: Instant,
    broker_ok: Mutex<Option<(Instant, bool)>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("pipeline", &self.pipeline.name)
            .finish_non_exhaustive()
    }
}

/// Histogram buckets for latencies, seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Why `/readyz` says not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No stage has partitions yet.
    #[error("no stage has joined its consumer group yet")]
    NoStageJoined,
    /// These stages have none.
    #[error("stages without partitions: {0:?}")]
    StagesWithoutPartitions(Vec<String>),
    /// The brokers did not answer a metadata request.
    #[error("the brokers at {0} do not answer")]
    BrokersSilent(String),
}

/// Why the ops endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The Prometheus recorder could not be built or installed (one per process).
    #[error("metrics: {0}")]
    Metrics(String),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl Ops {
    /// Ops state for `pipeline`; with `metrics`, the Prometheus recorder is installed.
    pub fn new(
        pipeline: Arc<Pipeline>,
        kafka: KafkaSettings,
        readiness: Arc<Readiness>,
        metrics: bool,
    ) -> Result<Self, OpsError> {
        let prometheus = if metrics {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| OpsError::Metrics(e.to_string()))?
                .build_recorder();
            Some(recorder)
        } else {
            None
        };
        // Metrics go to Prometheus (`--metrics-addr`), to OTLP (OTEL_EXPORTER_OTLP_*), or both.
        let otlp = crate::telemetry::otlp::from_env().and_then(|o| o.take_recorder());
        let handle = prometheus.as_ref().map(|r| r.handle());
        let recording = prometheus.is_some() || otlp.is_some();
        let installed = match (prometheus, otlp) {
            (Some(p), Some(o)) => metrics::set_global_recorder(
                metrics_util::layers::FanoutBuilder::default()
                    .add_recorder(p)
                    .add_recorder(o)
                    .build(),
            )
            .map_err(|e| e.to_string()),
            (Some(p), None) => metrics::set_global_recorder(p).map_err(|e| e.to_string()),
            (None, Some(o)) => metrics::set_global_recorder(o).map_err(|e| e.to_string()),
            (None, None) => Ok(()),
        };
        installed.map_err(|e| OpsError::Metrics(format!("recorder: {e}")))?;
        if recording {
            let providers: Vec<String> = pipeline.providers.keys().cloned().collect();
            crate::telemetry::describe(&providers);
        }
        let prometheus = handle;
        let admin = Arc::new(AdminTally::default());
        let telemetry = Telemetry::new(recording, Some(admin.clone()));
        Ok(Self {
            pipeline,
            kafka,
            readiness,
            health: OnceLock::new(),
            audits: OnceLock::new(),
            prometheus,
            admin,
            telemetry,
            started: Instant::now(),
            broker_ok: Mutex::new(None),
        })
    }

    /// Called by the composition root once endpoint health is tracked.
    pub fn set_health(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    /// Called by the composition root with the stages' audit book.
    pub fn set_audits(&self, audits: Arc<crate::audit::AuditBook>) {
        let _ = self.audits.set(audits);
    }

    /// Where the running pipeline sends its events: metrics when they are on, and this page's
    /// tally.
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    fn breakers(&self) -> Vec<crate::route::health::EndpointReport> {
        self.health
            .get()
            .map(|h| h.report(Instant::now()))
            .unwrap_or_default()
    }

    /// Whether the broker answered a metadata request lately (cached for 5 s).
    async fn broker_answers(&self) -> bool {
        if let Some((at, ok)) = *self.broker_ok.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < Duration::from_secs(5)
        {
            return ok;
        }
        let kafka = self.kafka.clone();
        let topic = self.pipeline.all_topics().swap_remove(0);
        let ok = tokio::task::spawn_blocking(move || {
            crate::kafka::client::missing_topics(&kafka, &[topic]).is_ok_and(|m| m.is_empty())
        })
        .await
        .unwrap_or(false);
        *self.broker_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), ok));
        ok
    }

    /// Ready: every stage this process runs owns partitions, and the broker answers.
    async fn ready(&self) -> Result<(), NotReady> {
        let assigned = self.readiness.assigned();
        let waiting: Vec<String> = assigned
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| s.clone())
            .collect();
        if assigned.is_empty() {
            return Err(NotReady::NoStageJoined);
        }
        if !waiting.is_empty() {
            return Err(NotReady::StagesWithoutPartitions(waiting));
        }
        if !self.broker_answers().await {
            return Err(NotReady::BrokersSilent(self.kafka.brokers.clone()));
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
pub async fn serve_metrics(
    ops: Arc<Ops>,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, OpsError> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops);
    serve(app, addr, shutdown).await
}

/// Serves the admin page on `addr` until `shutdown` (see [`admin`]), behind `access` (see
/// [`access`]): the token on every route, the bound address as the only `Host`, same-origin
/// POSTs.
pub async fn serve_admin(
    ops: Arc<Ops>,
    addr: SocketAddr,
    access: access::AdminAccess,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, OpsError> {
    let (listener, bound) = listen(addr).await?;
    let gate = Arc::new(access::Gate::new(access, bound));
    let login = Router::new()
        .route("/login", get(access::login_page).post(access::login))
        .with_state(gate.clone());
    let app = Router::new()
        .route("/", get(admin::page))
        .route("/dlq/replay", post(admin::replay))
        .with_state(ops)
        .merge(login)
        .layer(axum::middleware::from_fn_with_state(gate, access::guard));
    spawn_server(listener, app, shutdown);
    Ok(bound)
}

async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), OpsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| OpsError::Listen { addr, source })?;
    Ok((listener, bound))
}

fn spawn_server(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
}

async fn serve(
    app: Router,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, OpsError> {
    let (listener, bound) = listen(addr).await?;
    spawn_server(listener, app, shutdown);
    Ok(bound)
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    // Breaker states are read when scraped.
    for r in ops.breakers() {
        let (provider, model) = r.endpoint.split_once(':').unwrap_or((&r.endpoint, ""));
        crate::telemetry::BreakerObserved {
            provider,
            model,
            state: match r.breaker.as_str() {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            },
        }
        .emit(&ops.telemetry);
    }
    match &ops.prometheus {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off\n").into_response(),
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.ready().await {
        Ok(()) => "ready\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
