//! End-to-end: the ledger on a real PostgreSQL (started from the system's binaries), fed
//! through the ledger topic of the embedded broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::ledger::{LedgerStore, PgLedger, run_sink, usage};
use switchyard_cli::tools::demo::{DemoOptions, run_demo};
use switchyard_testkit::Harness;
use switchyard_testkit::Tally;
use switchyard_testkit::fixtures::{Postgres, ids, job, quiet_profile, triage_dir};
use tokio_util::sync::CancellationToken;

/// Sum of attempts and cost over what was read back.
fn expected_totals(t: &Tally) -> (u64, u64) {
    let mut calls = 0;
    let mut cost = 0;
    for r in t.results.values().map(|v| &v[0]) {
        calls += r.attempts.len() as u64;
        cost += r.attempts.iter().map(|a| a.cost_micro_usd.0).sum::<u64>();
    }
    for d in t.dead.values().map(|v| &v[0]) {
        calls += d.attempts.len() as u64;
        cost += d.attempts.iter().map(|a| a.cost_micro_usd.0).sum::<u64>();
    }
    (calls, cost)
}

async fn wait_for(store: &PgLedger, want: (u64, u64), within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let got = store.totals().await.unwrap_or((0, 0));
        if got.0 >= want.0 || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_is_idempotent_when_the_topic_is_replayed() {
    let pg = Postgres::start();
    let store = Arc::new(PgLedger::new(&pg.url).unwrap());
    let mut profile = quiet_profile();
    profile
        .providers
        .get_mut("simcloud")
        .unwrap()
        .faults
        .server_error = 0.3;
    let mut h = Harness::start(profile, 3).await;
    h.ledger = Some(store.clone());
    h.run_pipeline().await;
    let jobs: Vec<_> = (0..30)
        .map(|i| job(&format!("ledger-{i}"), &format!("ticket {i}")))
        .collect();
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(30)).await;
    let want = expected_totals(&tally);
    assert!(want.0 >= 30);
    assert_eq!(wait_for(&store, want, Duration::from_secs(20)).await, want);
    h.stop_pipeline().await;

    // Replay the whole ledger topic twice more through fresh sinks: nothing changes.
    for round in 0..2 {
        let token = CancellationToken::new();
        let sink = {
            let kafka = h.kafka.clone();
            let topic = h.pipeline.topics.ledger.clone();
            let store = store.clone();
            let token = token.clone();
            tokio::spawn(async move {
                run_sink(
                    &kafka,
                    &format!("replay-{round}"),
                    &topic,
                    store.as_ref(),
                    token,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(8)).await;
        token.cancel();
        sink.await.unwrap().unwrap();
        assert_eq!(
            store.totals().await.unwrap(),
            want,
            "replay {round} changed the totals"
        );
    }
    let report = usage(&store, None, &[]).await.unwrap();
    assert_eq!((report.totals.calls, report.totals.cost_micro_usd), want);
    assert_eq!(report.jobs, 30);
    assert!(
        report
            .totals
            .failures_by_class
            .get("transient")
            .copied()
            .unwrap_or(0)
            > 0,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_mid_run_loses_nothing_and_the_pipeline_keeps_going() {
    let pg = Postgres::start();
    let store = Arc::new(PgLedger::new(&pg.url).unwrap());
    store.ready().await.unwrap();
    let mut h = Harness::start(quiet_profile(), 3).await;
    h.ledger = Some(store.clone());
    h.run_pipeline().await;

    pg.down();
    let jobs: Vec<_> = (0..40)
        .map(|i| job(&format!("outage-{i}"), &format!("ticket {i}")))
        .collect();
    h.produce(&jobs).await;
    // The pipeline finishes every job while the database is down.
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(30)).await;
    assert_eq!(tally.finished_count(&ids(&jobs)), 40);
    assert!(store.totals().await.is_err(), "the database really is down");
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg.up();
    let want = expected_totals(&tally);
    assert_eq!(
        wait_for(&store, want, Duration::from_secs(30)).await,
        want,
        "every ledger entry arrives once PostgreSQL is back"
    );
    h.stop_pipeline().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_totals_equal_the_demo_figures() {
    let pg = Postgres::start();
    let summary = run_demo(DemoOptions {
        jobs: 150,
        pipeline: triage_dir(),
        partitions: 4,
        latency_scale: 0.0,
        seed: 11,
        idle_timeout: Duration::from_secs(30),
        progress: false,
        scenario: None,
        database_url: Some(pg.url.clone()),
    })
    .await
    .unwrap();
    assert_eq!(summary.lost, 0);
    let store = PgLedger::new(&pg.url).unwrap();
    let report = usage(&store, None, &[switchyard::ledger::GroupBy::Stage])
        .await
        .unwrap();
    assert_eq!(report.totals.calls, summary.calls as u64);
    assert_eq!(report.totals.cost_micro_usd, summary.cost_micro_usd);
    assert_eq!(report.jobs, 150);
    let by_stage: u64 = report.groups.iter().map(|g| g.calls).sum();
    assert_eq!(by_stage, report.totals.calls);
    assert!(report.groups.iter().any(|g| g.group["stage"] == "triage"));
    let escalated = summary.escalated as f64 / 150.0;
    assert!(
        (report.escalation_rate - escalated).abs() < 1e-9,
        "{} vs {escalated}",
        report.escalation_rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_is_quarantined_and_blocks_nothing() {
    use switchyard::envelope::{Attempt, AttemptClass};
    use switchyard::ledger::{LedgerAttempt, LedgerRecord};
    use switchyard::money::MicroUsd;
    let pg = Postgres::start();
    let store = PgLedger::new(&pg.url).unwrap();
    let attempt = |id: &str, error: Option<&str>| {
        LedgerRecord::Attempt(LedgerAttempt {
            job_id: "j-1".into(),
            tenant: "acme".into(),
            pipeline: "p".into(),
            at: switchyard::envelope::now(),
            attempt: Attempt {
                attempt_id: id.into(),
                stage: "triage".into(),
                provider: "simcloud".into(),
                model: "m".into(),
                status: Some(500),
                class: AttemptClass::Transient,
                error: error.map(str::to_string),
                latency_ms: 1,
                prompt_tokens: 10,
                completion_tokens: 1,
                cost_micro_usd: MicroUsd(7),
                repair: false,
                key: None,
                tenant_key: false,
                cached_tokens: 0,
                reasoning_tokens: 0,
                provider_cost_micro_usd: None,
            },
        })
    };
    // A provider error text with a NUL in it: PostgreSQL's TEXT refuses it.
    let batch = [
        attempt("a-1", None),
        attempt("a-2", Some("upstream said \u{0000} and stopped")),
        attempt("a-3", Some("plain")),
    ];
    store.write(&batch).await.expect("the batch is not stuck");
    assert_eq!(
        store.totals().await.unwrap(),
        (2, 14),
        "the records around the refused one are written"
    );
    // Written again (a replay of the topic): still one quarantined copy, nothing blocked.
    store.write(&batch).await.expect("the replay is not stuck");
    assert_eq!(store.totals().await.unwrap(), (2, 14));
    let report = usage(&store, None, &[]).await.unwrap();
    assert_eq!(report.quarantined, 1);
    let client = store.client().await.unwrap();
    let kept: String = client
        .query_one("SELECT record FROM ledger_quarantine", &[])
        .await
        .unwrap()
        .get(0);
    assert!(kept.contains("a-2") && kept.contains("\\u0000"), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_of_two_tenants_and_a_replay_each_reach_the_ledger() {
    use switchyard::envelope::DeadLetterReason;
    use switchyard::ledger::{JobOutcome, LedgerJob, LedgerRecord};
    let pg = Postgres::start();
    let store = PgLedger::new(&pg.url).unwrap();
    let ended = |tenant: &str, redrive: u32, outcome: JobOutcome| {
        LedgerRecord::Job(LedgerJob {
            job_id: "42".into(),
            tenant: tenant.into(),
            pipeline: "p".into(),
            redrive_count: redrive,
            outcome,
            stage: "triage".into(),
            reason: (outcome == JobOutcome::DeadLetter)
                .then_some(DeadLetterReason::ProviderExhausted),
            escalated: false,
            escalation_reasons: Vec::new(),
            needs_review: false,
            cost_micro_usd: 5,
            latency_ms: None,
            at: switchyard::envelope::now(),
        })
    };
    let batch = [
        ended("acme", 0, JobOutcome::DeadLetter),
        ended("globex", 0, JobOutcome::Result),
        // acme's job 42 replayed from the dead-letter topic, and finished this time.
        ended("acme", 1, JobOutcome::Result),
    ];
    store.write(&batch).await.unwrap();
    store.write(&batch).await.unwrap(); // a replayed ledger topic changes nothing
    let report = usage(&store, None, &[]).await.unwrap();
    assert_eq!(report.jobs, 3, "{report:?}");
    assert_eq!(
        report.dead_letters_by_reason.get("provider_exhausted"),
        Some(&1)
    );
}
