//! Hostile input and a hostile provider, against a real `switchyard run` process: every bad
//! message and every bad reply ends as a result or a dead letter with a reason, the worker
//! keeps running, the job behind them on the same partition finishes, and the provider key
//! appears nowhere in what the pipeline publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use switchyard::envelope::DeadLetterReason;
use switchyard::kafka::client::{read_until, reader, send_all};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{
    chat_completion, copy_llm_pipelines, job, quiet_profile, run_command,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "sk-hostile-test-key-5f1c9a";

/// An OpenAI-compatible provider that misbehaves as the prompt asks. `elsewhere` counts the
/// requests a second server (the target of a cross-origin redirect) receives.
async fn hostile_provider(elsewhere: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Each Retry-After behaviour answers 429 once, then normally: the job must get past it.
    let rested: Arc<std::sync::Mutex<HashSet<&'static str>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let rested = rested.clone();
            tokio::spawn(async move {
                let first_time = |what: &'static str| rested.lock().unwrap().insert(what);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // Headers, then the body by Content-Length.
                let body = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break String::from_utf8_lossy(&buf[end + 4..end + 4 + len])
                                .to_string();
                        }
                    }
                };
                let reply = |status: &str, headers: &str, body: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n{headers}content-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                let out = if body.contains("HOSTILE-retry-after-float") && first_time("float") {
                    reply("429 Too Many Requests", "retry-after: 1e20\r\n", "{}")
                } else if body.contains("HOSTILE-retry-after-int") && first_time("int") {
                    reply(
                        "429 Too Many Requests",
                        "retry-after: 18000000000000000000\r\n",
                        "{}",
                    )
                } else if body.contains("HOSTILE-huge-usage") {
                    reply("200 OK", "", &chat_completion(u64::MAX))
                } else if body.contains("HOSTILE-redirect") {
                    reply(
                        "307 Temporary Redirect",
                        &format!("location: http://127.0.0.1:{elsewhere}/v1/chat/completions\r\n"),
                        "",
                    )
                } else if body.contains("HOSTILE-flagged") {
                    reply(
                        "403 Forbidden",
                        "",
                        r#"{"error": {"message": "Input was flagged by moderation", "code": 403}}"#,
                    )
                } else if body.contains("HOSTILE-echo-key") {
                    // A provider that quotes the key it was sent.
                    reply(
                        "400 Bad Request",
                        "",
                        &json!({"error": {"message": format!("bad request with key {KEY}")}})
                            .to_string(),
                    )
                } else if body.contains("HOSTILE-huge-body") {
                    // 64 MiB of body, streamed: the worker must stop reading at its cap.
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![b' '; 1 << 20];
                    for _ in 0..64 {
                        let mut c = format!("{:x}\r\n", block.len()).into_bytes();
                        c.extend_from_slice(&block);
                        c.extend_from_slice(b"\r\n");
                        if sock.write_all(&c).await.is_err() {
                            return;
                        }
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                    return;
                } else {
                    reply("200 OK", "", &chat_completion(100))
                };
                let _ = sock.write_all(out.as_bytes()).await;
            });
        }
    });
    port
}

/// A server that only counts what reaches it.
async fn counting_server(hits: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = sock
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_and_replies_end_as_results_or_dead_letters_and_the_worker_keeps_going() {
    let hits = Arc::new(AtomicUsize::new(0));
    let elsewhere = counting_server(hits.clone()).await;
    let provider = hostile_provider(elsewhere).await;
    // One partition: everything below is in line, and the last job must still finish.
    let h = Harness::start(quiet_profile(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let providers = pipelines.join("providers.yaml");
    let text = std::fs::read_to_string(&providers).unwrap();
    std::fs::write(
        &providers,
        text.replace(
            "    rpm: 60000",
            "    rpm: 60000\n    api_key: env:HOSTILE_KEY",
        ),
    )
    .unwrap();
    let mut child = run_command(
        &pipelines,
        h.broker.bootstrap(),
        &format!("http://127.0.0.1:{provider}"),
    )
    .env("HOSTILE_KEY", KEY)
    .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
    .spawn()
    .unwrap();

    // Class 1 and 6: identifiers that are too long or carry control characters.
    let huge_id = "j".repeat(500 * 1024);
    let intake = |id: &str, tenant: &str| {
        json!({"job_id": id, "tenant": tenant, "pipeline": "support-triage",
               "payload": {"text": "[sim:high_confidence] hi"}, "created_at": "2026-12-07T00:00:00Z"})
        .to_string()
        .into_bytes()
    };
    let raw: Vec<(String, Vec<u8>)> = vec![
        ("k-huge-id".into(), intake(&huge_id, "acme")),
        ("k-nul".into(), intake("nul-tenant", "ac\u{0000}me")),
        (
            "k-newline".into(),
            intake("newline-tenant", "acme\nFAKE LOG LINE"),
        ),
        ("k".repeat(600 * 1024), intake("huge-key", "acme")),
    ];
    send_all(&h.kafka, &h.pipeline.topics.intake, &raw)
        .await
        .unwrap();
    // Class 2, 3 and 4: what a provider may send back.
    let hostile = ["huge-usage", "redirect", "flagged", "echo-key", "huge-body"];
    let mut jobs: Vec<_> = hostile
        .iter()
        .map(|b| job(&format!("p-{b}"), &format!("HOSTILE-{b} please")))
        .collect();
    jobs.push(job("after-all-of-it", "an ordinary ticket"));
    h.produce(&jobs).await;

    let mut expected: HashSet<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
    expected.extend(["nul-tenant", "newline-tenant", "huge-key"].map(String::from));
    // The 500 KiB id comes back unnamed (it is not repeated); the others have usable ids.
    let tally = h.collect(&expected, 1, Duration::from_secs(30)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker stopped on hostile input"
    );
    assert!(
        tally.results.contains_key("after-all-of-it"),
        "the job behind the hostile ones did not finish: results {:?}, dead {:?}",
        tally.results.keys(),
        tally
            .dead
            .values()
            .map(|d| format!(
                "{} {}: {}",
                d[0].job_id.as_deref().unwrap_or(""),
                d[0].reason.as_str(),
                d[0].detail
            ))
            .collect::<Vec<_>>()
    );
    let huge_key = tally
        .results
        .get("huge-key")
        .map(|r| r[0].job_id.to_string())
        .or_else(|| {
            tally
                .dead
                .get("huge-key")
                .map(|d| d[0].reason.as_str().into())
        });
    assert!(
        huge_key.is_some(),
        "the message with a 600 KiB key was lost"
    );
    let unnamed: Vec<_> = tally.dead_without_id.iter().map(|d| d.reason).collect();
    assert_eq!(
        unnamed,
        vec![DeadLetterReason::InvalidIntake],
        "the 500 KiB id"
    );
    for id in ["nul-tenant", "newline-tenant"] {
        let d = &tally.dead[id][0];
        assert_eq!(
            d.reason,
            DeadLetterReason::InvalidIntake,
            "{id}: {}",
            d.detail
        );
    }
    for b in hostile {
        let id = format!("p-{b}");
        assert!(
            tally.results.contains_key(&id) || tally.dead.contains_key(&id),
            "{id} was lost"
        );
    }
    // A moderation refusal is the job's outcome, not a broken key: content policy.
    assert_eq!(
        tally.dead["p-flagged"][0].reason,
        DeadLetterReason::ContentPolicy
    );
    // 2^64 reported tokens are charged as at most the context window.
    let absurd = &tally.results["p-huge-usage"][0];
    assert!(
        absurd.cost_micro_usd.0 < 1_000_000,
        "charged {} µ$",
        absurd.cost_micro_usd.0
    );
    // The redirect to another origin was not followed: the key and prompt stayed home.
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a cross-origin redirect was followed"
    );
    // The 64 MiB reply was cut at the cap, not read whole.
    let huge = &tally.dead["p-huge-body"][0];
    assert!(
        huge.attempts.iter().any(|a| a
            .error
            .as_deref()
            .is_some_and(|e| e.contains("longer than 16 MiB"))),
        "{:?}",
        huge.attempts
    );

    // A provider asking for a rest of 1e20 s (or more than a u64 of seconds) does not panic
    // the worker or rest its key for ever: the jobs get their answer from the next candidate,
    // and the process keeps running.
    let resting: Vec<_> = ["retry-after-float", "retry-after-int"]
        .iter()
        .map(|b| job(&format!("p-{b}"), &format!("HOSTILE-{b} please")))
        .collect();
    h.produce(&resting).await;
    let rest_ids: HashSet<String> = resting.iter().map(|j| j.job_id.to_string()).collect();
    let rested = h.collect(&rest_ids, 0, Duration::from_secs(90)).await;
    assert_eq!(
        rested.finished_count(&rest_ids),
        2,
        "{:?}",
        rested.dead.keys()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker stopped on a hostile Retry-After"
    );

    // Class 3: the key is nowhere in what the pipeline published.
    let topics = [
        h.pipeline.topics.results.as_str(),
        h.pipeline.topics.dlq.as_str(),
        h.pipeline.topics.ledger.as_str(),
        h.pipeline.stages[1].input_topic.as_str(),
    ];
    let consumer = reader(&h.kafka, &topics).unwrap();
    let mut seen = 0usize;
    read_until(&consumer, Duration::from_secs(3), |topic, m| {
        seen += 1;
        let text = String::from_utf8_lossy(m);
        assert!(!text.contains(KEY), "the key leaked on {topic}: {text}");
        false
    })
    .await;
    assert!(seen >= jobs.len() + resting.len());

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!log.contains(KEY), "the key is in the log");
    assert!(
        !log.lines().any(|l| l.starts_with("FAKE LOG LINE")),
        "a tenant with a newline forged a log line"
    );
}

/// Writes a tenants file (acme, globex) beside the pipelines and binds the support-triage
/// pipeline's tenants as `binding` says (`tenant_from: topic` or `header`).
fn bind_tenants(pipelines: &std::path::Path, binding: &str) {
    std::fs::write(
        pipelines.join("tenants.yaml"),
        "tenants:\n  acme: {}\n  globex: {}\n",
    )
    .unwrap();
    let yaml = pipelines.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        format!("{text}\ntenants: ../tenants.yaml\ntenant_from: {binding}\n"),
    )
    .unwrap();
}

fn raw_job(id: &str, tenant: Option<&str>, text: &str) -> Vec<u8> {
    let mut v = json!({"job_id": id, "pipeline": "support-triage",
        "payload": {"text": text}, "created_at": "2026-12-07T00:00:00Z"});
    if let Some(t) = tenant {
        v["tenant"] = json!(t);
    }
    v.to_string().into_bytes()
}

/// Class 5: with `tenant_from: topic`, a producer that may write only to globex's intake topic
/// cannot run jobs as acme; the tenant is the topic's, whatever the payload says. Two tenants'
/// job 42 are two jobs: acme's result does not hide globex's dead letter from a replay, and the
/// replay goes back to globex's own topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tenant_from_topic_the_tenant_is_the_topics_and_job_ids_are_per_tenant() {
    let h = Harness::start(quiet_profile(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    bind_tenants(&pipelines, "topic");
    let pipeline = switchyard::config::Pipeline::load(&pipelines.join("support-triage")).unwrap();
    let acme = pipeline.tenant_intake_topic("acme");
    let globex = pipeline.tenant_intake_topic("globex");
    assert_eq!(globex, "support-triage.intake.globex");
    for t in [&acme, &globex] {
        h.broker.create_topic(t, 1).unwrap();
    }
    let mut child = run_command(&pipelines, h.broker.bootstrap(), &h.sim().base_url())
        .spawn()
        .unwrap();
    let ok = "[sim:high_confidence] my card was charged twice";
    send_all(
        &h.kafka,
        &globex,
        &[
            ("a".into(), raw_job("claims-acme", Some("acme"), ok)),
            ("b".into(), raw_job("says-nothing", None, ok)),
            ("c".into(), raw_job("says-globex", Some("globex"), ok)),
            (
                "42".into(),
                raw_job("42", None, "[sim:server_error:always] failing"),
            ),
        ],
    )
    .await
    .unwrap();
    send_all(&h.kafka, &acme, &[("42".into(), raw_job("42", None, ok))])
        .await
        .unwrap();
    // The shared intake topic is not read at all: anyone could write there.
    send_all(
        &h.kafka,
        &h.pipeline.topics.intake,
        &[("x".into(), raw_job("on-the-shared-topic", Some("acme"), ok))],
    )
    .await
    .unwrap();

    let expected: HashSet<String> = ["claims-acme", "says-nothing", "says-globex"]
        .map(String::from)
        .into();
    let mut tally = h.collect(&expected, 0, Duration::from_secs(60)).await;
    // Both jobs 42 end too (globex's after its fallbacks are spent): read everything there is.
    let everything: HashSet<String> = ["not-a-job".to_string()].into();
    for _ in 0..30 {
        if tally.results.contains_key("42") && tally.dead.contains_key("42") {
            break;
        }
        tally = h.collect(&everything, 0, Duration::from_secs(2)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the worker stopped");
    let claims = &tally.dead["claims-acme"][0];
    assert_eq!(claims.reason, DeadLetterReason::InvalidIntake);
    assert!(
        claims.detail.contains("binds it to tenant `globex`"),
        "{}",
        claims.detail
    );
    assert!(!tally.results.contains_key("claims-acme"));
    for id in ["says-nothing", "says-globex"] {
        assert_eq!(tally.results[id][0].tenant.as_str(), "globex", "{id}");
    }
    assert!(!tally.results.contains_key("on-the-shared-topic"));
    assert!(!tally.dead.contains_key("on-the-shared-topic"));
    // Job 42: acme's finished, globex's was dead-lettered.
    let results42: Vec<&str> = tally.results["42"]
        .iter()
        .map(|r| r.tenant.as_str())
        .collect();
    assert_eq!(results42, ["acme"], "dead: {:?}", tally.dead.keys());
    let dead42 = &tally.dead["42"][0];
    assert_eq!(dead42.tenant.as_deref(), Some("globex"));
    assert!(dead42.replayable, "{}", dead42.reason.as_str());

    let picture =
        switchyard::output::replay::read_picture(&h.kafka, &pipeline, Duration::from_secs(2))
            .await
            .unwrap();
    let (decisions, messages) = switchyard::output::replay::plan_replay(
        &picture,
        &pipeline,
        &switchyard::output::replay::Filter {
            job_id: Some("42".into()),
            ..Default::default()
        },
        3,
    );
    assert_eq!(messages.len(), 1, "{decisions:?}");
    assert_eq!(messages[0].topic, globex, "{decisions:?}");
    assert_eq!(decisions[0].tenant, "globex");
    let _ = child.kill();
    let _ = child.wait();
}

/// Class 5, header form: with `tenant_from: header`, a job without the bridge's header is
/// dead-lettered with the reason, and the header's tenant beats what the payload claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tenant_from_header_a_job_needs_the_bridges_header() {
    let h = Harness::start(quiet_profile(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    bind_tenants(&pipelines, "header");
    let mut child = run_command(&pipelines, h.broker.bootstrap(), &h.sim().base_url())
        .spawn()
        .unwrap();
    let ok = "[sim:high_confidence] where is my parcel";
    let topic = h.pipeline.topics.intake.as_str();
    let bodies = [
        raw_job("no-header", Some("acme"), ok),
        raw_job("header-globex", None, ok),
        raw_job("header-globex-claims-acme", Some("acme"), ok),
    ];
    let header = Some(("switchyard-tenant", "globex"));
    let messages = [
        switchyard::kafka::client::Outgoing {
            topic,
            key: "a",
            value: &bodies[0],
            header: None,
        },
        switchyard::kafka::client::Outgoing {
            topic,
            key: "b",
            value: &bodies[1],
            header,
        },
        switchyard::kafka::client::Outgoing {
            topic,
            key: "c",
            value: &bodies[2],
            header,
        },
    ];
    switchyard::kafka::client::send_messages(&h.kafka, &messages)
        .await
        .unwrap();
    let expected: HashSet<String> = ["no-header", "header-globex", "header-globex-claims-acme"]
        .map(String::from)
        .into();
    let tally = h.collect(&expected, 0, Duration::from_secs(60)).await;
    assert!(child.try_wait().unwrap().is_none(), "the worker stopped");
    let no_header = &tally.dead["no-header"][0];
    assert_eq!(no_header.reason, DeadLetterReason::InvalidIntake);
    assert!(
        no_header.detail.contains("no `switchyard-tenant` header"),
        "{}",
        no_header.detail
    );
    assert_eq!(tally.results["header-globex"][0].tenant.as_str(), "globex");
    assert!(tally.dead.contains_key("header-globex-claims-acme"));
    let _ = child.kill();
    let _ = child.wait();
}
