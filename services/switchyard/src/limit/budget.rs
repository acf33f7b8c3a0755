//! Tenant budgets: enforced before any call. A job whose estimated cost would take its tenant
//! past a daily or monthly budget is dead-lettered (`budget_exceeded`, replayable once the
//! budget renews). Spend is counted in-process from every attempt's cost and, when a ledger
//! database is configured, seeded from it at start, so a restart does not forget what was spent.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::config::Endpoint;
use crate::config::tenant::Tenant;
use crate::money::MicroUsd;

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
    use crate::config::DataPolicy;
    use crate::config::tenant::tests::{endpoint, tenant};
    use time::macros::datetime;

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
