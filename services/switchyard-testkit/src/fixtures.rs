//! Test conveniences: the shipped support-triage pipeline on the [`Harness`] with a quiet
//! simulator, jobs, a PostgreSQL started from the system's binaries in a temporary folder, the
//! `switchyard` binary and its processes. These panic on failure, as a test wants; nothing
//! outside tests uses them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard::config::Pipeline;
use switchyard::envelope::{Intake, now};
use switchyard::kafka::KafkaSettings;
use switchyard::kafka::client::send_all;

use crate::harness::Harness;
use crate::tally::Tally;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped support-triage pipeline folder.
pub fn triage_dir() -> PathBuf {
    repo_root().join("pipelines/support-triage")
}

/// The shipped simulator profile with every random fault turned off and no latency, so a test
/// decides each job's fate with prompt directives and provider faults alone.
pub fn quiet_profile() -> llm_sim::Profile {
    let mut p = llm_sim::Profile::default_profile().unwrap();
    p.latency_scale = 0.0;
    for m in p.models.values_mut() {
        m.faults = llm_sim::FaultRates::default();
    }
    p
}

/// librdkafka settings for tests: a short session timeout so a killed member is noticed
/// quickly.
pub fn test_kafka_options() -> Vec<String> {
    vec!["session.timeout.ms=6000".to_string()]
}

/// Kafka settings for tests (see [`test_kafka_options`]).
pub fn test_kafka(bootstrap: &str) -> KafkaSettings {
    KafkaSettings::new(bootstrap)
        .with_options(&test_kafka_options())
        .unwrap()
}

impl Harness {
    /// Starts a broker with the shipped support-triage pipeline's LLM stages (see
    /// [`Pipeline::llm_stages_only`]: every job reaches `triage`, so a test decides each job's fate with
    /// prompt directives) on topics of `partitions` each, and a simulator with `profile`, the
    /// pipeline's providers pointed at it.
    pub async fn start(profile: llm_sim::Profile, partitions: i32) -> Harness {
        let pipeline = Pipeline::load(&triage_dir()).unwrap().llm_stages_only();
        Harness::start_with(pipeline, profile, partitions).await
    }

    /// Starts a broker with `pipeline`'s topics (`partitions` each) and a simulator with
    /// `profile`, the pipeline's providers pointed at it.
    pub async fn start_with(
        pipeline: Pipeline,
        profile: llm_sim::Profile,
        partitions: i32,
    ) -> Harness {
        let sim = llm_sim::spawn(profile, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        Harness::new(pipeline, partitions, &test_kafka_options())
            .unwrap()
            .with_sim(sim)
    }

    /// The simulator.
    pub fn sim(&self) -> &llm_sim::SimServer {
        self.sim.as_ref().expect("this harness has a simulator")
    }

    /// Runs every stage in-process and waits until each owns partitions.
    pub async fn run_pipeline(&mut self) {
        let ok = self.start_stages("e2e", Duration::from_secs(30)).await;
        assert!(ok, "stages never got partitions: {:?}", self.stage_names());
    }

    /// Stops the in-process pipeline gracefully; panics if it ended with an error.
    pub async fn stop_pipeline(&mut self) {
        self.stop_stages().await.unwrap();
    }

    /// Produces jobs to the intake topic.
    pub async fn produce(&self, jobs: &[Intake]) {
        self.send_jobs(jobs).await.unwrap();
    }

    /// Produces raw bytes to the intake topic.
    pub async fn produce_raw(&self, values: &[Vec<u8>]) {
        let messages: Vec<(String, Vec<u8>)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("raw-{i}"), v.clone()))
            .collect();
        send_all(&self.kafka, &self.pipeline.topics.intake, &messages)
            .await
            .unwrap();
    }

    /// Reads results and dead letters until every expected job ended and `unnamed` dead letters
    /// without a job id arrived, or `timeout` passes with nothing new.
    pub async fn collect(
        &self,
        expected: &HashSet<String>,
        unnamed: usize,
        timeout: Duration,
    ) -> Tally {
        self.read_back(expected, unnamed, timeout, |_, _| {})
            .await
            .unwrap()
    }
}

/// Reads a pipeline's results and dead letters back from any broker (see [`Harness::collect`]).
pub async fn collect(
    kafka: &KafkaSettings,
    pipeline: &Pipeline,
    expected: &HashSet<String>,
    unnamed: usize,
    timeout: Duration,
) -> Tally {
    crate::harness::read_back(kafka, pipeline, expected, unnamed, timeout, |_, _| {})
        .await
        .unwrap()
}

/// An intake job for the support-triage pipeline.
pub fn job(id: &str, text: &str) -> Intake {
    Intake {
        job_id: id.into(),
        tenant: "acme".into(),
        pipeline: "support-triage".into(),
        payload: serde_json::json!({"text": text, "channel": "email"}),
        created_at: now(),
        metadata: BTreeMap::new(),
        redrive_count: 0,
    }
}

/// A valid triage answer (the shipped output schema), sure of itself.
pub fn triage_answer() -> serde_json::Value {
    serde_json::json!({"category": "card_arrival", "urgency": "low", "sentiment": "neutral",
           "summary": "The customer card has not arrived yet.", "draft_reply": "Sorry for the wait: your card is on its way and should arrive within a few days.", "confidence": 0.99})
}

/// An OpenAI chat-completions reply carrying [`triage_answer`], with `usage_tokens` of usage
/// each way (what a provider stand-in of a test sends back).
pub fn chat_completion(usage_tokens: u64) -> String {
    serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": triage_answer().to_string()}}],
        "usage": {"prompt_tokens": usage_tokens, "completion_tokens": usage_tokens,
                  "total_tokens": usage_tokens}
    })
    .to_string()
}

/// The ids of some jobs.
pub fn ids(jobs: &[Intake]) -> HashSet<String> {
    jobs.iter().map(|j| j.job_id.to_string()).collect()
}

/// The `switchyard` binary cargo built beside this test binary.
pub fn switchyard_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("switchyard");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so cargo builds it (or set SWITCHYARD_BIN)",
        bin.display()
    );
    bin
}

/// Copies the repository's `pipelines/` folder into `dest`, so a test can edit a pipeline.
pub fn copy_pipelines(dest: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let to = dest.join("pipelines");
    copy(&repo_root().join("pipelines"), &to);
    to
}

/// [`copy_pipelines`], with the support-triage copy's local-tier stage taken out: the
/// `switchyard run` processes of a test then have the same stages as [`Harness::start`]'s
/// in-process pipeline, and every job meets `triage` first, whatever its text.
pub fn copy_llm_pipelines(dest: &Path) -> PathBuf {
    let to = copy_pipelines(dest);
    let yaml = to.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let start = text
        .find("  - name: local\n")
        .expect("support-triage has a local stage");
    let end = start + text[start..].find("  - name: triage\n").unwrap();
    std::fs::write(&yaml, format!("{}{}", &text[..start], &text[end..])).unwrap();
    to
}

/// A `switchyard run` command for the support-triage pipeline in `pipelines`, its providers
/// pointed at the simulator at `sim_base`; add environment or redirections before spawning.
pub fn run_command(pipelines: &Path, bootstrap: &str, sim_base: &str) -> std::process::Command {
    let mut c = std::process::Command::new(switchyard_bin());
    c.args(["run", "--pipeline"])
        .arg(pipelines.join("support-triage"))
        .args(["--brokers", bootstrap, "-X", "session.timeout.ms=6000"])
        .env(
            "SWITCHYARD_PROVIDER_SIMCLOUD_URL",
            format!("{sim_base}/simcloud/v1"),
        )
        .env(
            "SWITCHYARD_PROVIDER_SIMEDGE_URL",
            format!("{sim_base}/simedge/v1"),
        )
        .env("SWITCHYARD_LOG", "warn")
        .stdin(std::process::Stdio::null());
    c
}

/// A `switchyard run` child process for the support-triage pipeline in `pipelines`.
pub fn spawn_run(pipelines: &Path, bootstrap: &str, sim_base: &str) -> std::process::Child {
    run_command(pipelines, bootstrap, sim_base).spawn().unwrap()
}

/// A throwaway PostgreSQL server started from the system's binaries in a temporary folder.
/// As root (CI), the server runs as the `postgres` user, since initdb refuses root.
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bin() -> PathBuf {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries not found: run `bash scripts/test.sh` (it installs Debian's `postgresql`)",
    )
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    fn command(&self, tool: &str) -> std::process::Command {
        pg_command(&self.bin, tool)
    }

    /// Creates a cluster and starts it on a free port.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = pg_command(&bin, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.up();
        pg
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.data.display()
        );
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-l"])
            .arg(self.data.join("server.log"))
            .arg("-o")
            .arg(opts)
            .arg("-D")
            .arg(&self.data)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown).
    pub fn down(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

fn pg_command(bin: &Path, tool: &str) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        std::process::Command::new(bin.join(tool))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.down();
    }
}
