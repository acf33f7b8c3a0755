//! Secret hygiene: a pipeline run with trace logging, keys in every role (shared, revoked,
//! tenant BYOK), and every output searched for the key values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use switchyard::kafka::client::{read_until, reader};
use switchyard::ledger::{LedgerStore, PgLedger};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{
    Postgres, copy_llm_pipelines, ids, job, quiet_profile, run_command,
};

const SHARED: &str = "sk-scrub-shared-9f3a0c";
const REVOKED: &str = "sk-scrub-revoked-77aa1e";
const TENANT: &str = "sk-scrub-tenant-51cd2b";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_value_appears_in_logs_topics_ledger_or_stats() {
    let pg = Postgres::start();
    let mut profile = quiet_profile();
    profile.keys.insert(
        REVOKED.into(),
        llm_sim::profile::KeyProfile {
            rpm: None,
            revoked: true,
            out_of_credit: false,
        },
    );
    let h = Harness::start(profile, 2).await;

    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let providers = pipelines.join("providers.yaml");
    let text = std::fs::read_to_string(&providers).unwrap();
    let text = text
        .replace(
            "    base_url: http://127.0.0.1:8089/simcloud/v1\n",
            "    base_url: http://127.0.0.1:8089/simcloud/v1\n    keys:\n      - key: env:SCRUB_REVOKED\n      - key: env:SCRUB_SHARED\n",
        )
        .replace(
            "    base_url: http://127.0.0.1:8089/simedge/v1\n",
            "    base_url: http://127.0.0.1:8089/simedge/v1\n    api_key: env:SCRUB_SHARED\n",
        );
    std::fs::write(&providers, text).unwrap();
    std::fs::write(
        pipelines.join("tenants.yaml"),
        "tenants:\n  acme:\n    keys:\n      simedge: { key: env:SCRUB_TENANT }\n  demo: {}\n",
    )
    .unwrap();
    let yaml = pipelines.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace(
            "samples: samples/tickets.jsonl",
            "samples: samples/tickets.jsonl\ntenants: ../tenants.yaml",
        ),
    )
    .unwrap();

    let log = dir.path().join("run.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut run = run_command(&pipelines, h.broker.bootstrap(), &h.sim().base_url())
        .env("SCRUB_SHARED", SHARED)
        .env("SCRUB_REVOKED", REVOKED)
        .env("SCRUB_TENANT", TENANT)
        .env("DATABASE_URL", &pg.url)
        .env("SWITCHYARD_LOG", "trace")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();

    // Every path: BYOK, shared after a revoked key, escalation, repair, provider failure, an
    // unknown tenant.
    let mut jobs = vec![
        job("s-1", "[sim:high_confidence] plain"),
        job("s-2", "[sim:low_confidence@cheap] escalate me"),
        job(
            "s-3",
            "[sim:schema_violation] [sim:high_confidence] repair me",
        ),
        job("s-4", "[sim:server_error:always] fail everywhere"),
    ];
    for (i, t) in ["acme", "acme", "demo", "acme"].iter().enumerate() {
        jobs[i].tenant = (*t).into();
    }
    let mut stranger = job("s-5", "who am i");
    stranger.tenant = "stranger".into();
    jobs.push(stranger);
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(60)).await;
    assert_eq!(
        tally.finished_count(&ids(&jobs)),
        jobs.len(),
        "results {:?} dead {:?}",
        tally.results.keys(),
        tally.dead.keys()
    );
    let store = PgLedger::new(&pg.url).unwrap();
    let calls: u64 = tally
        .results
        .values()
        .chain(std::iter::empty())
        .map(|r| r[0].attempts.len() as u64)
        .sum::<u64>()
        + tally
            .dead
            .values()
            .map(|d| d[0].attempts.len() as u64)
            .sum::<u64>();
    for _ in 0..100 {
        if store.totals().await.map(|t| t.0).unwrap_or(0) >= calls {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(run.wait().unwrap().success());

    // Everything the run produced.
    let mut corpus = std::fs::read_to_string(&log).unwrap();
    let p = &h.pipeline;
    let topics = [
        &p.topics.intake,
        &p.topics.results,
        &p.topics.dlq,
        &p.topics.ledger,
        &p.stages[1].input_topic,
    ];
    let consumer = reader(&h.kafka, &topics.map(String::as_str)).unwrap();
    read_until(&consumer, Duration::from_secs(3), |_, payload| {
        corpus.push_str(&String::from_utf8_lossy(payload));
        false
    })
    .await;
    let client = store.client().await.unwrap();
    for table in ["ledger_attempts", "ledger_jobs"] {
        for row in client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            corpus.push_str(&row.get::<_, String>(0));
        }
    }
    corpus.push_str(&serde_json::to_string(&h.sim().sim.stats()).unwrap());

    // The search covered real material: trace logs, the revoked key's 401, key references.
    assert!(corpus.contains("TRACE"), "trace logging was on");
    assert!(
        corpus.contains("HTTP 401"),
        "the revoked key was used and refused"
    );
    assert!(
        corpus.contains("env:SCRUB_TENANT"),
        "the tenant key's reference is recorded"
    );
    assert!(corpus.contains("env:SCRUB_SHARED"));
    assert!(corpus.contains("unknown_tenant"));
    for secret in [SHARED, REVOKED, TENANT] {
        assert!(
            !corpus.contains(secret),
            "a key value leaked into the outputs: {}",
            &secret[..8]
        );
    }
}
