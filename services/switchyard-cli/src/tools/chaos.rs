//! `switchyard chaos`: the pipeline as separate processes — `switchyard dev-broker`, `llm-sim`
//! with random faults, and two `switchyard run` replicas — while replicas and the simulator are
//! killed (SIGKILL), stopped (SIGTERM) and restarted at random and malformed jobs are mixed in.
//! At the end the results and dead-letter topics are read back: every job must be in one of
//! them.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use switchyard::config::Pipeline;
use switchyard::envelope::{Intake, now};
use switchyard::kafka::KafkaSettings;
use switchyard::kafka::client::{produce_jobs, read_until, reader, send_all};
use switchyard_testkit::Tally;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Jobs to run.
    pub jobs: usize,
    /// Seed for every random choice.
    pub seed: u64,
    /// Folder holding the `switchyard` and `llm-sim` binaries.
    pub bin_dir: PathBuf,
    /// Pipeline folder.
    pub pipeline: PathBuf,
    /// Faults to inject (kills and stops of replicas and of the simulator).
    pub faults: usize,
}

/// The outcome, printed as one JSON line.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChaosReport {
    /// Valid jobs produced.
    pub jobs: usize,
    /// Jobs with a result.
    pub results: usize,
    /// Jobs dead-lettered.
    pub dead_lettered: usize,
    /// Jobs with neither once every stage's consumer group had caught up (lag 0) and the
    /// output topics stopped growing, or a 10-minute deadline passed.
    pub lost: usize,
    /// Jobs that ended only after the first 90 s of quiet (slow, not lost).
    pub late: usize,
    /// Calls the simulator answered, over all its restarts.
    pub llm_calls: u64,
    /// Of those, calls beyond the ones each job's first ending records: calls of jobs redone
    /// after a kill (including calls of jobs in flight at the kill, which no output records).
    pub llm_calls_redone: u64,
    /// Extra deliveries.
    pub duplicates: usize,
    /// Processes killed or stopped and started again.
    pub restarts: usize,
    /// Malformed messages mixed in.
    pub malformed: usize,
    /// Malformed messages that came out as dead letters.
    pub malformed_dead_lettered: usize,
    /// Faults by kind.
    pub faults: BTreeMap<String, usize>,
    /// Seed used.
    pub seed: u64,
    /// Wall time.
    pub elapsed_s: f64,
}

/// A child process killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's first stdout line, which must start with `prefix`; the rest of it.
pub(crate) fn first_line(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    line.trim()
        .strip_prefix(prefix)
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "expected a first line starting with `{prefix}`, got `{}`",
                line.trim()
            )
        })
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn spawn_run(bin: &Path, pipeline: &Path, bootstrap: &str, sim: &str) -> anyhow::Result<Proc> {
    let child = Command::new(bin.join("switchyard"))
        .args(["run", "--pipeline"])
        .arg(pipeline)
        .args([
            "--brokers",
            bootstrap,
            "-X",
            "session.timeout.ms=6000",
            "--group-prefix",
            "chaos",
        ])
        .env(
            "SWITCHYARD_PROVIDER_SIMCLOUD_URL",
            format!("{sim}/simcloud/v1"),
        )
        .env(
            "SWITCHYARD_PROVIDER_SIMEDGE_URL",
            format!("{sim}/simedge/v1"),
        )
        .env("SWITCHYARD_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start switchyard run")?;
    Ok(Proc { child })
}

fn spawn_sim(bin: &Path, profile: &Path, port: u16) -> anyhow::Result<(Proc, u16)> {
    let mut child = Command::new(bin.join("llm-sim"))
        .args(["--port", &port.to_string(), "--profile"])
        .arg(profile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.join("llm-sim").display()))?;
    let url = first_line(&mut child, "listening=")?;
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("llm-sim printed `{url}`"))?;
    Ok((Proc { child }, port))
}

/// Attempts the simulator answered (an HTTP status; a refused connection never reached it).
fn answered(attempts: &[switchyard::envelope::Attempt]) -> u64 {
    attempts.iter().filter(|a| a.status.is_some()).count() as u64
}

/// Calls the simulator at `url` has answered (0 when it cannot tell).
async fn sim_calls(url: &str) -> u64 {
    let stats = async {
        let r = reqwest::get(format!("{url}/sim/stats"))
            .await
            .map_err(|e| e.to_string())?;
        r.json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), stats).await {
        Ok(Ok(v)) => v["requests"].as_u64().unwrap_or(0),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "chaos: cannot read the simulator's counts");
            0
        }
        Err(_) => {
            tracing::warn!("chaos: the simulator's counts did not come in 5 s");
            0
        }
    }
}

/// Runs the drill.
pub async fn run_chaos(options: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let bin = &options.bin_dir;
    for b in ["switchyard", "llm-sim"] {
        if !bin.join(b).is_file() {
            bail!(
                "{} is missing: build both binaries first (cargo build --release)",
                bin.join(b).display()
            );
        }
    }
    let pipeline = Pipeline::load(&options.pipeline).map_err(|e| anyhow!("{e}"))?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let tmp = std::env::temp_dir().join(format!(
        "switchyard-chaos-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&tmp)?;

    // The simulator: shipped models, faults on, quick answers, short hangs.
    let mut profile = llm_sim::Profile::default_profile()?;
    profile.seed = options.seed;
    profile.latency_scale = 0.5;
    profile.timeout_hang = Duration::from_secs(2);
    for m in profile.models.values_mut() {
        m.faults.server_error += 0.03;
        m.faults.timeout += 0.005;
        m.faults.in_band_error += 0.01;
    }
    let profile_path = tmp.join("profile.yaml");
    std::fs::write(&profile_path, serde_norway::to_string(&profile)?)?;

    let mut broker = Command::new(bin.join("switchyard"))
        .args([
            "dev-broker",
            "--port",
            "0",
            "--partitions",
            "6",
            "--pipeline",
        ])
        .arg(&options.pipeline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start switchyard dev-broker")?;
    let bootstrap = first_line(&mut broker, "bootstrap=")?;
    let _broker = Proc { child: broker };
    let (mut sim, sim_port) = spawn_sim(bin, &profile_path, 0)?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let mut replicas = vec![
        spawn_run(bin, &options.pipeline, &bootstrap, &sim_url)?,
        spawn_run(bin, &options.pipeline, &bootstrap, &sim_url)?,
    ];

    let kafka = KafkaSettings::new(&bootstrap);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // Real tickets (the pipeline's samples), so jobs take every path: answered by the local
    // tier, by the cheap model, or escalated to the strong one.
    let samples = crate::tools::demo::sample_payloads(&pipeline).unwrap_or_default();
    let text = |i: usize| {
        samples
            .get(i % samples.len().max(1))
            .and_then(|p| p["text"].as_str())
            .map_or_else(
                || format!("ticket {i}: my card payment was declined twice"),
                str::to_string,
            )
    };
    let jobs: Vec<Intake> = (0..options.jobs)
        .map(|i| Intake {
            job_id: format!("chaos-{}-{i:06}", &run_id[..8]).into(),
            tenant: "chaos".into(),
            pipeline: pipeline.name.clone(),
            payload: serde_json::json!({"text": text(i), "channel": "chat"}),
            created_at: now(),
            metadata: BTreeMap::new(),
            redrive_count: 0,
        })
        .collect();
    let expected: HashSet<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
    let malformed: Vec<(String, Vec<u8>)> = (0..(options.jobs / 50).max(3))
        .map(|i| {
            let body = match i % 3 {
                0 => b"{not json".to_vec(),
                1 => vec![0xff, 0xfe, i as u8],
                _ => br#"{"tenant": "chaos", "payload": 1}"#.to_vec(),
            };
            (format!("malformed-{i}"), body)
        })
        .collect();
    let started = Instant::now();
    send_all(&kafka, &pipeline.topics.intake, &malformed)
        .await
        .map_err(anyhow::Error::msg)?;
    // Jobs arrive in waves, one before each fault, so every fault lands on work in flight.
    let mut waves = jobs.chunks(jobs.len().div_ceil(options.faults + 1).max(1));
    if let Some(first) = waves.next() {
        produce_jobs(&kafka, &pipeline.topics.intake, first)
            .await
            .map_err(anyhow::Error::msg)?;
    }

    // Faults while the jobs run, a few seconds apart.
    let consumer = reader(&kafka, &[&pipeline.topics.results, &pipeline.topics.dlq])
        .map_err(anyhow::Error::msg)?;
    let mut tally = Tally::default();
    let dlq = pipeline.topics.dlq.clone();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut restarts = 0;
    // Calls answered by simulator processes since killed.
    let mut calls_before = 0u64;
    for _ in 0..options.faults {
        let pause = Duration::from_millis(rng.random_range(1000..3000));
        read_until(&consumer, pause, |topic, payload| {
            tally.add(topic == dlq, payload);
            false
        })
        .await;
        match rng.random_range(0..4) {
            0 | 1 => {
                let i = rng.random_range(0..replicas.len());
                signal(&replicas[i].child, "-KILL");
                let _ = replicas[i].child.wait();
                replicas[i] = spawn_run(bin, &options.pipeline, &bootstrap, &sim_url)?;
                *faults.entry("replica_killed".into()).or_default() += 1;
            }
            2 => {
                let i = rng.random_range(0..replicas.len());
                signal(&replicas[i].child, "-TERM");
                let _ = replicas[i].child.wait();
                replicas[i] = spawn_run(bin, &options.pipeline, &bootstrap, &sim_url)?;
                *faults.entry("replica_stopped".into()).or_default() += 1;
            }
            _ => {
                calls_before += sim_calls(&sim_url).await;
                signal(&sim.child, "-KILL");
                let _ = sim.child.wait();
                tokio::time::sleep(Duration::from_millis(500)).await;
                sim = spawn_sim(bin, &profile_path, sim_port)?.0;
                *faults.entry("simulator_killed".into()).or_default() += 1;
            }
        }
        restarts += 1;
        if let Some(wave) = waves.next() {
            produce_jobs(&kafka, &pipeline.topics.intake, wave)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        tracing::info!(
            finished = tally.finished_count(&expected),
            of = expected.len(),
            ?faults,
            "chaos: fault injected"
        );
    }

    for wave in waves {
        produce_jobs(&kafka, &pipeline.topics.intake, wave)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // Then let everything finish.
    let mut done = tally.finished_count(&expected);
    let unnamed = malformed.len();
    let complete =
        |done: usize, t: &Tally| done >= expected.len() && t.dead_without_id.len() >= unnamed;
    let add = |tally: &mut Tally, done: &mut usize, topic: &str, payload: &[u8]| {
        if let Some(id) = tally.add(topic == dlq, payload)
            && expected.contains(&id)
        {
            *done += 1;
        }
    };
    if !complete(done, &tally) {
        read_until(&consumer, Duration::from_secs(90), |topic, payload| {
            add(&mut tally, &mut done, topic, payload);
            complete(done, &tally)
        })
        .await;
    }
    // Late is not lost: keep reading while any stage's group still has lag or the outputs still
    // grow (a generous deadline), then call missing jobs lost.
    let done_at_quiet = done;
    let groups: Vec<(String, Vec<String>)> = pipeline
        .stages
        .iter()
        .map(|s| {
            (
                format!("chaos.{}.{}", pipeline.name, s.name),
                pipeline
                    .stage_topics(s.index)
                    .into_iter()
                    .map(|t| t.topic)
                    .collect(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !complete(done, &tally) && Instant::now() < deadline {
        let before = tally.results.len() + tally.dead.len() + tally.dead_without_id.len();
        read_until(&consumer, Duration::from_secs(10), |topic, payload| {
            add(&mut tally, &mut done, topic, payload);
            complete(done, &tally)
        })
        .await;
        let grew = tally.results.len() + tally.dead.len() + tally.dead_without_id.len() > before;
        let check = kafka.clone();
        let g = groups.clone();
        let lag: i64 = tokio::task::spawn_blocking(move || {
            g.iter()
                .map(|(group, topics)| {
                    switchyard::kafka::client::group_lag(&check, group, topics).unwrap_or(1)
                })
                .sum()
        })
        .await
        .unwrap_or(1);
        if lag == 0 && !grew {
            break;
        }
        tracing::info!(
            lag,
            finished = done,
            of = expected.len(),
            "chaos: waiting for late jobs"
        );
    }
    let late = done.saturating_sub(done_at_quiet);
    let elapsed = started.elapsed();
    let llm_calls = calls_before + sim_calls(&sim_url).await;
    let recorded: u64 = expected
        .iter()
        .map(|id| {
            tally
                .results
                .get(id)
                .and_then(|r| r.first())
                .map(|r| answered(&r.attempts))
                .or_else(|| {
                    tally
                        .dead
                        .get(id)
                        .and_then(|d| d.first())
                        .map(|d| answered(&d.attempts))
                })
                .unwrap_or(0)
        })
        .sum();
    for r in &replicas {
        signal(&r.child, "-TERM");
    }
    for r in &mut replicas {
        let _ = r.child.wait();
    }
    drop(sim);
    let _ = std::fs::remove_dir_all(&tmp);

    let summary = tally.summary(&pipeline.name, &expected, elapsed);
    Ok(ChaosReport {
        jobs: jobs.len(),
        results: summary.results,
        dead_lettered: summary.dead_lettered,
        lost: summary.lost,
        late,
        llm_calls,
        llm_calls_redone: llm_calls.saturating_sub(recorded),
        duplicates: summary.duplicates,
        restarts,
        malformed: malformed.len(),
        // Distinct by source: a malformed message redone after a kill is one message.
        malformed_dead_lettered: tally
            .dead_without_id
            .iter()
            .map(|d| (d.source.partition, d.source.offset))
            .collect::<HashSet<_>>()
            .len(),
        faults,
        seed: options.seed,
        elapsed_s: elapsed.as_secs_f64(),
    })
}
