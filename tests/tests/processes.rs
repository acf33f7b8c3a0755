//! End-to-end with separate processes, as the README shows: `switchyard dev-broker`,
//! `switchyard produce` and `switchyard run`, with llm-sim over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::config::Pipeline;
use switchyard::kafka::client::{read_until, reader};
use switchyard_testkit::Tally;
use switchyard_testkit::fixtures::{
    copy_llm_pipelines, quiet_profile, run_command, switchyard_bin, test_kafka,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_broker_produce_and_run_as_separate_processes() {
    let sim = llm_sim::spawn(quiet_profile(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let triage = pipelines.join("support-triage");

    let mut broker = Command::new(switchyard_bin())
        .args([
            "dev-broker",
            "--port",
            "0",
            "--partitions",
            "3",
            "--pipeline",
        ])
        .arg(&triage)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(broker.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let bootstrap = first
        .trim()
        .strip_prefix("bootstrap=")
        .expect("first line is bootstrap=…")
        .to_string();
    assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");

    // Twenty payload lines, wrapped into jobs by `produce`.
    let jobs_file = dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| serde_json::json!({"text": format!("[sim:high_confidence] ticket {i}"), "channel": "web"}).to_string())
        .collect();
    std::fs::write(&jobs_file, lines.join("\n")).unwrap();
    let out = Command::new(switchyard_bin())
        .args([
            "produce",
            "--brokers",
            &bootstrap,
            "--tenant",
            "acme",
            "--pipeline",
        ])
        .arg(&triage)
        .arg("--file")
        .arg(&jobs_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("produced 20 jobs"));

    let log = dir.path().join("run.log");
    let mut run = run_command(&pipelines, &bootstrap, &sim.base_url())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pipeline = Pipeline::load(&triage).unwrap();
    let kafka = test_kafka(&bootstrap);
    // `produce` gave the jobs fresh ids, so count what comes back instead of naming it.
    let consumer = reader(&kafka, &[&pipeline.topics.results, &pipeline.topics.dlq]).unwrap();
    let mut tally = Tally::default();
    let dlq = pipeline.topics.dlq.clone();
    read_until(&consumer, Duration::from_secs(30), |topic, payload| {
        tally.add(topic == dlq, payload);
        tally.results.len() + tally.dead.len() >= 20
    })
    .await;
    // SIGTERM: the worker drains, commits and exits 0.
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    let status = run.wait().unwrap();
    // `run` says loudly that its providers are the simulator.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("answers as llm-sim"), "{text}");
    let _ = broker.kill();
    let _ = broker.wait();

    assert_eq!(tally.results.len(), 20, "dead letters: {:?}", tally.dead);
    assert!(tally.results.values().all(|r| r[0].tenant == "acme"));
    assert!(
        status.success(),
        "switchyard run exits 0 on SIGTERM, got {status:?}"
    );
}
