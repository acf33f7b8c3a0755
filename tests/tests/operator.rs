//! What an operator meets on day one, through the real `switchyard` binary: reading commands
//! that finish on a topic being written to, `produce` that keeps ids, reads stdin and sends
//! raw bytes, fails fast on a broker it cannot reach, an unknown dead-letter reason refused,
//! and an explicit start position for a new consumer group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{
    copy_llm_pipelines, job, quiet_profile, run_command, switchyard_bin,
};

/// Runs a `switchyard` command to its end, killing it after `limit`; `None` when it had to be
/// killed. Its output goes to files (a full pipe would stall it).
fn finish_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: std::fs::read(&out).unwrap(),
                stderr: std::fs::read(&err).unwrap(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(switchyard_bin());
    c.args(args).env("SWITCHYARD_LOG", "warn");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_commands_finish_on_topics_that_are_being_written_to() {
    let h = Harness::start(quiet_profile(), 2).await;
    let pipeline = switchyard_testkit::fixtures::triage_dir();
    let pipeline = pipeline.to_str().unwrap().to_string();
    // A writer that never stops while the commands run: a message every 2 ms on the results
    // and dead-letter topics.
    let producer: FutureProducer = h.kafka.producer().create().unwrap();
    let topics = [
        h.pipeline.topics.results.clone(),
        h.pipeline.topics.dlq.clone(),
    ];
    let stop = tokio_util::sync::CancellationToken::new();
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                for t in &topics {
                    let body = format!("{{\"n\": {n}}}");
                    let _ = producer
                        .send(
                            FutureRecord::<str, str>::to(t).payload(&body),
                            Duration::from_secs(5),
                        )
                        .await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let brokers = h.broker.bootstrap().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let report_out = out_dir.path().join("report.html");
    let commands: Vec<(&str, Vec<String>)> = vec![
        (
            "tail",
            vec!["tail".into(), "--topic".into(), "results".into()],
        ),
        ("dlq list", vec!["dlq".into(), "list".into()]),
        (
            "report",
            vec![
                "report".into(),
                "--sim".into(),
                "--out".into(),
                report_out.to_str().unwrap().into(),
            ],
        ),
    ];
    for (name, mut args) in commands {
        args.extend([
            "--pipeline".into(),
            pipeline.clone(),
            "--brokers".into(),
            brokers.clone(),
        ]);
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            finish_within(cli(&args), Duration::from_secs(90))
        })
        .await
        .unwrap();
        let out =
            out.unwrap_or_else(|| panic!("`switchyard {name}` did not finish on a live topic"));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if name == "tail" {
            // It read what was there when it started (at least the first second's messages).
            let lines = String::from_utf8_lossy(&out.stdout).lines().count();
            assert!(lines > 10, "tail printed {lines} lines");
        }
    }
    stop.cancel();
    assert!(writing.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_keeps_ids_reads_stdin_sends_raw_bytes_and_fails_fast_on_a_dead_broker() {
    let h = Harness::start(quiet_profile(), 1).await;
    let pipeline = switchyard_testkit::fixtures::triage_dir();
    let brokers = h.broker.bootstrap().to_string();
    // Jobs from stdin: a bare payload with its own job id keeps it.
    let mut child = cli(&[
        "produce",
        "--file",
        "-",
        "--brokers",
        &brokers,
        "--pipeline",
    ])
    .arg(&pipeline)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"job_id\": \"mine-1\", \"text\": \"card lost\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Raw bytes that are not UTF-8 are sent as they are.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.jsonl");
    std::fs::write(&raw, b"\xff\xfe not utf-8\n").unwrap();
    let out = cli(&["produce", "--raw", "--brokers", &brokers, "--pipeline"])
        .arg(&pipeline)
        .arg("--file")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consumer =
        switchyard::kafka::client::reader(&h.kafka, &[&h.pipeline.topics.intake]).unwrap();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    switchyard::kafka::client::read_until(&consumer, Duration::from_secs(3), |_, m| {
        seen.push(m.to_vec());
        seen.len() >= 2
    })
    .await;
    let first: serde_json::Value = serde_json::from_slice(&seen[0]).unwrap();
    assert_eq!(first["job_id"], "mine-1");
    assert_eq!(first["payload"], serde_json::json!({"text": "card lost"}));
    assert_eq!(seen[1], b"\xff\xfe not utf-8");

    // Nothing listens on port 1: a clear error naming the broker, soon.
    let started = Instant::now();
    let out = finish_within(
        {
            let mut c = cli(&[
                "produce",
                "--brokers",
                "127.0.0.1:1",
                "--file",
                "-",
                "--pipeline",
            ]);
            // As a user runs it, with the default log filter (SWITCHYARD_LOG=warn would ask
            // for librdkafka's own lines too).
            c.arg(&pipeline).env_remove("SWITCHYARD_LOG");
            c
        },
        Duration::from_secs(40),
    )
    .expect("produce to a dead broker did not give up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.lines().count() < 20, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // `batch` with nothing to do says so at once; `usage` names the database it cannot reach
    // (and never its password).
    std::fs::write(dir.path().join("empty.jsonl"), "\n").unwrap();
    let docs = switchyard_testkit::fixtures::repo_root().join("pipelines/document-extraction");
    let out = finish_within(
        {
            let mut c = cli(&["batch", "--pipeline"]);
            c.arg(&docs)
                .arg("--input")
                .arg(dir.path().join("empty.jsonl"))
                .arg("--out")
                .arg(dir.path().join("out.jsonl"));
            c
        },
        Duration::from_secs(30),
    )
    .expect("batch of an empty file did not finish");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("has no documents"),
        "{stderr}"
    );
    let out = cli(&[
        "usage",
        "--database-url",
        "postgres://u:pw-secret@127.0.0.1:1/x",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("pw-secret"), "{stderr}");

    // A reason that does not exist is an error listing the ones that do.
    let out = cli(&[
        "dlq",
        "list",
        "--reason",
        "provider_exausted",
        "--brokers",
        &brokers,
        "--pipeline",
    ])
    .arg(&pipeline)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("provider_exhausted"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_consumer_group_starts_where_it_is_told_and_says_so() {
    let h = Harness::start(quiet_profile(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let sim = h.sim().base_url();
    h.produce(&[job("old-1", "[sim:high_confidence] where is my card")])
        .await;

    // `--from committed` refuses a group without committed offsets.
    let out = run_command(&pipelines, h.broker.bootstrap(), &sim)
        .args(["--from", "committed", "--group-prefix", "fresh"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("fresh.support-triage.triage"), "{stderr}");
    assert!(stderr.contains("--from committed"), "{stderr}");

    // `--from latest`: the job already there is skipped; new ones run. The warning says so.
    let log = dir.path().join("run.log");
    let mut child = run_command(&pipelines, h.broker.bootstrap(), &sim)
        .args(["--from", "latest", "--group-prefix", "fresh"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut finished = None;
    for i in 0..60 {
        let id = format!("new-{i}");
        h.produce(&[job(&id, "[sim:high_confidence] where is my card")])
            .await;
        let want: HashSet<String> = [id.clone()].into();
        let tally = h.collect(&want, 0, Duration::from_secs(1)).await;
        if tally.results.contains_key(&id) {
            finished = Some(tally);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let tally = finished.expect("no new job finished");
    assert!(!tally.results.contains_key("old-1"), "the old job was run");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("start from the LATEST"), "{log}");
}
