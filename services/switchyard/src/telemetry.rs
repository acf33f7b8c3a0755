//! Logs and metrics. Logs: human-readable on stderr by default or JSON lines (`--log-format
//! json`), filtered by `SWITCHYARD_LOG` (or `RUST_LOG`), e.g. `SWITCHYARD_LOG=debug`. Metrics:
//! typed events, each one small struct with one `emit`, so metric names and labels stay in one
//! place; they are recorded once a Prometheus recorder is installed (`switchyard run
//! --metrics-addr`) and cost next to nothing otherwise.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    #[default]
    Human,
    /// One JSON object per line, with span fields (for log pipelines).
    Json,
}

/// Installs the global subscriber; `default` is the filter when no variable is set.
pub fn init(default: &str) {
    init_with(default, LogFormat::Human);
}

/// Installs the global subscriber in the given format.
pub fn init_with(default: &str, format: LogFormat) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns metric events on (once a recorder is installed); until then `emit` does nothing, so
/// a worker without `--metrics-addr` spends nothing building labels.
pub fn enable_metrics() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every metric name Switchyard records (the deploy dashboards are checked against this list).
pub const METRICS: &[&str] = &[
    "switchyard_jobs_total",
    "switchyard_stage_duration_seconds",
    "switchyard_provider_request_duration_seconds",
    "switchyard_attempts_total",
    "switchyard_breaker_state",
    "switchyard_limiter_wait_milliseconds_total",
    "switchyard_in_flight_jobs",
    "switchyard_consumer_lag",
    "switchyard_tokens_total",
    "switchyard_cost_micro_usd_total",
];

/// A job left a stage: published as a result, escalated, or dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct JobFinished<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// `result`, `escalated` or `dead_letter`.
    pub outcome: &'a str,
    /// From taking the message to the broker's acknowledgement of the output.
    pub duration: Duration,
}

impl JobFinished<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        let labels = [
            ("pipeline", self.pipeline.to_string()),
            ("stage", self.stage.to_string()),
        ];
        metrics::counter!("switchyard_jobs_total", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "outcome" => self.outcome.to_string()).increment(1);
        metrics::histogram!("switchyard_stage_duration_seconds", &labels)
            .record(self.duration.as_secs_f64());
    }
}

/// One LLM call ended.
#[derive(Debug, Clone, Copy)]
pub struct AttemptEnded<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// Provider.
    pub provider: &'a str,
    /// Catalog model.
    pub model: &'a str,
    /// Failure class (`ok` for success).
    pub class: &'a str,
    /// How long the call took.
    pub duration: Duration,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// Cost, micro-dollars.
    pub cost_micro_usd: u64,
}

impl AttemptEnded<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        let (p, m) = (self.provider.to_string(), self.model.to_string());
        metrics::counter!("switchyard_attempts_total", "provider" => p.clone(), "model" => m.clone(), "class" => self.class.to_string()).increment(1);
        metrics::histogram!("switchyard_provider_request_duration_seconds", "provider" => p.clone(), "model" => m.clone())
            .record(self.duration.as_secs_f64());
        metrics::counter!("switchyard_tokens_total", "provider" => p.clone(), "model" => m.clone(), "kind" => "prompt")
            .increment(self.prompt_tokens);
        metrics::counter!("switchyard_tokens_total", "provider" => p.clone(), "model" => m.clone(), "kind" => "completion")
            .increment(self.completion_tokens);
        metrics::counter!("switchyard_cost_micro_usd_total", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "provider" => p, "model" => m)
            .increment(self.cost_micro_usd);
    }
}

/// A job waited for rate-limit capacity at a provider.
#[derive(Debug, Clone, Copy)]
pub struct LimiterWaited<'a> {
    /// Provider.
    pub provider: &'a str,
    /// How long.
    pub waited: Duration,
}

impl LimiterWaited<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        metrics::counter!("switchyard_limiter_wait_milliseconds_total", "provider" => self.provider.to_string())
            .increment(self.waited.as_micros() as u64 / 1000);
    }
}

/// Jobs in flight in a stage, now.
#[derive(Debug, Clone, Copy)]
pub struct InFlight<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// How many.
    pub jobs: usize,
}

impl InFlight<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        metrics::gauge!("switchyard_in_flight_jobs", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string())
            .set(self.jobs as f64);
    }
}

/// A stage partition's consumer lag, as librdkafka's statistics report it.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLag<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// Partition.
    pub partition: i32,
    /// Messages behind the end of the partition.
    pub lag: i64,
}

impl ConsumerLag<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        metrics::gauge!("switchyard_consumer_lag", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "partition" => self.partition.to_string())
            .set(self.lag.max(0) as f64);
    }
}

/// An endpoint's circuit breaker, now.
#[derive(Debug, Clone, Copy)]
pub struct BreakerObserved<'a> {
    /// Provider.
    pub provider: &'a str,
    /// Catalog model.
    pub model: &'a str,
    /// 0 closed, 1 half-open, 2 open.
    pub state: u8,
}

impl BreakerObserved<'_> {
    /// Records it.
    pub fn emit(&self) {
        if !enabled() {
            return;
        }
        metrics::gauge!("switchyard_breaker_state", "provider" => self.provider.to_string(), "model" => self.model.to_string())
            .set(f64::from(self.state));
    }
}
