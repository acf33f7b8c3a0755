//! The in-process tally behind the admin page: jobs by stage and how they left, and cost today
//! by tenant. The same events feed Prometheus; this is for a page that needs no Prometheus.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::envelope::JobEnd;

/// Counts for the admin page. Shared by handle ([`super::Telemetry`]), never global.
#[derive(Debug, Default)]
pub struct AdminTally {
    inner: Mutex<Counts>,
}

/// A snapshot of the tally.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Jobs by (stage, how they left).
    pub jobs: BTreeMap<(String, JobEnd), u64>,
    /// Cost by tenant on `day` (UTC), micro-dollars.
    pub cost_today: BTreeMap<String, u64>,
    /// The UTC day `cost_today` is for.
    pub day: Option<time::Date>,
}

impl AdminTally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a job leaving `stage`.
    pub fn count_job(&self, stage: &str, end: JobEnd) {
        *self
            .lock()
            .jobs
            .entry((stage.to_string(), end))
            .or_default() += 1;
    }

    /// Adds `micro_usd` to `tenant`'s total for `today`; a new day starts from zero.
    pub fn count_cost(&self, tenant: &str, micro_usd: u64, today: time::Date) {
        let mut t = self.lock();
        if t.day != Some(today) {
            t.cost_today.clear();
            t.day = Some(today);
        }
        *t.cost_today.entry(tenant.to_string()).or_default() += micro_usd;
    }

    /// The counts now.
    pub fn snapshot(&self) -> Counts {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_today_is_summed_per_tenant_and_restarts_each_day() {
        let t = AdminTally::default();
        let day = time::macros::date!(2026 - 12 - 07);
        t.count_cost("acme", 5, day);
        t.count_cost("acme", 7, day);
        t.count_cost("globex", 1, day);
        assert_eq!(t.snapshot().cost_today["acme"], 12);
        t.count_cost("acme", 3, day.next_day().unwrap());
        let s = t.snapshot();
        assert_eq!(s.cost_today.get("acme"), Some(&3));
        assert_eq!(s.cost_today.get("globex"), None);
    }

    #[test]
    fn jobs_are_counted_by_stage_and_end() {
        let t = AdminTally::default();
        t.count_job("triage", JobEnd::Result);
        t.count_job("triage", JobEnd::Result);
        t.count_job("triage", JobEnd::Escalated);
        let s = t.snapshot();
        assert_eq!(s.jobs[&("triage".to_string(), JobEnd::Result)], 2);
        assert_eq!(s.jobs[&("triage".to_string(), JobEnd::Escalated)], 1);
    }
}
