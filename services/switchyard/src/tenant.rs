//! Tenants: who may use which models and providers, under which data policy, with which of
//! their own keys (BYOK), and within which daily and monthly budgets.
//!
//! Budgets are enforced before any call: a job whose estimated cost would take its tenant past
//! a budget is dead-lettered (`budget_exceeded`, replayable once the budget renews). Spend is
//! counted in-process from every attempt's cost and, when a ledger database is configured,
//! seeded from it at start, so a restart does not forget what was spent.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::config::{DataPolicy, Endpoint, ProviderKey};
use crate::money::MicroUsd;

/// A tenant, resolved from tenants.yaml.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name, as jobs give it.
    pub name: String,
    /// Models it may use (all when empty).
    pub allowed_models: Vec<String>,
    /// Providers it may use (all when empty).
    pub allowed_providers: Vec<String>,
    /// `deny`: only endpoints that do not keep prompts.
    pub data_collection: DataPolicy,
    /// Daily budget.
    pub daily: Option<MicroUsd>,
    /// Monthly budget.
    pub monthly: Option<MicroUsd>,
    /// Its own keys, by provider (BYOK), tried before shared keys.
    pub keys: Vec<(String, ProviderKey)>,
    /// Whether the provider's shared keys may be used after its own.
    pub shared_keys: bool,
}

/// What the route must respect for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantRules {
    /// Tenant name.
    pub name: String,
    /// Allowed models (all when empty).
    pub models: Vec<String>,
    /// Allowed providers (all when empty).
    pub providers: Vec<String>,
    /// Leave out endpoints that may keep prompts.
    pub deny_data_collection: bool,
    /// When shared keys are not allowed: the providers it has its own key for.
    pub keyed_providers: Option<Vec<String>>,
}

impl Tenant {
    /// The route rules for this tenant.
    pub fn rules(&self) -> TenantRules {
        TenantRules {
            name: self.name.clone(),
            models: self.allowed_models.clone(),
            providers: self.allowed_providers.clone(),
            deny_data_collection: self.data_collection == DataPolicy::Deny,
            keyed_providers: (!self.shared_keys)
                .then(|| self.keys.iter().map(|(p, _)| p.clone()).collect()),
        }
    }
}

impl TenantRules {
    /// Why this tenant may not use `endpoint`, if it may not.
    pub fn exclusion(&self, endpoint: &Endpoint) -> Option<String> {
        let t = &self.name;
        if !self.models.is_empty() && !self.models.contains(&endpoint.model) {
            return Some(format!(
                "tenant {t} does not allow model {}",
                endpoint.model
            ));
        }
        if !self.providers.is_empty() && !self.providers.contains(&endpoint.provider) {
            return Some(format!(
                "tenant {t} does not allow provider {}",
                endpoint.provider
            ));
        }
        if self.deny_data_collection && endpoint.data_collection == DataPolicy::Allow {
            return Some(format!(
                "tenant {t}'s data policy refuses endpoints that may keep prompts"
            ));
        }
        if let Some(keyed) = &self.keyed_providers
            && !keyed.contains(&endpoint.provider)
        {
            return Some(format!(
                "tenant {t} has no key of its own for {} and does not allow shared keys",
                endpoint.provider
            ));
        }
        None
    }
}

/// The cost a call would have at `endpoint` if it used all of `max_tokens`.
pub fn estimate(endpoint: &Endpoint, prompt_tokens: u64, max_tokens: u64) -> MicroUsd {
    endpoint.input.cost(prompt_tokens) + endpoint.output.cost(max_tokens)
}

/// Why a job with this estimated cost may not run, if it may not.
pub fn over_budget(tenant: &Tenant, spent: SpentSoFar, estimate: MicroUsd) -> Option<String> {
    if let Some(limit) = tenant.daily
        && spent.today + estimate > limit
    {
        return Some(format!(
            "tenant {} has spent {} of its daily budget {} and this job may cost up to {}; it can be replayed when the budget renews",
            tenant.name, spent.today, limit, estimate
        ));
    }
    if let Some(limit) = tenant.monthly
        && spent.this_month + estimate > limit
    {
        return Some(format!(
            "tenant {} has spent {} of its monthly budget {} and this job may cost up to {}; it can be replayed when the budget renews",
            tenant.name, spent.this_month, limit, estimate
        ));
    }
    None
}

/// A tenant's spend in the current UTC day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpentSoFar {
    /// Today (UTC).
    pub today: MicroUsd,
    /// This month (UTC).
    pub this_month: MicroUsd,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ledger {
    day: (i32, u16),
    month: (i32, u8),
    spent: SpentSoFar,
}

/// Spend per tenant, by UTC day and month.
#[derive(Debug, Default)]
pub struct Spend {
    tenants: Mutex<HashMap<String, Ledger>>,
}

impl Spend {
    fn roll(l: &mut Ledger, now: OffsetDateTime) {
        let day = (now.year(), now.ordinal());
        let month = (now.year(), u8::from(now.month()));
        if l.month != month {
            l.month = month;
            l.spent.this_month = MicroUsd(0);
        }
        if l.day != day {
            l.day = day;
            l.spent.today = MicroUsd(0);
        }
    }

    /// What `tenant` has spent so far, as of `now`.
    pub fn get(&self, tenant: &str, now: OffsetDateTime) -> SpentSoFar {
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let l = map.entry(tenant.to_string()).or_default();
        Self::roll(l, now);
        l.spent
    }

    /// Adds a cost.
    pub fn add(&self, tenant: &str, cost: MicroUsd, now: OffsetDateTime) {
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let l = map.entry(tenant.to_string()).or_default();
        Self::roll(l, now);
        l.spent.today = l.spent.today + cost;
        l.spent.this_month = l.spent.this_month + cost;
    }

    /// Seeds a tenant's spend (from the ledger database at start).
    pub fn seed(&self, tenant: &str, spent: SpentSoFar, now: OffsetDateTime) {
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let l = map.entry(tenant.to_string()).or_default();
        Self::roll(l, now);
        l.spent = spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::PerMTok;
    use time::macros::datetime;

    fn tenant() -> Tenant {
        Tenant {
            name: "acme".into(),
            allowed_models: vec!["m1".into()],
            allowed_providers: vec![],
            data_collection: DataPolicy::Deny,
            daily: Some(MicroUsd(1_000)),
            monthly: Some(MicroUsd(5_000)),
            keys: vec![],
            shared_keys: false,
        }
    }

    fn endpoint(model: &str, provider: &str, policy: DataPolicy) -> Endpoint {
        Endpoint {
            model: model.into(),
            provider: provider.into(),
            model_id: model.into(),
            input: PerMTok(1_000_000),
            output: PerMTok(2_000_000),
            cached: PerMTok(0),
            json_schema: true,
            context_length: 1000,
            data_collection: policy,
            zdr: false,
            quantization: None,
            throughput: None,
            latency: None,
            parameters: vec![],
        }
    }

    #[test]
    fn allowlists_data_policy_and_keys_exclude_endpoints() {
        let rules = tenant().rules();
        assert!(
            rules
                .exclusion(&endpoint("m2", "p", DataPolicy::Deny))
                .unwrap()
                .contains("does not allow model m2")
        );
        assert!(
            rules
                .exclusion(&endpoint("m1", "p", DataPolicy::Allow))
                .unwrap()
                .contains("data policy")
        );
        assert!(
            rules
                .exclusion(&endpoint("m1", "p", DataPolicy::Deny))
                .unwrap()
                .contains("no key of its own for p")
        );
        let mut t = tenant();
        t.shared_keys = true;
        assert_eq!(
            t.rules().exclusion(&endpoint("m1", "p", DataPolicy::Deny)),
            None
        );
    }

    #[test]
    fn budgets_refuse_a_job_that_would_cross_them() {
        let t = tenant();
        let e = endpoint("m1", "p", DataPolicy::Deny);
        let est = estimate(&e, 100, 200); // 100 + 400 µ$
        assert_eq!(est, MicroUsd(500));
        assert_eq!(
            over_budget(
                &t,
                SpentSoFar {
                    today: MicroUsd(500),
                    this_month: MicroUsd(500)
                },
                est
            ),
            None
        );
        let why = over_budget(
            &t,
            SpentSoFar {
                today: MicroUsd(501),
                this_month: MicroUsd(501),
            },
            est,
        )
        .unwrap();
        assert!(why.contains("daily budget"), "{why}");
        let why = over_budget(
            &t,
            SpentSoFar {
                today: MicroUsd(0),
                this_month: MicroUsd(4_600),
            },
            est,
        )
        .unwrap();
        assert!(why.contains("monthly budget"), "{why}");
    }

    #[test]
    fn spend_rolls_over_by_utc_day_and_month() {
        let s = Spend::default();
        s.add("acme", MicroUsd(300), datetime!(2026-11-30 23:00 UTC));
        assert_eq!(
            s.get("acme", datetime!(2026-11-30 23:59 UTC)),
            SpentSoFar {
                today: MicroUsd(300),
                this_month: MicroUsd(300)
            }
        );
        // Next day, same month? No: December. Both reset.
        assert_eq!(
            s.get("acme", datetime!(2026-12-01 00:01 UTC)),
            SpentSoFar::default()
        );
        s.add("acme", MicroUsd(100), datetime!(2026-12-01 00:02 UTC));
        s.add("acme", MicroUsd(100), datetime!(2026-12-02 00:02 UTC));
        assert_eq!(
            s.get("acme", datetime!(2026-12-02 01:00 UTC)),
            SpentSoFar {
                today: MicroUsd(100),
                this_month: MicroUsd(200)
            }
        );
    }
}
