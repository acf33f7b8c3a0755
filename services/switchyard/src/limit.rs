//! Capacity: requests/min and tokens/min per provider and per API key (governor), a cap on
//! calls in flight per provider, and each key's standing (cooling down after a 429 for exactly
//! its Retry-After, or out of rotation after a 401/403).
//!
//! [`Limits::try_acquire`] never blocks: it grants a permit for a key that has capacity now, or
//! says how long until one will. The stage decides whether to wait (up to the route's
//! `max_wait`) or move to the next candidate, so a saturated provider sheds work to the others
//! instead of being hammered. Bursts are one second's worth of the rate, so no 60 s window sees
//! more than about rpm × (1 + 1/60) requests.
//!
//! Quotas are for the whole deployment: a replica applies `share` of them (its assigned
//! partitions over all partitions), set by [`Limits::set_share`] on every rebalance.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Provider;
use crate::secret::Secret;

/// The quota for `per_minute` with a one-second burst.
pub fn quota(per_minute: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new(per_minute.get() / 60).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// A rate (per minute) scaled by a replica's share, at least 1.
fn scaled(per_minute: Option<u32>, share: f64) -> Option<NonZeroU32> {
    let n = per_minute?;
    NonZeroU32::new(((f64::from(n) * share).floor() as u32).max(1))
}

/// A rate limiter that can be rebuilt when the replica's share changes.
#[derive(Debug)]
struct Rate {
    per_minute: Option<u32>,
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
}

impl Rate {
    fn new(per_minute: Option<u32>) -> Self {
        let r = Self {
            per_minute,
            limiter: RwLock::new(None),
        };
        r.rescale(1.0);
        r
    }

    fn rescale(&self, share: f64) {
        let limiter =
            scaled(self.per_minute, share).map(|n| Arc::new(RateLimiter::direct(quota(n))));
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
    }

    /// Takes `n` units now, or says how long until they would be there.
    fn take(&self, n: u32) -> Result<(), Duration> {
        let Some(l) = self
            .limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match l.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // More than the burst: take what a burst allows, charging the bucket fully.
            Err(_) => match l.check() {
                Ok(()) => Ok(()),
                Err(not_until) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            },
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Standing {
    cooling_until: Option<Instant>,
    disabled: Option<String>,
}

#[derive(Debug)]
struct KeySlot {
    label: String,
    secret: Option<Secret>,
    rpm: Rate,
    tpm: Rate,
    standing: Mutex<Standing>,
}

#[derive(Debug)]
struct ProviderLimits {
    rpm: Rate,
    tpm: Rate,
    in_flight: Option<Arc<Semaphore>>,
    keys: Vec<KeySlot>,
}

/// Leave to call a provider with one key; holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit {
    /// Index of the key granted (into the provider's keys).
    pub key: usize,
    /// The key itself (none for keyless servers).
    pub secret: Option<Secret>,
    /// The key's reference, safe to print (`env:NAME`, or `none`).
    pub key_label: String,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The answer to "may I call this provider now?".
#[derive(Debug)]
pub enum Capacity {
    /// Yes, with this key.
    Ready(Permit),
    /// Not now; capacity returns in about this long.
    Wait(Duration),
    /// Never: every key is out of rotation.
    NoKey(String),
}

/// One key's standing, for display.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyReport {
    /// Provider.
    pub provider: String,
    /// Key reference.
    pub key: String,
    /// `ok`, `cooling` or `disabled: why`.
    pub standing: String,
}

/// Capacity for every provider a process calls.
#[derive(Debug, Default)]
pub struct Limits {
    providers: HashMap<String, ProviderLimits>,
}

impl Limits {
    /// Limits for `providers` as configured.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a Provider>) -> Self {
        let providers = providers
            .into_iter()
            .map(|p| {
                let mut keys: Vec<KeySlot> = p
                    .keys
                    .iter()
                    .map(|k| KeySlot {
                        label: k.key_ref.to_string(),
                        secret: Some(k.secret.clone()),
                        rpm: Rate::new(k.rpm),
                        tpm: Rate::new(k.tpm),
                        standing: Mutex::new(Standing::default()),
                    })
                    .collect();
                if keys.is_empty() {
                    keys.push(KeySlot {
                        label: "none".into(),
                        secret: None,
                        rpm: Rate::new(None),
                        tpm: Rate::new(None),
                        standing: Mutex::new(Standing::default()),
                    });
                }
                let limits = ProviderLimits {
                    rpm: Rate::new(p.rpm),
                    tpm: Rate::new(p.tpm),
                    in_flight: p
                        .max_concurrency
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                    keys,
                };
                (p.name.clone(), limits)
            })
            .collect();
        Self { providers }
    }

    /// Applies `share` (0..1] of every configured quota (this replica's part).
    pub fn set_share(&self, share: f64) {
        let share = share.clamp(0.0, 1.0).max(1e-6);
        for p in self.providers.values() {
            p.rpm.rescale(share);
            p.tpm.rescale(share);
            for k in &p.keys {
                k.rpm.rescale(share);
                k.tpm.rescale(share);
            }
        }
    }

    /// Asks for one call to `provider` of about `tokens` tokens.
    pub fn try_acquire(&self, provider: &str, tokens: u32, now: Instant) -> Capacity {
        let Some(p) = self.providers.get(provider) else {
            return Capacity::NoKey(format!("provider `{provider}` is not configured"));
        };
        let slot = match &p.in_flight {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Capacity::Wait(Duration::from_millis(20)),
            },
        };
        let mut soonest: Option<Duration> = None;
        let mut disabled = Vec::new();
        let mut wait = |d: Duration| soonest = Some(soonest.map_or(d, |s| s.min(d)));
        for (i, k) in p.keys.iter().enumerate() {
            let standing = k.standing.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(why) = standing.disabled {
                disabled.push(format!("{}: {why}", k.label));
                continue;
            }
            if let Some(until) = standing.cooling_until
                && until > now
            {
                wait(until - now);
                continue;
            }
            if let Err(d) = k.rpm.take(1) {
                wait(d);
                continue;
            }
            if let Err(d) = k.tpm.take(tokens) {
                wait(d);
                continue;
            }
            if let Err(d) = p.rpm.take(1) {
                wait(d);
                break;
            }
            if let Err(d) = p.tpm.take(tokens) {
                wait(d);
                break;
            }
            return Capacity::Ready(Permit {
                key: i,
                secret: k.secret.clone(),
                key_label: k.label.clone(),
                _slot: slot,
            });
        }
        match soonest {
            Some(d) => Capacity::Wait(d),
            None => Capacity::NoKey(format!(
                "every key of `{provider}` is out of rotation ({})",
                disabled.join("; ")
            )),
        }
    }

    /// A 429: the key rests for exactly `for_how_long`.
    pub fn cool_down(&self, provider: &str, key: usize, for_how_long: Duration, now: Instant) {
        if let Some(k) = self.providers.get(provider).and_then(|p| p.keys.get(key)) {
            let mut s = k.standing.lock().unwrap_or_else(|e| e.into_inner());
            let until = now + for_how_long;
            s.cooling_until = Some(s.cooling_until.map_or(until, |u| u.max(until)));
        }
    }

    /// A 401/403 (or 402): the key leaves rotation until restart.
    pub fn disable(&self, provider: &str, key: usize, why: &str) {
        if let Some(k) = self.providers.get(provider).and_then(|p| p.keys.get(key)) {
            let mut s = k.standing.lock().unwrap_or_else(|e| e.into_inner());
            if s.disabled.is_none() {
                tracing::error!(provider, key = %k.label, why, "API key taken out of rotation");
                s.disabled = Some(why.to_string());
            }
        }
    }

    /// Every key's standing.
    pub fn report(&self, now: Instant) -> Vec<KeyReport> {
        let mut out = Vec::new();
        for (name, p) in &self.providers {
            for k in &p.keys {
                let s = k.standing.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let standing = match (s.disabled, s.cooling_until) {
                    (Some(why), _) => format!("disabled: {why}"),
                    (None, Some(u)) if u > now => "cooling".into(),
                    _ => "ok".into(),
                };
                out.push(KeyReport {
                    provider: name.clone(),
                    key: k.label.clone(),
                    standing,
                });
            }
        }
        out.sort_by(|a, b| (&a.provider, &a.key).cmp(&(&b.provider, &b.key)));
        out
    }

    /// Every secret known, for scrubbing.
    pub fn secrets(&self) -> Vec<Secret> {
        self.providers
            .values()
            .flat_map(|p| p.keys.iter().filter_map(|k| k.secret.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiFamily, ProviderKey};
    use crate::secret::KeyRef;

    fn provider(keys: &[(&str, Option<u32>)], rpm: Option<u32>) -> Provider {
        Provider {
            name: "p".into(),
            api: ApiFamily::Openai,
            base_url: "http://x".into(),
            keys: keys
                .iter()
                .map(|(n, rpm)| ProviderKey {
                    key_ref: KeyRef::Env(n.to_string()),
                    secret: Secret::new(format!("secret-{n}")),
                    rpm: *rpm,
                    tpm: None,
                })
                .collect(),
            rpm,
            tpm: None,
            max_concurrency: None,
            headers: Default::default(),
        }
    }

    fn granted(c: Capacity) -> Option<usize> {
        match c {
            Capacity::Ready(p) => Some(p.key),
            _ => None,
        }
    }

    #[test]
    fn burst_is_one_second_of_the_rate() {
        let l = RateLimiter::direct(quota(NonZeroU32::new(600).unwrap()));
        assert_eq!((0..100).filter(|_| l.check().is_ok()).count(), 10);
        let slow = RateLimiter::direct(quota(NonZeroU32::new(30).unwrap()));
        assert_eq!((0..10).filter(|_| slow.check().is_ok()).count(), 1);
    }

    #[test]
    fn a_key_at_its_limit_hands_over_to_the_next() {
        let l = Limits::new([&provider(&[("A", Some(60)), ("B", Some(60))], None)]);
        let now = Instant::now();
        assert_eq!(granted(l.try_acquire("p", 1, now)), Some(0));
        assert_eq!(granted(l.try_acquire("p", 1, now)), Some(1));
        match l.try_acquire("p", 1, now) {
            Capacity::Wait(d) => assert!(d <= Duration::from_secs(1), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cooling_and_disabled_keys_are_skipped() {
        let l = Limits::new([&provider(&[("A", None), ("B", None)], None)]);
        let now = Instant::now();
        l.cool_down("p", 0, Duration::from_secs(7), now);
        assert_eq!(granted(l.try_acquire("p", 1, now)), Some(1));
        l.disable("p", 1, "HTTP 401");
        match l.try_acquire("p", 1, now) {
            Capacity::Wait(d) => assert_eq!(d, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            granted(l.try_acquire("p", 1, now + Duration::from_secs(7))),
            Some(0)
        );
        l.disable("p", 0, "HTTP 403");
        match l.try_acquire("p", 1, now + Duration::from_secs(8)) {
            Capacity::NoKey(why) => {
                assert!(
                    why.contains("env:A: HTTP 403") && why.contains("env:B: HTTP 401"),
                    "{why}"
                );
                assert!(!why.contains("secret-"), "never the key itself: {why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn share_scales_the_quota() {
        let l = Limits::new([&provider(&[("A", None)], Some(1200))]);
        l.set_share(0.25);
        let now = Instant::now();
        // 1200 × 0.25 = 300 rpm → burst of 5.
        let granted = (0..50)
            .filter(|_| matches!(l.try_acquire("p", 1, now), Capacity::Ready(_)))
            .count();
        assert_eq!(granted, 5);
    }
}
