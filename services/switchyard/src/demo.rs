//! `switchyard demo`: a whole pipeline on one machine with nothing installed. An embedded
//! Kafka-protocol broker, llm-sim in-process, the pipeline's stages, sample jobs in, and every
//! job read back from the results and dead-letter topics to prove none was lost.
//!
//! [`Tally`] (reading results and dead letters back and summarising them) is shared with the
//! end-to-end tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::broker::EmbeddedBroker;
use crate::config::Pipeline;
use crate::envelope::{DeadLetter, Intake, JobResult, now};
use crate::kafka::KafkaSettings;
use crate::money::MicroUsd;
use crate::produce::{produce_jobs, read_until, reader};
use crate::runner::{Readiness, RunOptions, run};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Jobs to run.
    pub jobs: usize,
    /// Pipeline folder.
    pub pipeline: PathBuf,
    /// Partitions per topic.
    pub partitions: i32,
    /// Simulator latency scale (1.0 = hosted-model latencies).
    pub latency_scale: f64,
    /// Simulator seed.
    pub seed: u64,
    /// Give up waiting when no job finishes for this long.
    pub idle_timeout: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// A fault scenario to play.
    pub scenario: Option<Scenario>,
    /// PostgreSQL for the ledger (in memory when absent).
    pub database_url: Option<String>,
}

/// Fault scenarios for the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The triage stage's first provider (simcloud) answers 503 for the middle third of the run.
    Outage,
    /// Every provider key has a limit well below demand; Switchyard must keep under it.
    RateLimit,
    /// simcloud becomes 40× slower than usual, beyond the triage timeout.
    SlowProvider,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Outage => "outage",
            Scenario::RateLimit => "rate-limit",
            Scenario::SlowProvider => "slow-provider",
        }
    }
}

/// Per-key limit of the rate-limit scenario, requests per minute.
const SCENARIO_RPM: u32 = 600;

/// Sets up the simulator and the pipeline for a scenario.
fn stage_scenario(
    scenario: Option<Scenario>,
    profile: &mut llm_sim::Profile,
    pipeline: &mut Pipeline,
) {
    use crate::config::ProviderKey;
    use crate::secret::{KeyRef, Secret};
    match scenario {
        None => {}
        Some(Scenario::Outage) => {
            // Make simcloud the first choice of triage, so its outage is felt.
            if let Some(s) = pipeline.stages.first_mut() {
                s.route.provider.order = vec!["simcloud".into()];
            }
        }
        Some(Scenario::RateLimit) => {
            for (name, p) in pipeline.providers.iter_mut() {
                let key = format!("demo-key-{name}");
                profile.keys.insert(
                    key.clone(),
                    llm_sim::profile::KeyProfile {
                        rpm: Some(SCENARIO_RPM),
                        revoked: false,
                        out_of_credit: false,
                    },
                );
                p.keys = vec![ProviderKey {
                    key_ref: KeyRef::Env(format!("DEMO_{}_KEY", crate::config::env_key(name))),
                    secret: Secret::new(key),
                    rpm: Some(SCENARIO_RPM),
                    tpm: None,
                }];
                p.rpm = None;
            }
        }
        Some(Scenario::SlowProvider) => {
            profile
                .providers
                .entry("simcloud".into())
                .or_default()
                .latency_multiplier = 40.0;
            if let Some(s) = pipeline.stages.first_mut() {
                s.route.provider.order = vec!["simcloud".into()];
                s.route.timeout = Duration::from_millis(400);
            }
        }
    }
}

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
                Ok(d) => match d.job_id.clone() {
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
                    let id = r.job_id.clone();
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
                *s.accepted_by_stage.entry(r.stage.clone()).or_default() += 1;
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

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

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
    fn add_attempts(&mut self, attempts: &[crate::envelope::Attempt]) {
        use crate::envelope::AttemptClass;
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

/// Sample payloads from the pipeline's samples file (JSONL of payload objects).
pub fn sample_payloads(pipeline: &Pipeline) -> anyhow::Result<Vec<Value>> {
    let Some(path) = &pipeline.samples else {
        bail!(
            "pipeline `{}` has no `samples:` file; add one to run the demo",
            pipeline.name
        );
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read samples {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        out.push(v);
    }
    if out.is_empty() {
        bail!("samples file {} is empty", path.display());
    }
    Ok(out)
}

/// Runs the demo and returns its summary.
pub async fn run_demo(options: DemoOptions) -> anyhow::Result<Summary> {
    let mut pipeline = Pipeline::load(&options.pipeline).map_err(|e| anyhow::anyhow!("{e}"))?;
    let payloads = sample_payloads(&pipeline)?;

    let mut profile = llm_sim::Profile::default_profile()?;
    profile.latency_scale = options.latency_scale;
    profile.seed = options.seed;
    stage_scenario(options.scenario, &mut profile, &mut pipeline);
    let sim = llm_sim::spawn(profile, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the in-process llm-sim")?;
    pipeline.point_providers_at(&sim.base_url());

    let broker = EmbeddedBroker::start()?;
    for t in pipeline.all_topics() {
        broker.create_topic(&t, options.partitions)?;
    }
    let kafka = KafkaSettings::new(broker.bootstrap());
    let pipeline = Arc::new(pipeline);
    // The ledger: PostgreSQL when a database is given, else in memory.
    let ledger: Arc<dyn crate::ledger::LedgerStore> = match &options.database_url {
        Some(url) => Arc::new(crate::ledger::PgLedger::new(url)?),
        None => Arc::new(crate::ledger::MemoryLedger::default()),
    };

    let shutdown = CancellationToken::new();
    let run_options = RunOptions {
        ops: None,
        kafka: kafka.clone(),
        stages: Vec::new(),
        group_prefix: "switchyard-demo".into(),
        readiness: Arc::new(Readiness::default()),
        ledger: Some(ledger.clone()),
        spend_seed: Vec::new(),
    };
    let readiness = run_options.readiness.clone();
    let runner = tokio::spawn(run(pipeline.clone(), run_options, shutdown.clone()));
    // Produce only once every stage owns its partitions, so the figures measure the pipeline,
    // not the consumer-group join.
    let stages: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
    if !readiness.wait_for(&stages, Duration::from_secs(30)).await {
        tracing::warn!("stages not all assigned after 30 s; producing anyway");
    }

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let jobs: Vec<Intake> = (0..options.jobs)
        .map(|i| Intake {
            job_id: format!("demo-{}-{i:06}", &run_id[..8]),
            tenant: "demo".into(),
            pipeline: pipeline.name.clone(),
            payload: payloads[i % payloads.len()].clone(),
            created_at: now(),
            metadata: BTreeMap::new(),
            redrive_count: 0,
        })
        .collect();
    let expected: HashSet<String> = jobs.iter().map(|j| j.job_id.clone()).collect();

    let bar = if options.progress {
        ProgressBar::with_draw_target(Some(options.jobs as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} jobs finished  {per_sec}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let consumer = reader(&kafka, &[&pipeline.topics.results, &pipeline.topics.dlq])
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    produce_jobs(&kafka, &pipeline.topics.intake, &jobs)
        .await
        .map_err(anyhow::Error::msg)?;

    let mut tally = Tally::default();
    let mut done = 0usize;
    let mut last_finish = started;
    let dlq = pipeline.topics.dlq.clone();
    let total = expected.len();
    let sim_state = sim.sim.clone();
    read_until(&consumer, options.idle_timeout, |topic, payload| {
        if let Some(id) = tally.add(topic == dlq, payload)
            && expected.contains(&id)
        {
            done += 1;
            last_finish = Instant::now();
            bar.set_position(done as u64);
            if options.scenario == Some(Scenario::Outage) {
                if done == total / 3 {
                    bar.set_message("simcloud is down");
                    sim_state.set_provider_faults(
                        "simcloud",
                        llm_sim::FaultRates {
                            unavailable: 1.0,
                            ..Default::default()
                        },
                    );
                } else if done == 2 * total / 3 {
                    bar.set_message("simcloud is back");
                    sim_state.set_provider_faults("simcloud", llm_sim::FaultRates::default());
                }
            }
        }
        done >= total
    })
    .await;
    bar.finish_and_clear();
    let elapsed = last_finish.duration_since(started);

    // Let the ledger sink catch up before stopping, so the ledger matches what was read back.
    let expected_calls = tally.summary(&pipeline.name, &expected, elapsed).calls as u64;
    let ledger_deadline = Instant::now() + Duration::from_secs(30);
    let (ledger_calls, ledger_cost) = loop {
        let totals = ledger.totals().await.unwrap_or((0, 0));
        if totals.0 >= expected_calls || Instant::now() >= ledger_deadline {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    match runner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "pipeline stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "pipeline task failed"),
    }
    drop(consumer);
    let stats = sim.sim.stats();
    sim.stop().await;
    drop(broker);
    let mut summary = tally.summary(&pipeline.name, &expected, elapsed);
    summary.scenario = options.scenario.map(|s| s.name().to_string());
    summary.ledger_calls = ledger_calls;
    summary.ledger_cost_micro_usd = ledger_cost;
    summary.sim_429s_sent = stats.sent_429;
    summary.sim_requests = stats.requests;
    summary.sim_keys = stats
        .keys
        .iter()
        .map(|(label, k)| {
            (
                label.clone(),
                SimKey {
                    sim_max_rpm_observed: k.max_rpm_observed,
                    configured_rpm: k.configured_rpm,
                },
            )
        })
        .collect();
    if options.scenario == Some(Scenario::RateLimit) && summary.elapsed_s > 0.0 {
        let allowed_per_s: f64 = stats
            .keys
            .values()
            .filter_map(|k| k.configured_rpm)
            .map(|r| f64::from(r) / 60.0)
            .sum();
        if allowed_per_s > 0.0 {
            summary.limit_utilization =
                Some(stats.requests as f64 / summary.elapsed_s / allowed_per_s);
        }
    }
    Ok(summary)
}
