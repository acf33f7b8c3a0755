//! What the simulator saw: request counts, per-key rates over sliding 60 s windows, 429s sent
//! and peak concurrency. Served at `GET /sim/stats`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

const WINDOW: Duration = Duration::from_secs(60);

/// Counters shared by every request handler.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: u64,
    sent_429: u64,
    by_status: BTreeMap<u16, u64>,
    by_model: BTreeMap<String, u64>,
    by_provider: BTreeMap<String, u64>,
    keys: HashMap<String, KeyWindow>,
}

#[derive(Debug, Default)]
struct KeyWindow {
    label: String,
    configured_rpm: Option<u32>,
    requests: u64,
    sent_429: u64,
    /// Every request of the last 60 s, admitted or not: the rate the client really sent.
    seen: VecDeque<Instant>,
    /// Admitted requests of the last 60 s: what the limit counts.
    admitted: VecDeque<Instant>,
    max_rpm_observed: u64,
}

/// A serialisable copy of the counters.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Requests received, all outcomes.
    pub requests: u64,
    /// 429 answers sent.
    pub sent_429: u64,
    /// Requests being served right now.
    pub in_flight: u64,
    /// The most requests served at once.
    pub peak_concurrency: u64,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<String, u64>,
    /// Requests by model.
    pub by_model: BTreeMap<String, u64>,
    /// Requests by provider path prefix (`-` for the bare `/v1` path).
    pub by_provider: BTreeMap<String, u64>,
    /// Per key, by its label (never the key itself).
    pub keys: BTreeMap<String, KeySnapshot>,
}

/// One key's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct KeySnapshot {
    /// Requests with this key.
    pub requests: u64,
    /// 429s sent to this key.
    pub sent_429: u64,
    /// The most requests seen from this key within any 60 s window.
    pub max_rpm_observed: u64,
    /// The key's limit, if it has one.
    pub configured_rpm: Option<u32>,
}

/// Marks one request as in flight until dropped.
pub struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Counts a request as started; the guard counts it as finished.
    pub fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records a request from `key` and decides whether its limit admits it. On refusal,
    /// returns how long until the oldest admitted request leaves the window.
    pub fn admit(
        &self,
        key: &str,
        label: &str,
        rpm: Option<u32>,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut inner = self.lock();
        let w = inner.keys.entry(key.to_string()).or_default();
        if w.label.is_empty() {
            w.label = label.to_string();
        }
        w.configured_rpm = rpm;
        w.requests += 1;
        w.seen.push_back(now);
        trim(&mut w.seen, now);
        trim(&mut w.admitted, now);
        w.max_rpm_observed = w.max_rpm_observed.max(w.seen.len() as u64);
        if let Some(limit) = rpm
            && w.admitted.len() >= limit as usize
        {
            w.sent_429 += 1;
            let oldest = w.admitted.front().copied().unwrap_or(now);
            let wait = (oldest + WINDOW).saturating_duration_since(now);
            inner.sent_429 += 1;
            return Err(wait.max(Duration::from_secs(1)));
        }
        w.admitted.push_back(now);
        Ok(())
    }

    /// Records a finished request.
    pub fn record(&self, provider: &str, model: &str, status: u16) {
        let mut inner = self.lock();
        inner.requests += 1;
        *inner.by_status.entry(status).or_default() += 1;
        *inner.by_model.entry(model.to_string()).or_default() += 1;
        *inner.by_provider.entry(provider.to_string()).or_default() += 1;
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.lock();
        StatsSnapshot {
            requests: inner.requests,
            sent_429: inner.sent_429,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_concurrency: self.peak_in_flight.load(Ordering::Relaxed),
            by_status: inner
                .by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            by_model: inner.by_model.clone(),
            by_provider: inner.by_provider.clone(),
            keys: inner
                .keys
                .values()
                .map(|w| {
                    (
                        w.label.clone(),
                        KeySnapshot {
                            requests: w.requests,
                            sent_429: w.sent_429,
                            max_rpm_observed: w.max_rpm_observed,
                            configured_rpm: w.configured_rpm,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Clears every counter (between benchmark phases).
    pub fn reset(&self) {
        *self.lock() = Inner::default();
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a handler panicked mid-update; counters stay usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn trim(q: &mut VecDeque<Instant>, now: Instant) {
    while let Some(front) = q.front() {
        if now.duration_since(*front) >= WINDOW {
            q.pop_front();
        } else {
            break;
        }
    }
}

/// A label for a key that does not reveal it: `key-` and 8 hex digits of its FNV-1a hash.
pub fn key_label(key: &str) -> String {
    format!("key-{:08x}", crate::fnv1a(key.as_bytes()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_admits_rpm_then_refuses_until_window_moves() {
        let s = Stats::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(
                s.admit("k", "k", Some(10), t0 + Duration::from_secs(i))
                    .is_ok()
            );
        }
        let wait = s
            .admit("k", "k", Some(10), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(
            s.admit("k", "k", Some(10), t0 + Duration::from_secs(61))
                .is_ok()
        );
        let snap = s.snapshot();
        let k = &snap.keys["k"];
        assert_eq!(k.requests, 12);
        assert_eq!(k.sent_429, 1);
        assert_eq!(k.max_rpm_observed, 11);
    }
}
