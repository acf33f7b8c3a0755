//! What an operations team looks at while `switchyard run` works: Prometheus `/metrics`,
//! `/healthz` and `/readyz` on the metrics address, and an admin page on the admin address —
//! stage throughput and escalation rate, provider health and breakers, cost today by tenant,
//! and the dead-letter topic with a filter and a replay button.
//!
//! It owns the HTTP side only. The numbers come from the typed events of [`crate::telemetry`]
//! (kept here in a small in-process tally as well as in the Prometheus recorder), the provider
//! set's health, and the pipeline's topics (read on request for the dead letters).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

use crate::config::Pipeline;
use crate::kafka::KafkaSettings;
use crate::provider::ProviderSet;
use crate::report::escape_html as esc;
use crate::runner::Readiness;

/// Shared by the servers and the running pipeline.
pub struct Ops {
    pipeline: Arc<Pipeline>,
    kafka: KafkaSettings,
    readiness: Arc<Readiness>,
    providers: OnceLock<Arc<ProviderSet>>,
    prometheus: Option<PrometheusHandle>,
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

/// The in-process tally behind the admin page (the same events feed Prometheus).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Jobs by (stage, outcome).
    pub jobs: BTreeMap<(String, String), u64>,
    /// Cost by tenant on `day` (UTC), micro-dollars.
    pub cost_today: BTreeMap<String, u64>,
    /// The UTC day `cost_today` is for.
    pub day: Option<time::Date>,
}

static TALLY_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn tally() -> &'static Mutex<Tally> {
    static TALLY: OnceLock<Mutex<Tally>> = OnceLock::new();
    TALLY.get_or_init(|| Mutex::new(Tally::default()))
}

/// Counts a finished job for the admin page.
pub fn count_job(stage: &str, outcome: &str) {
    if !TALLY_ON.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut t = tally().lock().unwrap_or_else(|p| p.into_inner());
    *t.jobs
        .entry((stage.to_string(), outcome.to_string()))
        .or_default() += 1;
}

/// Adds a job's cost to its tenant's total for today.
pub fn count_cost(tenant: &str, micro_usd: u64) {
    if !TALLY_ON.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let today = crate::envelope::now().date();
    let mut t = tally().lock().unwrap_or_else(|p| p.into_inner());
    if t.day != Some(today) {
        t.cost_today.clear();
        t.day = Some(today);
    }
    *t.cost_today.entry(tenant.to_string()).or_default() += micro_usd;
}

/// Histogram buckets for latencies, seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Ops {
    /// Ops state for `pipeline`; with `metrics`, the Prometheus recorder is installed.
    pub fn new(
        pipeline: Arc<Pipeline>,
        kafka: KafkaSettings,
        readiness: Arc<Readiness>,
        metrics: bool,
    ) -> Result<Self, String> {
        TALLY_ON.store(true, std::sync::atomic::Ordering::Relaxed);
        let prometheus = if metrics {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| format!("metrics: {e}"))?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| format!("metrics recorder: {e}"))?;
            crate::telemetry::enable_metrics();
            Some(handle)
        } else {
            None
        };
        Ok(Self {
            pipeline,
            kafka,
            readiness,
            providers: OnceLock::new(),
            prometheus,
            started: Instant::now(),
            broker_ok: Mutex::new(None),
        })
    }

    /// Called by the runner once its providers exist.
    pub fn set_providers(&self, providers: Arc<ProviderSet>) {
        let _ = self.providers.set(providers);
    }

    fn breakers(&self) -> Vec<crate::health::EndpointReport> {
        self.providers
            .get()
            .map(|p| p.health.report(Instant::now()))
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
        let topic = self.pipeline.topics.intake.clone();
        let ok = tokio::task::spawn_blocking(move || {
            crate::produce::missing_topics(&kafka, &[topic]).is_ok_and(|m| m.is_empty())
        })
        .await
        .unwrap_or(false);
        *self.broker_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), ok));
        ok
    }

    /// Ready: every stage this process runs owns partitions, and the broker answers.
    async fn ready(&self) -> Result<(), String> {
        let assigned = self.readiness.assigned();
        let waiting: Vec<&String> = assigned
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| s)
            .collect();
        if assigned.is_empty() {
            return Err("no stage has joined its consumer group yet".into());
        }
        if !waiting.is_empty() {
            return Err(format!("stages without partitions: {waiting:?}"));
        }
        if !self.broker_answers().await {
            return Err(format!(
                "the brokers at {} do not answer",
                self.kafka.brokers
            ));
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
pub async fn serve_metrics(
    ops: Arc<Ops>,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, String> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops);
    serve(app, addr, shutdown).await
}

/// Serves the admin page on `addr` until `shutdown`.
pub async fn serve_admin(
    ops: Arc<Ops>,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, String> {
    let app = Router::new()
        .route("/", get(admin_page))
        .route("/dlq/replay", post(replay))
        .with_state(ops);
    serve(app, addr, shutdown).await
}

async fn serve(
    app: Router,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
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
        .emit();
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

#[derive(Debug, Deserialize)]
struct DlqQuery {
    #[serde(default)]
    reason: Option<String>,
}

async fn admin_page(State(ops): State<Arc<Ops>>, Query(q): Query<DlqQuery>) -> Html<String> {
    let t = tally().lock().unwrap_or_else(|p| p.into_inner()).clone();
    let p = &ops.pipeline;
    let secs = ops.started.elapsed().as_secs_f64().max(1.0);
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>Switchyard admin</title><style>body{font-family:system-ui,sans-serif;margin:2rem;color:#1a202c}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border-bottom:1px solid #e2e8f0;padding:.3rem .7rem;text-align:left}th{background:#f7fafc}.num{text-align:right;font-variant-numeric:tabular-nums}.open{color:#c53030;font-weight:600}.closed{color:#2f855a}button{cursor:pointer}</style></head><body>");
    h.push_str(&format!(
        "<h1>Switchyard — {}</h1><p>{} · up {:.0} s · <a href=\"/\">refresh</a></p>",
        esc(&p.name),
        esc(&p.description),
        secs
    ));

    // Stages.
    h.push_str("<h2>Stages</h2><table id=\"stages\"><tr><th>stage</th><th>topic</th><th class=\"num\">partitions</th><th class=\"num\">results</th><th class=\"num\">escalated</th><th class=\"num\">dead letters</th><th class=\"num\">jobs/s</th></tr>");
    let assigned = ops.readiness.assigned();
    let count = |stage: &str, outcome: &str| {
        t.jobs
            .get(&(stage.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    };
    for s in &p.stages {
        let (r, e, d) = (
            count(&s.name, "result"),
            count(&s.name, "escalated"),
            count(&s.name, "dead_letter"),
        );
        h.push_str(&format!(
            "<tr data-stage=\"{0}\"><td>{0}</td><td>{1}</td><td class=\"num\">{2}</td><td class=\"num jobs-result\">{3}</td><td class=\"num\">{4}</td><td class=\"num\">{5}</td><td class=\"num\">{6:.1}</td></tr>",
            esc(&s.name),
            esc(&s.input_topic),
            assigned.get(&s.name).copied().unwrap_or(0),
            r,
            e,
            d,
            (r + e + d) as f64 / secs
        ));
    }
    h.push_str("</table>");
    if let Some(first) = p.stages.first() {
        let (r, e, d) = (
            count(&first.name, "result"),
            count(&first.name, "escalated"),
            count(&first.name, "dead_letter"),
        );
        let total = (r + e + d).max(1);
        h.push_str(&format!(
            "<p>Escalation rate at <b>{}</b>: <span id=\"escalation-rate\">{:.1}%</span> of {} jobs.</p>",
            esc(&first.name),
            e as f64 * 100.0 / total as f64,
            r + e + d
        ));
    }

    // Providers.
    h.push_str("<h2>Providers</h2><table id=\"providers\"><tr><th>endpoint</th><th>breaker</th><th class=\"num\">calls</th><th class=\"num\">failures</th><th class=\"num\">error rate</th><th class=\"num\">latency ms</th></tr>");
    for r in ops.breakers() {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td><td class=\"num\">{}</td></tr>",
            esc(&r.endpoint),
            if r.breaker == "closed" { "closed" } else { "open" },
            esc(&r.breaker),
            r.calls,
            r.failures,
            r.error_rate,
            r.latency_ms.map_or("-".into(), |l| format!("{l:.0}"))
        ));
    }
    h.push_str("</table>");

    // Cost today.
    h.push_str("<h2>Cost today by tenant (UTC)</h2><table id=\"cost\"><tr><th>tenant</th><th class=\"num\">USD</th></tr>");
    for (tenant, micro) in &t.cost_today {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{:.6}</td></tr>",
            esc(if tenant.is_empty() { "(none)" } else { tenant }),
            *micro as f64 / 1e6
        ));
    }
    h.push_str("</table>");

    // Dead letters.
    let filter = crate::dlq::Filter {
        reason: q.reason.clone().filter(|r| !r.is_empty()),
        since: None,
        limit: None,
    };
    h.push_str(&format!(
        "<h2>Dead letters</h2><form method=\"get\" action=\"/\">reason <input name=\"reason\" id=\"reason\" value=\"{}\"> <button type=\"submit\">filter</button></form>",
        esc(q.reason.as_deref().unwrap_or(""))
    ));
    match crate::dlq::read_picture(&ops.kafka, p, Duration::from_millis(700)).await {
        Err(e) => h.push_str(&format!(
            "<p>cannot read the dead-letter topic: {}</p>",
            esc(&e)
        )),
        Ok(picture) => {
            let rows = crate::dlq::list(&picture, &filter);
            h.push_str(&format!(
                "<table id=\"dlq\"><tr><th>failed at</th><th>job</th><th>tenant</th><th>stage</th><th>reason</th><th class=\"num\">redrives</th><th>detail</th><th></th></tr><caption>{} dead letters</caption>",
                rows.len()
            ));
            for r in rows.iter().rev().take(200) {
                let action = if r.resolved {
                    "done".to_string()
                } else if r.replayable {
                    format!(
                        "<form method=\"post\" action=\"/dlq/replay\"><input type=\"hidden\" name=\"job_id\" value=\"{0}\"><button class=\"replay\" data-job=\"{0}\" type=\"submit\">replay</button></form>",
                        esc(&r.job_id)
                    )
                } else {
                    "not replayable".to_string()
                };
                let detail: String = r.detail.chars().take(160).collect();
                h.push_str(&format!(
                    "<tr data-job=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"reason\">{}</td><td class=\"num redrives\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&r.job_id),
                    esc(&r.failed_at),
                    esc(&r.job_id),
                    esc(&r.tenant),
                    esc(&r.stage),
                    esc(&r.reason),
                    r.redrive_count,
                    esc(&detail),
                    action
                ));
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</body></html>");
    Html(h)
}

#[derive(Debug, Deserialize)]
struct ReplayForm {
    job_id: String,
}

async fn replay(State(ops): State<Arc<Ops>>, axum::Form(form): axum::Form<ReplayForm>) -> Response {
    let picture =
        match crate::dlq::read_picture(&ops.kafka, &ops.pipeline, Duration::from_millis(700)).await
        {
            Ok(p) => p,
            Err(e) => return (StatusCode::BAD_GATEWAY, esc(&e)).into_response(),
        };
    let only = crate::dlq::Picture {
        dead: picture
            .dead
            .into_iter()
            .filter(|d| d.job_id.as_deref() == Some(form.job_id.as_str()))
            .collect(),
        finished: picture.finished,
    };
    let (decisions, messages) =
        crate::dlq::plan_replay(&only, &ops.pipeline, &crate::dlq::Filter::default(), 3);
    let sent = match crate::dlq::send(&ops.kafka, messages).await {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_GATEWAY, esc(&e)).into_response(),
    };
    let what = decisions
        .first()
        .map_or("no such dead letter".to_string(), |d| d.action.clone());
    tracing::info!(job_id = %form.job_id, sent, action = %what, "admin: replay");
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>replay</title></head><body><p id=\"replayed\">{}: {} ({} sent)</p><p><a href=\"/\">back</a></p></body></html>",
        esc(&form.job_id),
        esc(&what),
        sent
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_today_is_summed_per_tenant() {
        TALLY_ON.store(true, std::sync::atomic::Ordering::Relaxed);
        count_cost("ops-test-a", 5);
        count_cost("ops-test-a", 7);
        let t = tally().lock().unwrap().clone();
        assert_eq!(t.cost_today.get("ops-test-a"), Some(&12));
    }
}
