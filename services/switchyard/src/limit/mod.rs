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

pub mod budget;

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
    /// Why the key is suspended and until when (after that it is tried again: a probe).
    disabled: Option<(String, Instant)>,
    /// Suspensions so far: each one lasts twice as long as the one before.
    strikes: u32,
}

/// The first suspension of a key that the provider refused (401/403/402); later ones double,
/// up to [`MAX_SUSPENSION`]. A key that was revoked stays out nearly all the time; one that
/// failed for a passing reason comes back.
pub const FIRST_SUSPENSION: Duration = Duration::from_secs(60);
/// The longest suspension.
pub const MAX_SUSPENSION: Duration = Duration::from_secs(3600);
/// The longest a Retry-After (or anything else a provider says) can rest a key.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(60);

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
    tenant_keys: HashMap<String, KeySlot>,
}

/// Which key: one of the provider's shared keys, or a tenant's own (BYOK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyId {
    /// A shared key, by position.
    Shared(usize),
    /// The tenant's own key for this provider.
    Tenant(String),
}

/// Whose keys a call may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyChoice<'a> {
    /// The job's tenant, whose own key goes first.
    pub tenant: Option<&'a str>,
    /// Whether the provider's shared keys may be used (after the tenant's own).
    pub shared: bool,
}

impl KeyChoice<'_> {
    /// Shared keys only (no tenancy).
    pub fn shared_only() -> KeyChoice<'static> {
        KeyChoice {
            tenant: None,
            shared: true,
        }
    }
}

/// Leave to call a provider with one key; holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit {
    /// The key granted.
    pub key: KeyId,
    /// The key itself (none for keyless servers).
    pub secret: Option<Secret>,
    /// The key's reference, safe to print (`env:NAME`, or `none`).
    pub key_label: String,
    /// Whether it is a tenant's own key (BYOK).
    pub tenant_key: bool,
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

fn slot(k: &crate::config::ProviderKey) -> KeySlot {
    KeySlot {
        label: k.key_ref.to_string(),
        secret: Some(k.secret.clone()),
        rpm: Rate::new(k.rpm),
        tpm: Rate::new(k.tpm),
        standing: Mutex::new(Standing::default()),
    }
}

impl Limits {
    /// Adds tenants' own keys (BYOK): `(tenant, provider, key)`.
    pub fn with_tenant_keys<'a>(
        mut self,
        keys: impl IntoIterator<Item = (&'a str, &'a str, &'a crate::config::ProviderKey)>,
    ) -> Self {
        for (tenant, provider, key) in keys {
            if let Some(p) = self.providers.get_mut(provider) {
                p.tenant_keys.insert(tenant.to_string(), slot(key));
            }
        }
        self
    }

    /// Limits for `providers` as configured.
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a Provider>) -> Self {
        let providers = providers
            .into_iter()
            .map(|p| {
                let mut keys: Vec<KeySlot> = p.keys.iter().map(slot).collect();
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
                    tenant_keys: HashMap::new(),
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
            for k in p.keys.iter().chain(p.tenant_keys.values()) {
                k.rpm.rescale(share);
                k.tpm.rescale(share);
            }
        }
    }

    /// Whether `provider` has a key this choice may use at all.
    pub fn has_key_for(&self, provider: &str, choice: KeyChoice<'_>) -> bool {
        self.providers.get(provider).is_some_and(|p| {
            choice.shared || choice.tenant.is_some_and(|t| p.tenant_keys.contains_key(t))
        })
    }

    /// Asks for one call to `provider` of about `tokens` tokens: the tenant's own key first,
    /// then (if allowed) the shared keys in order.
    pub fn try_acquire(
        &self,
        provider: &str,
        tokens: u32,
        now: Instant,
        choice: KeyChoice<'_>,
    ) -> Capacity {
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
        let own = choice.tenant.and_then(|t| {
            p.tenant_keys
                .get(t)
                .map(|k| (KeyId::Tenant(t.to_string()), k))
        });
        let shared = p
            .keys
            .iter()
            .enumerate()
            .filter(|_| choice.shared)
            .map(|(i, k)| (KeyId::Shared(i), k));
        for (id, k) in own.into_iter().chain(shared) {
            let standing = k.standing.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some((why, until)) = standing.disabled
                && until > now
            {
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
            let tenant_key = matches!(id, KeyId::Tenant(_));
            return Capacity::Ready(Permit {
                key: id,
                secret: k.secret.clone(),
                key_label: k.label.clone(),
                tenant_key,
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

    /// A 429: the key rests for `for_how_long`, at most [`MAX_COOL_DOWN`].
    pub fn cool_down(&self, provider: &str, key: &KeyId, for_how_long: Duration, now: Instant) {
        if let Some(k) = self.slot(provider, key) {
            let mut s = k.standing.lock().unwrap_or_else(|e| e.into_inner());
            let until = now + for_how_long.min(MAX_COOL_DOWN);
            s.cooling_until = Some(s.cooling_until.map_or(until, |u| u.max(until)));
        }
    }

    /// A 401/403 (or 402): the key leaves rotation for a while ([`FIRST_SUSPENSION`], doubling
    /// with each suspension up to [`MAX_SUSPENSION`]); then it is tried again.
    pub fn disable(&self, provider: &str, key: &KeyId, why: &str, now: Instant) {
        if let Some(k) = self.slot(provider, key) {
            let mut s = k.standing.lock().unwrap_or_else(|e| e.into_inner());
            if s.disabled.as_ref().is_some_and(|(_, until)| *until > now) {
                return;
            }
            let pause = FIRST_SUSPENSION
                .saturating_mul(1u32 << s.strikes.min(10))
                .min(MAX_SUSPENSION);
            s.strikes = s.strikes.saturating_add(1);
            tracing::error!(provider, key = %k.label, why, for_s = pause.as_secs(), "API key taken out of rotation; it will be tried again after the pause");
            s.disabled = Some((why.to_string(), now + pause));
        }
    }

    /// A call with the key succeeded: its past suspensions are forgiven (the next refusal
    /// pauses it for [`FIRST_SUSPENSION`] again).
    pub fn succeeded(&self, provider: &str, key: &KeyId) {
        if let Some(k) = self.slot(provider, key) {
            let mut s = k.standing.lock().unwrap_or_else(|e| e.into_inner());
            if s.strikes > 0 {
                s.strikes = 0;
                s.disabled = None;
            }
        }
    }

    fn slot(&self, provider: &str, key: &KeyId) -> Option<&KeySlot> {
        let p = self.providers.get(provider)?;
        match key {
            KeyId::Shared(i) => p.keys.get(*i),
            KeyId::Tenant(t) => p.tenant_keys.get(t),
        }
    }

    /// Every key's standing.
    pub fn report(&self, now: Instant) -> Vec<KeyReport> {
        let mut out = Vec::new();
        for (name, p) in &self.providers {
            for k in p.keys.iter().chain(p.tenant_keys.values()) {
                let s = k.standing.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let standing = match (s.disabled, s.cooling_until) {
                    (Some((why, until)), _) if until > now => format!("disabled: {why}"),
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
            .flat_map(|p| {
                p.keys
                    .iter()
                    .chain(p.tenant_keys.values())
                    .filter_map(|k| k.secret.clone())
            })
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
            forward_metadata: Vec::new(),
        }
    }

    fn granted(c: Capacity) -> Option<usize> {
        match c {
            Capacity::Ready(Permit {
                key: KeyId::Shared(i),
                ..
            }) => Some(i),
            _ => None,
        }
    }

    const ANY: KeyChoice<'static> = KeyChoice {
        tenant: None,
        shared: true,
    };

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
        assert_eq!(granted(l.try_acquire("p", 1, now, ANY)), Some(0));
        assert_eq!(granted(l.try_acquire("p", 1, now, ANY)), Some(1));
        match l.try_acquire("p", 1, now, ANY) {
            Capacity::Wait(d) => assert!(d <= Duration::from_secs(1), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cooling_and_disabled_keys_are_skipped() {
        let l = Limits::new([&provider(&[("A", None), ("B", None)], None)]);
        let now = Instant::now();
        l.cool_down("p", &KeyId::Shared(0), Duration::from_secs(7), now);
        assert_eq!(granted(l.try_acquire("p", 1, now, ANY)), Some(1));
        l.disable("p", &KeyId::Shared(1), "HTTP 401", now);
        match l.try_acquire("p", 1, now, ANY) {
            Capacity::Wait(d) => assert_eq!(d, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            granted(l.try_acquire("p", 1, now + Duration::from_secs(7), ANY)),
            Some(0)
        );
        l.disable(
            "p",
            &KeyId::Shared(0),
            "HTTP 403",
            now + Duration::from_secs(7),
        );
        match l.try_acquire("p", 1, now + Duration::from_secs(8), ANY) {
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
    fn a_refused_key_comes_back_after_a_pause_that_doubles_and_rests_are_bounded() {
        let l = Limits::new([&provider(&[("A", None)], None)]);
        let now = Instant::now();
        l.disable("p", &KeyId::Shared(0), "HTTP 401", now);
        assert!(matches!(
            l.try_acquire("p", 1, now, ANY),
            Capacity::NoKey(_)
        ));
        let back = now + FIRST_SUSPENSION;
        assert_eq!(
            granted(l.try_acquire("p", 1, back, ANY)),
            Some(0),
            "probed again"
        );
        // Refused again: twice as long this time.
        l.disable("p", &KeyId::Shared(0), "HTTP 401", back);
        let later = back + FIRST_SUSPENSION;
        assert!(matches!(
            l.try_acquire("p", 1, later, ANY),
            Capacity::NoKey(_)
        ));
        assert_eq!(
            granted(l.try_acquire("p", 1, back + FIRST_SUSPENSION * 2, ANY)),
            Some(0)
        );
        // Once the key works again, its record is forgiven: the next pause is the first one.
        let ok_at = back + FIRST_SUSPENSION * 2;
        l.succeeded("p", &KeyId::Shared(0));
        l.disable("p", &KeyId::Shared(0), "HTTP 401", ok_at);
        assert_eq!(
            granted(l.try_acquire("p", 1, ok_at + FIRST_SUSPENSION, ANY)),
            Some(0)
        );
        // A provider asking for a rest of centuries gets a minute.
        let t = ok_at + FIRST_SUSPENSION;
        l.cool_down("p", &KeyId::Shared(0), Duration::from_secs(u64::MAX / 4), t);
        match l.try_acquire("p", 1, t, ANY) {
            Capacity::Wait(d) => assert!(d <= MAX_COOL_DOWN, "{d:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tenant_key_goes_first_and_shared_keys_only_when_allowed() {
        let p = provider(&[("SHARED", None)], None);
        let own = ProviderKey {
            key_ref: KeyRef::Env("ACME_KEY".into()),
            secret: Secret::new("acme-secret"),
            rpm: Some(60),
            tpm: None,
        };
        let l = Limits::new([&p]).with_tenant_keys([("acme", "p", &own)]);
        let now = Instant::now();
        let acme = KeyChoice {
            tenant: Some("acme"),
            shared: true,
        };
        match l.try_acquire("p", 1, now, acme) {
            Capacity::Ready(p) => {
                assert_eq!(p.key, KeyId::Tenant("acme".into()));
                assert!(p.tenant_key);
                assert_eq!(p.key_label, "env:ACME_KEY");
            }
            other => panic!("{other:?}"),
        }
        // Own key at its limit (burst 1): falls back to the shared key.
        assert_eq!(granted(l.try_acquire("p", 1, now, acme)), Some(0));
        // Without shared fallback: it must wait for its own key.
        let strict = KeyChoice {
            tenant: Some("acme"),
            shared: false,
        };
        assert!(matches!(
            l.try_acquire("p", 1, now, strict),
            Capacity::Wait(_)
        ));
        assert!(!l.has_key_for(
            "p",
            KeyChoice {
                tenant: Some("other"),
                shared: false
            }
        ));
        assert!(l.has_key_for("p", strict));
    }

    #[test]
    fn share_scales_the_quota() {
        let l = Limits::new([&provider(&[("A", None)], Some(1200))]);
        l.set_share(0.25);
        let now = Instant::now();
        // 1200 × 0.25 = 300 rpm → burst of 5.
        let granted = (0..50)
            .filter(|_| matches!(l.try_acquire("p", 1, now, ANY), Capacity::Ready(_)))
            .count();
        assert_eq!(granted, 5);
    }
}
