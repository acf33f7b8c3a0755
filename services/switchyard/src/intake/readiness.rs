//! Which stages own partitions: a stage is ready to work once it has some. Read by `/readyz`,
//! by the harness that waits for assignment before producing, and by the provider quotas, which
//! scale with this replica's share of the partitions.

/// Which stages have partitions assigned: a stage is ready to work once it has some.
#[derive(Debug, Default)]
pub struct Readiness {
    assigned: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    totals: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    changed: tokio::sync::Notify,
}

impl Readiness {
    /// Records how many partitions `stage` now owns.
    pub fn set_assigned(&self, stage: &str, partitions: usize) {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage.to_string(), partitions);
        self.changed.notify_waiters();
    }

    /// Records how many partitions `stage`'s topic has in all.
    pub fn set_total(&self, stage: &str, partitions: usize) {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage.to_string(), partitions);
        self.changed.notify_waiters();
    }

    /// This replica's share of the deployment's work: the largest share of partitions any of
    /// its stages owns (1 when unknown). Provider quotas are scaled by it.
    pub fn share(&self) -> f64 {
        let assigned = self.assigned();
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shares: Vec<f64> = assigned
            .iter()
            .filter_map(|(stage, n)| {
                totals
                    .get(stage)
                    .filter(|t| **t > 0)
                    .map(|t| *n as f64 / *t as f64)
            })
            .collect();
        if shares.is_empty() {
            1.0
        } else {
            shares.into_iter().fold(0.0, f64::max).max(0.01)
        }
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Partitions owned, by stage.
    pub fn assigned(&self) -> std::collections::BTreeMap<String, usize> {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until every stage in `stages` owns at least one partition; false on timeout.
    pub async fn wait_for(&self, stages: &[String], timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let now = self.assigned();
            if stages.iter().all(|s| now.get(s).is_some_and(|n| *n > 0)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_the_largest_fraction_of_partitions_owned() {
        let r = Readiness::default();
        assert_eq!(r.share(), 1.0, "unknown totals: full quota");
        r.set_total("triage", 8);
        r.set_assigned("triage", 2);
        assert_eq!(r.share(), 0.25);
        r.set_total("resolve", 4);
        r.set_assigned("resolve", 2);
        assert_eq!(r.share(), 0.5);
    }
}
