//! Reading a pipeline's results and dead letters back and summarising them: which jobs ended,
//! which were lost or duplicated, by stage, reason, provider and cost. Demo, eval, chaos, the
//! benchmark and the end-to-end tests all count with this one tally.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use switchyard::envelope::{DeadLetter, JobResult};
use switchyard::money::MicroUsd;

/// Everything read back from a results and a dead-letter topic.
#[derive(Debug, Default)]
pub struct Tally {
    /// Results by job id (a job seen twice is a duplicate).
    pub results: HashMap<String, Vec<JobResult>>,
    /// Dead letters by job id.
    pub dead: HashMap<String, Vec<DeadLetter>>,
    /// Dead letters that carry no job id (unreadable input).
    pub dead_without_id: Vec<DeadLetter>,
    /// Messages on those topics that are not envelopes at all (should never happen).
    pub unreadable: usize,
}

impl Tally {
    /// Adds one message from the results or the dead-letter topic. Returns the job id when
    /// this message is the first end seen for that job.
    pub fn add(&mut self, is_dead_letter: bool, payload: &[u8]) -> Option<String> {
        let id = if is_dead_letter {
            match serde_json::from_slice::<DeadLetter>(payload) {
                Ok(d) => match d.job_id.as_ref().map(ToString::to_string) {
                    Some(id) => {
                        self.dead.entry(id.clone()).or_default().push(d);
                        id
                    }
                    None => {
                        self.dead_without_id.push(d);
                        return None;
                    }
                },
                Err(_) => {
                    self.unreadable += 1;
                    return None;
                }
            }
        } else {
            match serde_json::from_slice::<JobResult>(payload) {
                Ok(r) => {
                    let id = r.job_id.to_string();
                    self.results.entry(id.clone()).or_default().push(r);
                    id
                }
                Err(_) => {
                    self.unreadable += 1;
                    return None;
                }
            }
        };
        let deliveries =
            self.results.get(&id).map_or(0, Vec::len) + self.dead.get(&id).map_or(0, Vec::len);
        (deliveries == 1).then_some(id)
    }

    /// Whether a job has ended (in results or dead letters).
    pub fn finished(&self, job_id: &str) -> bool {
        self.results.contains_key(job_id) || self.dead.contains_key(job_id)
    }

    /// Jobs of `expected` that ended.
    pub fn finished_count(&self, expected: &HashSet<String>) -> usize {
        expected.iter().filter(|id| self.finished(id)).count()
    }

    /// Deliveries beyond the first, over results and dead letters.
    pub fn duplicates(&self) -> usize {
        let r: usize = self.results.values().map(|v| v.len() - 1).sum();
        let d: usize = self.dead.values().map(|v| v.len() - 1).sum();
        // A job both in results and dead letters (redelivered after a crash, say) counts too.
        let both = self
            .results
            .keys()
            .filter(|k| self.dead.contains_key(*k))
            .count();
        r + d + both
    }

    /// Summarises the jobs of `expected`.
    pub fn summary(
        &self,
        pipeline: &str,
        expected: &HashSet<String>,
        elapsed: Duration,
    ) -> Summary {
        let mut s = Summary {
            pipeline: pipeline.to_string(),
            jobs: expected.len(),
            ..Summary::default()
        };
        let mut latencies = Vec::new();
        for id in expected {
            if let Some(r) = self.results.get(id).and_then(|v| v.first()) {
                s.results += 1;
                *s.accepted_by_stage.entry(r.stage.to_string()).or_default() += 1;
                if !r.escalations.is_empty() {
                    s.escalated += 1;
                    for e in &r.escalations {
                        *s.escalation_reasons
                            .entry(reason_name(&e.reason))
                            .or_default() += 1;
                    }
                }
                if r.needs_review {
                    s.needs_review += 1;
                }
                latencies.push(r.latency_ms);
                s.add_attempts(&r.attempts);
            } else if let Some(d) = self.dead.get(id).and_then(|v| v.first()) {
                s.dead_lettered += 1;
                *s.dead_lettered_by_reason
                    .entry(d.reason.as_str().to_string())
                    .or_default() += 1;
                tracing::debug!(detail = %d.detail, "dead letter");
                if !d.escalations.is_empty() {
                    s.escalated += 1;
                }
                s.add_attempts(&d.attempts);
            } else {
                s.lost += 1;
            }
        }
        s.duplicates = self.duplicates();
        s.cost_usd = MicroUsd(s.cost_micro_usd).as_usd();
        latencies.sort_unstable();
        s.p50_ms = percentile(&latencies, 0.50);
        s.p95_ms = percentile(&latencies, 0.95);
        s.elapsed_s = elapsed.as_secs_f64();
        s.jobs_per_s = if elapsed.as_secs_f64() > 0.0 {
            (s.results + s.dead_lettered) as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        s
    }
}

fn reason_name<T: Serialize>(r: &T) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

use switchyard::stats::percentile;

/// The demo's figures (also its `--json` output).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Pipeline name.
    pub pipeline: String,
    /// Jobs produced.
    pub jobs: usize,
    /// Jobs with a result.
    pub results: usize,
    /// Jobs dead-lettered.
    pub dead_lettered: usize,
    /// Jobs with neither (must be 0).
    pub lost: usize,
    /// Extra deliveries (at-least-once duplicates).
    pub duplicates: usize,
    /// Jobs that went through more than one stage.
    pub escalated: usize,
    /// Escalations by reason.
    pub escalation_reasons: BTreeMap<String, usize>,
    /// Results flagged for review.
    pub needs_review: usize,
    /// Results by the stage that produced them.
    pub accepted_by_stage: BTreeMap<String, usize>,
    /// Dead letters by reason.
    pub dead_lettered_by_reason: BTreeMap<String, usize>,
    /// LLM attempts.
    pub calls: usize,
    /// Attempts by outcome class.
    pub calls_by_class: BTreeMap<String, usize>,
    /// Repair re-asks.
    pub repairs: usize,
    /// Total cost, exact.
    pub cost_micro_usd: u64,
    /// Total cost in dollars (display).
    pub cost_usd: f64,
    /// Median job latency (intake created_at → result).
    pub p50_ms: u64,
    /// 95th percentile job latency.
    pub p95_ms: u64,
    /// Finished jobs per second of wall time.
    pub jobs_per_s: f64,
    /// Wall time from first produce to last job read back.
    pub elapsed_s: f64,
    /// Attempts and successes per provider.
    pub per_provider: BTreeMap<String, ProviderTally>,
    /// Jobs that needed more than one endpoint somewhere (fallback fired).
    pub fallbacks: usize,
    /// 429s received from providers.
    pub provider_429s: usize,
    /// The demo scenario, if any.
    pub scenario: Option<String>,
    /// 429s the simulator sent (its own count).
    pub sim_429s_sent: u64,
    /// Requests the simulator received.
    pub sim_requests: u64,
    /// Per simulator key: the most requests seen in any 60 s window, and the configured limit.
    pub sim_keys: BTreeMap<String, SimKey>,
    /// Calls per second as a share of what the configured per-key limits allow (rate-limit
    /// scenario only).
    pub limit_utilization: Option<f64>,
    /// Attempts in the ledger store after the run (in memory, or PostgreSQL with DATABASE_URL).
    pub ledger_calls: u64,
    /// Their cost.
    pub ledger_cost_micro_usd: u64,
}

/// One provider's attempts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProviderTally {
    /// Calls made.
    pub attempts: usize,
    /// Calls that returned a usable answer.
    pub successes: usize,
}

/// One simulator key's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SimKey {
    /// Most requests seen from the key in any 60 s window.
    pub sim_max_rpm_observed: u64,
    /// The key's configured limit.
    pub configured_rpm: Option<u32>,
}

impl Summary {
    fn add_attempts(&mut self, attempts: &[switchyard::envelope::Attempt]) {
        use switchyard::envelope::AttemptClass;
        // A fallback: within one stage, a first call failed for a reason other than the schema
        // (which the repair re-ask handles at the same endpoint).
        if attempts
            .windows(2)
            .any(|w| w[0].stage == w[1].stage && !w[1].repair && w[0].class != AttemptClass::Ok)
        {
            self.fallbacks += 1;
        }
        for a in attempts {
            let p = self.per_provider.entry(a.provider.clone()).or_default();
            p.attempts += 1;
            if a.class == AttemptClass::Ok {
                p.successes += 1;
            }
            if a.class == AttemptClass::RateLimited {
                self.provider_429s += 1;
            }
            self.calls += 1;
            *self
                .calls_by_class
                .entry(a.class.as_str().to_string())
                .or_default() += 1;
            if a.repair {
                self.repairs += 1;
            }
            self.cost_micro_usd += a.cost_micro_usd.0;
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let pct = |n: usize| {
            if self.jobs == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.jobs as f64
            }
        };
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<26} {v}\n"));
        row("pipeline", self.pipeline.clone());
        row("jobs", self.jobs.to_string());
        row(
            "results",
            format!("{} ({:.1}%)", self.results, pct(self.results)),
        );
        for (stage, n) in &self.accepted_by_stage {
            row(&format!("  accepted at {stage}"), n.to_string());
        }
        row("  flagged for review", self.needs_review.to_string());
        row(
            "escalated",
            format!("{} ({:.1}%)", self.escalated, pct(self.escalated)),
        );
        for (reason, n) in &self.escalation_reasons {
            row(&format!("  {reason}"), n.to_string());
        }
        row(
            "dead-lettered",
            format!("{} ({:.1}%)", self.dead_lettered, pct(self.dead_lettered)),
        );
        for (reason, n) in &self.dead_lettered_by_reason {
            row(&format!("  {reason}"), n.to_string());
        }
        row("lost", self.lost.to_string());
        row("duplicates", self.duplicates.to_string());
        row(
            "LLM calls",
            format!("{} ({} repair re-asks)", self.calls, self.repairs),
        );
        for (class, n) in &self.calls_by_class {
            row(&format!("  {class}"), n.to_string());
        }
        row(
            "cost",
            format!(
                "{} ({} µ$)",
                MicroUsd(self.cost_micro_usd),
                self.cost_micro_usd
            ),
        );
        row(
            "ledger",
            format!(
                "{} attempts, {}",
                self.ledger_calls,
                MicroUsd(self.ledger_cost_micro_usd)
            ),
        );
        row(
            "job latency p50 / p95",
            format!("{} ms / {} ms", self.p50_ms, self.p95_ms),
        );
        row(
            "throughput",
            format!("{:.1} jobs/s over {:.1} s", self.jobs_per_s, self.elapsed_s),
        );
        out
    }
}
