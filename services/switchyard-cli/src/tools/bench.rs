//! `switchyard bench`: Switchyard against a peer implementation (the Python peer in
//! `bench/peer/`) on one embedded broker and one simulator, in one run, on identical jobs.
//!
//! Two modes:
//! - overhead: the simulator answers at once, so jobs/s and CPU per job measure the
//!   implementation's own work;
//! - latency: every model answers after a lognormal delay (p50 800 ms), and a fixed number of
//!   jobs is in flight, so jobs/s as a share of the ideal (in-flight ÷ mean latency) measures
//!   how well the implementation keeps its in-flight work busy.
//!
//! Figures are steady-state: jobs/s and CPU are taken between the 10th and the 90th percentile
//! of completion times (broker timestamps of the outputs), so start-up, consumer-group joins
//! and the tail of the last slow calls are left out for both implementations alike. Peak RSS is
//! the process's high-water mark (`VmHWM`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use rdkafka::Message;
use serde::Serialize;

use crate::tools::chaos::{Proc, first_line};
use switchyard::config::{Pipeline, PipelineFile};
use switchyard::envelope::{Intake, now};
use switchyard::kafka::KafkaSettings;
use switchyard::kafka::client::{produce_jobs, reader};

/// Simulated median latency in latency mode.
const LATENCY_P50: Duration = Duration::from_millis(800);
/// Lognormal shape in latency mode.
const LATENCY_SIGMA: f64 = 0.3;
/// Partitions of every bench topic.
const PARTITIONS: i32 = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Folder holding the `switchyard` and `llm-sim` binaries.
    pub bin_dir: PathBuf,
    /// Pipeline folder (support-triage).
    pub pipeline: PathBuf,
    /// The peer's command line (program and leading arguments); none runs Switchyard alone.
    pub peer: Option<Vec<String>>,
    /// Jobs for Switchyard in overhead mode.
    pub jobs: usize,
    /// Jobs for Switchyard in latency mode.
    pub latency_jobs: usize,
    /// Jobs for the peer (both modes); it is one to two orders of magnitude slower.
    pub peer_jobs: usize,
    /// Jobs in flight in latency mode (both implementations).
    pub in_flight: usize,
    /// The peer's concurrency in overhead mode.
    pub peer_concurrency: usize,
    /// Extra `-X key=value` options for the `switchyard run` processes.
    pub kafka_options: Vec<String>,
}

/// Figures of one implementation in one mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFigures {
    /// `switchyard` or `peer`.
    pub implementation: String,
    /// `overhead` or `latency`.
    pub mode: String,
    /// Jobs produced.
    pub jobs: usize,
    /// Jobs that came out (result or dead letter).
    pub finished: usize,
    /// Jobs that came out as dead letters.
    pub dead_lettered: usize,
    /// Steady-state jobs per second.
    pub jobs_per_s: f64,
    /// Steady-state CPU time (user + system) per job, microseconds.
    pub cpu_us_per_job: f64,
    /// Peak resident memory, MB.
    pub peak_rss_mb: f64,
    /// Seconds from start to the last output.
    pub wall_s: f64,
}

/// The benchmark's outcome; the last line the command prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    /// Switchyard, overhead mode.
    pub switchyard_jobs_per_s: f64,
    /// Peer, overhead mode.
    pub peer_jobs_per_s: Option<f64>,
    /// Switchyard ÷ peer jobs/s, overhead mode.
    pub throughput_ratio: Option<f64>,
    /// Switchyard peak RSS, overhead mode.
    pub switchyard_peak_rss_mb: f64,
    /// Peer peak RSS, overhead mode.
    pub peer_peak_rss_mb: Option<f64>,
    /// Peer ÷ Switchyard peak RSS, overhead mode.
    pub rss_ratio: Option<f64>,
    /// Switchyard's CPU per job, overhead mode (simulator and broker excluded).
    pub cpu_us_per_job: f64,
    /// Peer's CPU per job, overhead mode.
    pub peer_cpu_us_per_job: Option<f64>,
    /// Switchyard's latency-mode jobs/s over the ideal.
    pub latency_mode_efficiency: f64,
    /// Switchyard's latency-mode jobs/s.
    pub latency_mode_jobs_per_s: f64,
    /// The ideal: in-flight ÷ mean simulated latency of a first-stage call.
    pub latency_mode_ideal_jobs_per_s: f64,
    /// Switchyard's peak RSS in latency mode.
    pub latency_mode_peak_rss_mb: f64,
    /// The peer's latency-mode jobs/s over the same ideal.
    pub peer_latency_mode_efficiency: Option<f64>,
    /// Jobs in flight in latency mode.
    pub in_flight: usize,
    /// Every run's figures.
    pub runs: Vec<RunFigures>,
}

impl BenchReport {
    /// A table of every run for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<11} {:<9} {:>7} {:>9} {:>10} {:>12} {:>9} {:>7}\n",
            "impl", "mode", "jobs", "finished", "jobs/s", "cpu µs/job", "rss MB", "wall s"
        );
        for r in &self.runs {
            s.push_str(&format!(
                "{:<11} {:<9} {:>7} {:>9} {:>10.0} {:>12.0} {:>9.1} {:>7.1}\n",
                r.implementation,
                r.mode,
                r.jobs,
                r.finished,
                r.jobs_per_s,
                r.cpu_us_per_job,
                r.peak_rss_mb,
                r.wall_s
            ));
        }
        s.push_str(&format!(
            "latency mode: {} in flight, ideal {:.0} jobs/s, Switchyard {:.0} jobs/s = {:.2} of ideal\n",
            self.in_flight,
            self.latency_mode_ideal_jobs_per_s,
            self.latency_mode_jobs_per_s,
            self.latency_mode_efficiency
        ));
        if let (Some(t), Some(r)) = (self.throughput_ratio, self.rss_ratio) {
            s.push_str(&format!(
                "overhead mode: Switchyard is {t:.1}× the peer's jobs/s with 1/{r:.1} of its memory\n"
            ));
        }
        s
    }
}

/// CPU time (user + system) of a process, from `/proc/PID/stat`.
fn cpu_time(pid: u32, ticks_per_s: f64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / ticks_per_s))
}

/// Peak resident memory (`VmHWM`) of a process, in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Samples a process's CPU time every 50 ms, with the wall clock (ms since the epoch).
struct CpuSampler {
    samples: Arc<Mutex<Vec<(i64, Duration)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuSampler {
    fn start(pid: u32, ticks: f64) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(cpu) = cpu_time(pid, ticks)
                    && let Ok(mut v) = s.lock()
                {
                    v.push((epoch_ms(), cpu));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(i64, Duration)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// CPU time at `at_ms`, interpolated between samples.
fn cpu_at(samples: &[(i64, Duration)], at_ms: i64) -> Option<f64> {
    let i = samples.partition_point(|(t, _)| *t <= at_ms);
    let (t0, c0) = samples.get(i.checked_sub(1)?)?;
    let Some((t1, c1)) = samples.get(i) else {
        return Some(c0.as_secs_f64());
    };
    let f = if t1 > t0 {
        (at_ms - t0) as f64 / (t1 - t0) as f64
    } else {
        0.0
    };
    Some(c0.as_secs_f64() + f * (c1.as_secs_f64() - c0.as_secs_f64()))
}

/// Steady-state figures from completion times (ms, any order) and CPU samples: jobs/s and CPU
/// per job between the 10th and the 90th percentile of completions.
pub fn steady_state(completions: &[i64], cpu: &[(i64, Duration)]) -> (f64, f64) {
    let mut t = completions.to_vec();
    t.sort_unstable();
    if t.len() < 10 {
        return (0.0, 0.0);
    }
    let (lo, hi) = (t.len() / 10, t.len() - 1 - t.len() / 10);
    let (t_lo, t_hi) = (t[lo], t[hi]);
    let jobs = (hi - lo) as f64;
    let secs = ((t_hi - t_lo) as f64 / 1000.0).max(0.001);
    let cpu_us = match (cpu_at(cpu, t_lo), cpu_at(cpu, t_hi)) {
        (Some(a), Some(b)) => (b - a) * 1e6 / jobs,
        _ => 0.0,
    };
    (jobs / secs, cpu_us)
}

/// The topics of one run.
struct RunTopics {
    name: String,
    intake: String,
    results: String,
    dlq: String,
}

impl RunTopics {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            intake: format!("{name}.intake"),
            results: format!("{name}.results"),
            dlq: format!("{name}.dlq"),
        }
    }
}

/// Writes a copy of the pipeline under `dir/name` for one run: its own name (so its own
/// topics), the simulator as its only providers, no rate limits, and `in_flight` jobs at once.
fn bench_pipeline(
    source: &Path,
    dir: &Path,
    name: &str,
    providers: &Path,
    in_flight: Option<usize>,
) -> anyhow::Result<PathBuf> {
    let target = dir.join(name);
    copy_dir(source, &target)?;
    let yaml_path = target.join("pipeline.yaml");
    let text = std::fs::read_to_string(&yaml_path)?;
    let mut file: PipelineFile = serde_norway::from_str(&text)
        .with_context(|| format!("cannot read {}", yaml_path.display()))?;
    file.name = name.to_string();
    file.catalog = std::fs::canonicalize(source.join(&file.catalog))?;
    file.providers = providers.to_path_buf();
    file.tenants = None;
    if let Some(n) = in_flight {
        file.concurrency.max_in_flight = n;
        // Partitions are not perfectly balanced: let one hold a good share.
        file.concurrency.max_in_flight_per_partition = n.div_ceil(PARTITIONS as usize) * 3;
    }
    std::fs::write(&yaml_path, serde_norway::to_string(&file)?)?;
    Ok(target)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// The simulator for both modes: no faults; providers `simcloud`/`simedge` answer at once,
/// `simcloud-slow`/`simedge-slow` after a lognormal delay (p50 800 ms) for every model.
fn bench_profile() -> anyhow::Result<llm_sim::Profile> {
    let mut profile = llm_sim::Profile::default_profile()?;
    profile.latency_scale = 1.0;
    for m in profile.models.values_mut() {
        m.faults = Default::default();
        m.latency.p50 = LATENCY_P50;
        m.latency.sigma = LATENCY_SIGMA;
        m.tokens_per_s = 1e9;
    }
    profile.providers.clear();
    for p in ["simcloud", "simedge"] {
        let fast = profile.providers.entry(p.to_string()).or_default();
        fast.latency_multiplier = 0.0;
        profile
            .providers
            .entry(format!("{p}-slow"))
            .or_default()
            .latency_multiplier = 1.0;
    }
    profile.keys.clear();
    profile.default_key_rpm = None;
    Ok(profile)
}

/// The intake jobs of one run (for the pipeline named `pipeline_name`): the pipeline's sample
/// tickets, cycled.
fn jobs_for(
    pipeline: &Pipeline,
    pipeline_name: &str,
    run: &str,
    n: usize,
) -> anyhow::Result<Vec<Intake>> {
    let samples = crate::tools::demo::sample_payloads(pipeline)?;
    if samples.is_empty() {
        bail!("the pipeline has no sample jobs");
    }
    Ok((0..n)
        .map(|i| Intake {
            job_id: format!("{run}-{i:07}").into(),
            tenant: "bench".into(),
            pipeline: pipeline_name.to_string(),
            payload: samples[i % samples.len()].clone(),
            created_at: now(),
            metadata: Default::default(),
            redrive_count: 0,
        })
        .collect())
}

/// Reads a run's outputs until every job came out (or nothing comes for `idle`); returns the
/// broker timestamp (ms) of each job's first output and how many were dead letters.
async fn collect(
    kafka: &KafkaSettings,
    topics: &RunTopics,
    expected: usize,
    idle: Duration,
) -> anyhow::Result<(Vec<i64>, usize)> {
    let consumer = reader(kafka, &[&topics.results, &topics.dlq]).map_err(anyhow::Error::msg)?;
    let mut seen = HashSet::with_capacity(expected);
    let mut times = Vec::with_capacity(expected);
    let mut dead = 0;
    let mut call_ms: Vec<u64> = Vec::new();
    while seen.len() < expected {
        let m = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bench: read error");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        #[derive(serde::Deserialize)]
        struct CallTime {
            latency_ms: u64,
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Attempts {
            // Switchyard's envelopes list every attempt; the peer gives a count.
            List(Vec<CallTime>),
            Other(serde::de::IgnoredAny),
        }
        #[derive(serde::Deserialize)]
        struct Id {
            job_id: Option<String>,
            attempts: Option<Attempts>,
        }
        let Some(out) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Id>(p).ok())
        else {
            continue;
        };
        let Some(id) = out.job_id else {
            continue;
        };
        if let Some(Attempts::List(list)) = &out.attempts {
            call_ms.extend(list.iter().map(|a| a.latency_ms));
        }
        if seen.insert(id) {
            times.push(m.timestamp().to_millis().unwrap_or_else(epoch_ms));
            if m.topic() == topics.dlq {
                dead += 1;
            }
        }
    }
    if !call_ms.is_empty() {
        let mean = call_ms.iter().sum::<u64>() as f64 / call_ms.len() as f64;
        eprintln!(
            "bench: {} LLM calls seen in outputs, mean {mean:.0} ms as the caller timed them",
            call_ms.len()
        );
    }
    Ok((times, dead))
}

/// One implementation in one mode: produce the jobs, start the process, read every output,
/// take the figures, stop the process.
async fn measure(
    kafka: &KafkaSettings,
    pipeline: &Pipeline,
    topics: &RunTopics,
    jobs: usize,
    implementation: &str,
    mode: &str,
    command: &mut Command,
) -> anyhow::Result<RunFigures> {
    // Switchyard runs a copy of the pipeline named after the run; the peer reads the original.
    let name = if implementation == "peer" {
        pipeline.name.as_str()
    } else {
        topics.name.as_str()
    };
    let batch = jobs_for(pipeline, name, &topics.name, jobs)?;
    produce_jobs(kafka, &topics.intake, &batch)
        .await
        .map_err(anyhow::Error::msg)?;
    drop(batch);
    eprintln!("bench: {implementation} {mode}: {jobs} jobs queued, starting");
    let started = Instant::now();
    // The process's own output goes to stderr: stdout is for the report.
    let stdout = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start the {implementation} process"))?;
    let proc = Proc { child };
    let pid = proc.child.id();
    let sampler = CpuSampler::start(pid, clock_ticks());
    let (times, dead) = collect(kafka, topics, jobs, Duration::from_secs(60)).await?;
    let wall = started.elapsed();
    let rss = peak_rss_mb(pid).unwrap_or(0.0);
    let samples = sampler.finish();
    let mut proc = proc;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // Let it stop on its own (it prints its own summary); killed after 15 s.
    let stop_by = Instant::now() + Duration::from_secs(15);
    while Instant::now() < stop_by && matches!(proc.child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proc);
    let (jobs_per_s, cpu_us_per_job) = steady_state(&times, &samples);
    let figures = RunFigures {
        implementation: implementation.into(),
        mode: mode.into(),
        jobs,
        finished: times.len(),
        dead_lettered: dead,
        jobs_per_s,
        cpu_us_per_job,
        peak_rss_mb: rss,
        wall_s: wall.as_secs_f64(),
    };
    eprintln!(
        "bench: {implementation} {mode}: {} of {jobs} finished, {:.0} jobs/s, {:.0} µs CPU/job, {:.1} MB peak",
        figures.finished, figures.jobs_per_s, figures.cpu_us_per_job, figures.peak_rss_mb
    );
    if figures.finished < jobs {
        bail!(
            "{implementation} ({mode} mode) finished only {} of {jobs} jobs within a minute of the last output",
            figures.finished
        );
    }
    Ok(figures)
}

/// Runs the benchmark.
pub async fn run_bench(options: BenchOptions) -> anyhow::Result<BenchReport> {
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
    let tmp = tempfile_dir()?;

    // One simulator.
    let profile_path = tmp.join("profile.yaml");
    std::fs::write(&profile_path, serde_norway::to_string(&bench_profile()?)?)?;
    let mut sim = Command::new(bin.join("llm-sim"))
        .args(["--port", "0", "--profile"])
        .arg(&profile_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start llm-sim")?;
    let sim_url = first_line(&mut sim, "listening=")?;
    let _sim = Proc { child: sim };

    // One broker, with every run's topics.
    let runs = ["sy-overhead", "sy-latency", "peer-overhead", "peer-latency"];
    let mut broker = Command::new(bin.join("switchyard"));
    broker.args([
        "dev-broker",
        "--port",
        "0",
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    for run in runs {
        for suffix in ["intake", "escalate", "results", "dlq", "ledger"] {
            broker.args(["--topic", &format!("{run}.{suffix}")]);
        }
    }
    let mut broker = broker
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start switchyard dev-broker")?;
    let bootstrap = first_line(&mut broker, "bootstrap=")?;
    let _broker = Proc { child: broker };
    let kafka = KafkaSettings::new(&bootstrap);

    let providers = tmp.join("providers.yaml");
    std::fs::write(
        &providers,
        format!(
            "providers:\n  simcloud:\n    api: openai\n    base_url: {sim_url}/simcloud/v1\n  simedge:\n    api: openai\n    base_url: {sim_url}/simedge/v1\n"
        ),
    )?;
    let switchyard_cmd = |dir: &Path, slow: bool| {
        let mut c = Command::new(bin.join("switchyard"));
        c.args(["run", "--pipeline"])
            .arg(dir)
            .args(["--brokers", &bootstrap, "-X", "session.timeout.ms=6000"])
            .env("SWITCHYARD_LOG", "error");
        for o in &options.kafka_options {
            c.args(["-X", o]);
        }
        if slow {
            c.env(
                "SWITCHYARD_PROVIDER_SIMCLOUD_URL",
                format!("{sim_url}/simcloud-slow/v1"),
            )
            .env(
                "SWITCHYARD_PROVIDER_SIMEDGE_URL",
                format!("{sim_url}/simedge-slow/v1"),
            );
        }
        c
    };

    let mut report = BenchReport {
        in_flight: options.in_flight,
        ..BenchReport::default()
    };
    // Switchyard, overhead mode: the pipeline's own concurrency settings.
    let dir = bench_pipeline(&options.pipeline, &tmp, runs[0], &providers, None)?;
    let sy = measure(
        &kafka,
        &pipeline,
        &RunTopics::new(runs[0]),
        options.jobs,
        "switchyard",
        "overhead",
        &mut switchyard_cmd(&dir, false),
    )
    .await?;
    report.switchyard_jobs_per_s = sy.jobs_per_s;
    report.switchyard_peak_rss_mb = sy.peak_rss_mb;
    report.cpu_us_per_job = sy.cpu_us_per_job;
    report.runs.push(sy);

    // Switchyard, latency mode: `in_flight` jobs at once.
    let dir = bench_pipeline(
        &options.pipeline,
        &tmp,
        runs[1],
        &providers,
        Some(options.in_flight),
    )?;
    let sy = measure(
        &kafka,
        &pipeline,
        &RunTopics::new(runs[1]),
        options.latency_jobs,
        "switchyard",
        "latency",
        &mut switchyard_cmd(&dir, true),
    )
    .await?;
    // Little's law: with `in_flight` first-stage calls always open, jobs leave the first stage
    // at in_flight ÷ mean latency. The lognormal's mean is p50 · exp(σ²/2).
    let mean_latency = LATENCY_P50.as_secs_f64() * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp();
    report.latency_mode_ideal_jobs_per_s = options.in_flight as f64 / mean_latency;
    report.latency_mode_jobs_per_s = sy.jobs_per_s;
    report.latency_mode_efficiency = sy.jobs_per_s / report.latency_mode_ideal_jobs_per_s;
    report.latency_mode_peak_rss_mb = sy.peak_rss_mb;
    report.runs.push(sy);

    if let Some(peer) = &options.peer {
        let (program, args) = peer
            .split_first()
            .ok_or_else(|| anyhow!("the peer command is empty"))?;
        let catalog = std::fs::canonicalize(options.pipeline.join(&pipeline_catalog(&options)?))?;
        let peer_cmd = |run: &str, slow: bool, concurrency: usize| {
            let t = RunTopics::new(run);
            let mut c = Command::new(program);
            c.args(args)
                .args(["--brokers", &bootstrap])
                .args([
                    "--intake",
                    &t.intake,
                    "--results",
                    &t.results,
                    "--dlq",
                    &t.dlq,
                ])
                .args(["--sim-url", &sim_url])
                .args(["--provider-suffix", if slow { "-slow" } else { "" }])
                .arg("--pipeline")
                .arg(&options.pipeline)
                .arg("--catalog")
                .arg(&catalog)
                .args(["--concurrency", &concurrency.to_string()])
                .args(["--group", run]);
            c
        };
        let p = measure(
            &kafka,
            &pipeline,
            &RunTopics::new(runs[2]),
            options.peer_jobs,
            "peer",
            "overhead",
            &mut peer_cmd(runs[2], false, options.peer_concurrency),
        )
        .await?;
        report.peer_jobs_per_s = Some(p.jobs_per_s);
        report.throughput_ratio = Some(report.switchyard_jobs_per_s / p.jobs_per_s.max(1e-9));
        report.peer_peak_rss_mb = Some(p.peak_rss_mb);
        report.rss_ratio = Some(p.peak_rss_mb / report.switchyard_peak_rss_mb.max(1e-9));
        report.peer_cpu_us_per_job = Some(p.cpu_us_per_job);
        report.runs.push(p);
        let p = measure(
            &kafka,
            &pipeline,
            &RunTopics::new(runs[3]),
            options.peer_jobs,
            "peer",
            "latency",
            &mut peer_cmd(runs[3], true, options.in_flight),
        )
        .await?;
        report.peer_latency_mode_efficiency =
            Some(p.jobs_per_s / report.latency_mode_ideal_jobs_per_s);
        report.runs.push(p);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(report)
}

fn pipeline_catalog(options: &BenchOptions) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(options.pipeline.join("pipeline.yaml"))?;
    let file: PipelineFile = serde_norway::from_str(&text)?;
    Ok(file.catalog)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_uses_the_middle_of_the_completions() {
        // 100 completions: the first and last ten are far apart (start-up, tail); the middle
        // eighty arrive one per 10 ms.
        let mut t: Vec<i64> = (0..100).map(|i| 10_000 + i * 10).collect();
        for x in t.iter_mut().take(10) {
            *x = 0;
        }
        for x in t.iter_mut().skip(90) {
            *x = 100_000;
        }
        // CPU grows 1 ms per 10 ms of wall time.
        let cpu: Vec<(i64, Duration)> = (0..=200)
            .map(|i| (i * 1000, Duration::from_millis(i as u64 * 100)))
            .collect();
        let (rate, cpu_us) = steady_state(&t, &cpu);
        // Window: t[10] = 10_100 to t[89] = 10_890, 79 completions in 0.79 s.
        assert!((rate - 100.0).abs() < 1e-6, "{rate}");
        // 79 ms of CPU over 79 jobs.
        assert!((cpu_us - 1000.0).abs() < 1e-6, "{cpu_us}");
    }

    #[test]
    fn cpu_is_interpolated_between_samples() {
        let s = vec![
            (1000, Duration::from_millis(0)),
            (2000, Duration::from_millis(500)),
        ];
        assert_eq!(cpu_at(&s, 1500), Some(0.25));
        assert_eq!(cpu_at(&s, 500), None);
        assert_eq!(cpu_at(&s, 3000), Some(0.5));
    }
}
