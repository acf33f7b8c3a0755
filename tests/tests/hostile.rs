//! Hostile input and a hostile provider, against a real `switchyard run` process: every bad
//! message and every bad reply ends as a result or a dead letter with a reason, the worker
//! keeps running, the job behind them on the same partition finishes, and the provider key
//! appears nowhere in what the pipeline publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::envelope::DeadLetterReason;
use switchyard::kafka::client::{read_until, reader, send_all};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{copy_llm_pipelines, job, quiet_profile, run_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "sk-hostile-test-key-5f1c9a";

/// A valid triage answer (the shipped output schema).
fn answer() -> Value {
    json!({"category": "card_arrival", "urgency": "low", "sentiment": "neutral",
           "summary": "The customer card has not arrived yet.", "draft_reply": "Sorry for the wait: your card is on its way and should arrive within a few days.", "confidence": 0.99})
}

fn completion(usage_tokens: u64) -> String {
    json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer().to_string()}}],
        "usage": {"prompt_tokens": usage_tokens, "completion_tokens": usage_tokens,
                  "total_tokens": usage_tokens}
    })
    .to_string()
}

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
                    reply("200 OK", "", &completion(u64::MAX))
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
                    reply("200 OK", "", &completion(100))
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
