//! Endpoint health: smoothed latency, throughput and error rate (EWMA), and a circuit breaker
//! per endpoint: closed → open after `failures_to_open` consecutive failures → half-open after
//! `open_for`, when one probe call is let through → closed on success, open again on failure.
//!
//! Only failures that say something about the endpoint count (transient errors, bad output);
//! a 429 cools the key down instead, and a 400 is the request's fault.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::envelope::AttemptClass;
use crate::route::HealthView;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the instant passes.
    Open {
        /// Seconds left (for display).
        #[serde(skip)]
        until: Instant,
    },
    /// One probe is allowed; its outcome decides.
    HalfOpen {
        /// A probe is out.
        probing: bool,
    },
}

/// A circuit breaker. Pure: time is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                BreakerState::HalfOpen { probing: false }
            }
            s => s,
        }
    }

    /// Whether a call may go now; a half-open breaker lets exactly one through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: true } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
        }
    }

    /// A call succeeded.
    pub fn success(&mut self) {
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
    }

    /// A call failed in a way that counts against the endpoint.
    pub fn failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        let probing = matches!(self.state(now), BreakerState::HalfOpen { .. });
        if probing || self.consecutive_failures >= self.config.failures_to_open {
            self.state = BreakerState::Open {
                until: now + self.config.open_for,
            };
        }
    }
}

/// An exponentially weighted moving average.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    const ALPHA: f64 = 0.2;

    /// Adds a sample.
    pub fn add(&mut self, x: f64) {
        self.value = Some(match self.value {
            None => x,
            Some(v) => v + Self::ALPHA * (x - v),
        });
    }

    /// The average, once there is a sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[derive(Debug, Clone)]
struct EndpointHealth {
    breaker: Breaker,
    latency_ms: Ewma,
    throughput: Ewma,
    errors: Ewma,
    calls: u64,
    failures: u64,
}

/// One endpoint's figures, for display.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointReport {
    /// `provider:model`.
    pub endpoint: String,
    /// Breaker state.
    pub breaker: String,
    /// Smoothed latency.
    pub latency_ms: Option<f64>,
    /// Smoothed tokens/s.
    pub throughput: Option<f64>,
    /// Smoothed error rate.
    pub error_rate: f64,
    /// Calls seen.
    pub calls: u64,
    /// Failures seen.
    pub failures: u64,
}

/// Health of every endpoint a process calls.
#[derive(Debug, Default)]
pub struct Health {
    config: BreakerConfig,
    /// By provider, then model (looked up by `&str`, no allocation per call).
    endpoints: Mutex<HashMap<String, HashMap<String, EndpointHealth>>>,
}

/// Whether a failure class says something about the endpoint itself.
pub fn counts_against_endpoint(class: AttemptClass) -> bool {
    matches!(
        class,
        AttemptClass::Transient | AttemptClass::ProviderBadOutput
    )
}

impl Health {
    /// Health tracking with these breaker settings.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, provider: &str, model: &str, f: impl FnOnce(&mut EndpointHealth) -> T) -> T {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get_mut(provider).and_then(|m| m.get_mut(model)) {
            return f(h);
        }
        let entry = map
            .entry(provider.to_string())
            .or_default()
            .entry(model.to_string())
            .or_insert_with(|| EndpointHealth {
                breaker: Breaker::new(self.config),
                latency_ms: Ewma::default(),
                throughput: Ewma::default(),
                errors: Ewma::default(),
                calls: 0,
                failures: 0,
            });
        f(entry)
    }

    /// What the route sees of an endpoint now.
    pub fn view(&self, provider: &str, model: &str, now: Instant) -> HealthView {
        self.with(provider, model, |h| HealthView {
            open: matches!(
                h.breaker.state(now),
                BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true }
            ),
            latency: h
                .latency_ms
                .get()
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            throughput: h.throughput.get(),
            error_rate: h.errors.get().unwrap_or(0.0),
        })
    }

    /// Asks the breaker whether a call may go now.
    pub fn allow(&self, provider: &str, model: &str, now: Instant) -> bool {
        self.with(provider, model, |h| h.breaker.allow(now))
    }

    /// Records a successful call.
    pub fn success(&self, provider: &str, model: &str, latency: Duration, completion_tokens: u64) {
        self.with(provider, model, |h| {
            h.calls += 1;
            h.breaker.success();
            h.errors.add(0.0);
            h.latency_ms.add(latency.as_secs_f64() * 1000.0);
            if latency > Duration::ZERO && completion_tokens > 0 {
                h.throughput
                    .add(completion_tokens as f64 / latency.as_secs_f64());
            }
        })
    }

    /// Records a failed call of `class`.
    pub fn failure(&self, provider: &str, model: &str, class: AttemptClass, now: Instant) {
        self.with(provider, model, |h| {
            h.calls += 1;
            if counts_against_endpoint(class) {
                h.failures += 1;
                h.errors.add(1.0);
                h.breaker.failure(now);
            }
        })
    }

    /// Every endpoint's figures.
    pub fn report(&self, now: Instant) -> Vec<EndpointReport> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<EndpointReport> = map
            .iter()
            .flat_map(|(p, models)| models.iter().map(move |(m, h)| (format!("{p}:{m}"), h)))
            .map(|(id, h)| EndpointReport {
                endpoint: id,
                breaker: match h.breaker.state(now) {
                    BreakerState::Closed => "closed".into(),
                    BreakerState::Open { .. } => "open".into(),
                    BreakerState::HalfOpen { .. } => "half_open".into(),
                },
                latency_ms: h.latency_ms.get(),
                throughput: h.throughput.get(),
                error_rate: h.errors.get().unwrap_or(0.0),
                calls: h.calls,
                failures: h.failures,
            })
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn breaker_opens_after_n_failures_then_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        assert!(b.allow(t0));
        b.failure(t0);
        b.failure(t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "two failures are not enough"
        );
        b.failure(t0);
        assert!(matches!(b.state(t0), BreakerState::Open { .. }));
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        // After open_for: exactly one probe.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen { probing: false });
        assert!(b.allow(t1));
        assert!(!b.allow(t1), "only one probe at a time");
        b.success();
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(b.allow(t1));
    }

    #[test]
    fn failed_probe_reopens_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(11);
        assert!(b.allow(t1));
        b.failure(t1);
        assert!(matches!(b.state(t1), BreakerState::Open { .. }));
        assert!(!b.allow(t1 + Duration::from_secs(5)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn rate_limits_and_bad_requests_do_not_count_against_the_endpoint() {
        let h = Health::new(cfg());
        let now = Instant::now();
        for _ in 0..10 {
            h.failure("p", "m", AttemptClass::RateLimited, now);
            h.failure("p", "m", AttemptClass::InvalidRequest, now);
        }
        assert!(!h.view("p", "m", now).open);
        for _ in 0..3 {
            h.failure("p", "m", AttemptClass::Transient, now);
        }
        assert!(h.view("p", "m", now).open);
    }

    #[test]
    fn ewma_tracks_latency_and_throughput() {
        let h = Health::new(cfg());
        h.success("p", "m", Duration::from_millis(100), 50);
        h.success("p", "m", Duration::from_millis(200), 50);
        let v = h.view("p", "m", Instant::now());
        let ms = v.latency.unwrap().as_secs_f64() * 1000.0;
        assert!((ms - 120.0).abs() < 0.01, "{ms}");
        let tps = v.throughput.unwrap();
        assert!((tps - 450.0).abs() < 0.01, "{tps}"); // 500 then 250: 500 + 0.2 × (250 − 500)
        assert_eq!(v.error_rate, 0.0);
    }
}
