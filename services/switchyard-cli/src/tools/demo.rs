//! `switchyard demo`: a whole pipeline on one machine with nothing installed. An embedded
//! Kafka-protocol broker, llm-sim in-process, the pipeline's stages, sample jobs in, and every
//! job read back from the results and dead-letter topics to prove none was lost.
//! The pipeline runs on the test kit's one in-process [`Harness`]; its results are counted by
//! the kit's [`Tally`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use switchyard::config::Pipeline;
use switchyard::envelope::{Intake, now};
use switchyard_testkit::Harness;
use switchyard_testkit::tally::{SimKey, Summary};

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
    use switchyard::config::ProviderKey;
    use switchyard::secret::{KeyRef, Secret};
    match scenario {
        None => {}
        Some(Scenario::Outage) => {
            // Make simcloud the first choice of the first LLM stage, so its outage is felt.
            if let Some(s) = pipeline.stages.iter_mut().find(|s| !s.models.is_empty()) {
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
                    key_ref: KeyRef::Env(format!("DEMO_{}_KEY", switchyard::config::env_key(name))),
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
            if let Some(s) = pipeline.stages.iter_mut().find(|s| !s.models.is_empty()) {
                s.route.provider.order = vec!["simcloud".into()];
                s.route.timeout = Duration::from_millis(400);
            }
        }
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
    let sim_state = sim.sim.clone();
    // The ledger: PostgreSQL when a database is given, else in memory.
    let ledger: Arc<dyn switchyard::ledger::LedgerStore> = match &options.database_url {
        Some(url) => Arc::new(switchyard::ledger::PgLedger::new(url)?),
        None => Arc::new(switchyard::ledger::MemoryLedger::default()),
    };
    let mut harness = Harness::new(pipeline, options.partitions, &[])?
        .with_sim(sim)
        .with_ledger(ledger.clone());
    // Produce only once every stage owns its partitions, so the figures measure the pipeline,
    // not the consumer-group join.
    if !harness
        .start_stages("switchyard-demo", Duration::from_secs(30))
        .await
    {
        tracing::warn!("stages not all assigned after 30 s; producing anyway");
    }
    let pipeline = harness.pipeline.clone();

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let jobs: Vec<Intake> = (0..options.jobs)
        .map(|i| Intake {
            job_id: format!("demo-{}-{i:06}", &run_id[..8]).into(),
            tenant: "demo".into(),
            pipeline: pipeline.name.clone(),
            payload: payloads[i % payloads.len()].clone(),
            created_at: now(),
            metadata: BTreeMap::new(),
            redrive_count: 0,
        })
        .collect();
    let expected: HashSet<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();

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

    let started = Instant::now();
    harness.send_jobs(&jobs).await?;
    let mut last_finish = started;
    let total = expected.len();
    let tally = harness
        .read_back(&expected, 0, options.idle_timeout, |_, done| {
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
        })
        .await?;
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
    if let Err(e) = harness.stop_stages().await {
        tracing::warn!(error = %format!("{e:#}"), "pipeline stopped with an error");
    }
    let stats = sim_state.stats();
    if let Some(sim) = harness.sim.take() {
        sim.stop().await;
    }
    drop(harness);
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
