//! Typed telemetry events: each one small struct with one `emit`, so metric names and labels
//! stay in one place. Events go through a [`Telemetry`] handle that the composition root passes
//! down: they are recorded as metrics only when a Prometheus recorder is installed (`switchyard
//! run --metrics-addr`), and counted in the admin page's [`AdminTally`] only when that page runs
//! (`--admin-addr`); otherwise they cost next to nothing. There is no global state here.

pub mod otlp;
pub mod tally;

use std::sync::Arc;
use std::time::Duration;

use crate::envelope::{AttemptClass, JobEnd};

pub use tally::AdminTally;

/// Where events go: metrics (when a recorder is installed) and the admin tally (when the admin
/// page runs). Cheap to clone; the default records nothing.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    metrics: bool,
    admin: Option<Arc<AdminTally>>,
}

impl Telemetry {
    /// Records metrics (a recorder must be installed) and, with `admin`, counts for the admin
    /// page.
    pub fn new(metrics: bool, admin: Option<Arc<AdminTally>>) -> Self {
        Self { metrics, admin }
    }

    fn enabled(&self) -> bool {
        self.metrics
    }

    /// The admin page's tally, when it runs.
    pub fn admin(&self) -> Option<&AdminTally> {
        self.admin.as_deref()
    }
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
    "switchyard_audits_total",
];

/// What each metric means: the `# HELP` line on `/metrics`.
pub const METRIC_HELP: &[(&str, &str)] = &[
    (
        "switchyard_jobs_total",
        "Jobs that left a stage, by outcome (result, escalated, dead_letter).",
    ),
    (
        "switchyard_stage_duration_seconds",
        "Time from taking a job's message to the broker acknowledging its output, per stage.",
    ),
    (
        "switchyard_provider_request_duration_seconds",
        "Duration of one provider call (an attempt), per provider and model.",
    ),
    (
        "switchyard_attempts_total",
        "Provider calls, by provider, model and failure class (ok for success).",
    ),
    (
        "switchyard_breaker_state",
        "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "switchyard_limiter_wait_milliseconds_total",
        "Time jobs waited for rate-limit capacity at a provider, in milliseconds.",
    ),
    (
        "switchyard_in_flight_jobs",
        "Jobs in flight in a stage worker now.",
    ),
    (
        "switchyard_consumer_lag",
        "Messages behind the end of the stage's input partition (librdkafka statistics).",
    ),
    (
        "switchyard_tokens_total",
        "Tokens billed, by provider, model and kind (prompt, completion).",
    ),
    (
        "switchyard_cost_micro_usd_total",
        "Cost of provider calls in micro-dollars, by pipeline, stage, tenant, provider and model.",
    ),
    (
        "switchyard_audits_total",
        "Audited jobs by verdict (agreed, disagreed, inconclusive): the gate's precision on live traffic.",
    ),
];

/// Gives every metric its `# HELP` line, and starts the counters whose absence would read as
/// "no data" rather than zero (the limiter wait of each provider). Call once the recorder is
/// installed.
pub fn describe(providers: &[String]) {
    for (name, help) in METRIC_HELP {
        if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
    for p in providers {
        metrics::counter!("switchyard_limiter_wait_milliseconds_total", "provider" => p.clone())
            .increment(0);
    }
}

/// A job left a stage: published as a result, escalated, or dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct JobFinished<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// Stage.
    pub stage: &'a str,
    /// How the job left.
    pub outcome: JobEnd,
    /// From taking the message to the broker's acknowledgement of the output.
    pub duration: Duration,
}

impl JobFinished<'_> {
    /// Records it.
    pub fn emit(&self, t: &Telemetry) {
        if let Some(admin) = t.admin() {
            admin.count_job(self.stage, self.outcome);
        }
        if !t.enabled() {
            return;
        }
        let labels = [
            ("pipeline", self.pipeline.to_string()),
            ("stage", self.stage.to_string()),
        ];
        metrics::counter!("switchyard_jobs_total", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "outcome" => self.outcome.as_str()).increment(1);
        metrics::histogram!("switchyard_stage_duration_seconds", &labels)
            .record(self.duration.as_secs_f64());
    }
}

/// A tenant spent money on a job's attempts (counted for the admin page's cost today).
#[derive(Debug, Clone, Copy)]
pub struct TenantSpent<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// What the attempts cost.
    pub cost: crate::money::MicroUsd,
}

impl TenantSpent<'_> {
    /// Records it.
    pub fn emit(&self, t: &Telemetry) {
        if let Some(admin) = t.admin()
            && self.cost.0 > 0
        {
            admin.count_cost(self.tenant, self.cost.0, crate::envelope::now().date());
        }
    }
}

/// A later stage re-did an accepted job for an audit.
#[derive(Debug, Clone, Copy)]
pub struct Audited<'a> {
    /// Pipeline.
    pub pipeline: &'a str,
    /// The audited stage.
    pub stage: &'a str,
    /// Whether the answers agreed (none: nothing to compare).
    pub agreed: Option<bool>,
}

impl Audited<'_> {
    /// Records it.
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
            return;
        }
        let verdict = match self.agreed {
            Some(true) => "agreed",
            Some(false) => "disagreed",
            None => "inconclusive",
        };
        metrics::counter!("switchyard_audits_total", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "verdict" => verdict).increment(1);
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
    pub class: AttemptClass,
    /// How long the call took.
    pub duration: Duration,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// Cost, micro-dollars.
    pub cost_micro_usd: u64,
    /// The job's tenant when the pipeline has a tenants file (a bounded set), else empty.
    pub tenant: &'a str,
}

impl AttemptEnded<'_> {
    /// Records it.
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
            return;
        }
        let (p, m) = (self.provider.to_string(), self.model.to_string());
        metrics::counter!("switchyard_attempts_total", "provider" => p.clone(), "model" => m.clone(), "class" => self.class.as_str()).increment(1);
        metrics::histogram!("switchyard_provider_request_duration_seconds", "provider" => p.clone(), "model" => m.clone())
            .record(self.duration.as_secs_f64());
        metrics::counter!("switchyard_tokens_total", "provider" => p.clone(), "model" => m.clone(), "kind" => "prompt")
            .increment(self.prompt_tokens);
        metrics::counter!("switchyard_tokens_total", "provider" => p.clone(), "model" => m.clone(), "kind" => "completion")
            .increment(self.completion_tokens);
        metrics::counter!("switchyard_cost_micro_usd_total", "pipeline" => self.pipeline.to_string(), "stage" => self.stage.to_string(), "tenant" => self.tenant.to_string(), "provider" => p, "model" => m)
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
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
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
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
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
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
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
    pub fn emit(&self, t: &Telemetry) {
        if !t.enabled() {
            return;
        }
        metrics::gauge!("switchyard_breaker_state", "provider" => self.provider.to_string(), "model" => self.model.to_string())
            .set(f64::from(self.state));
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn every_metric_has_a_help_text() {
        let described: Vec<&str> = METRIC_HELP.iter().map(|(n, _)| *n).collect();
        assert_eq!(described, METRICS);
    }
}
