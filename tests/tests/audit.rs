//! End-to-end: `gate.audit` on the embedded broker, the simulator and a real PostgreSQL. A
//! sample of accepted jobs is re-done by the next stage as a shadow; each job is still
//! published once, and the audits (with agreement) reach the ledger and `switchyard usage`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::envelope::EscalationReason;
use switchyard::ledger::{PgLedger, usage};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{Postgres, ids, job, quiet_profile};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_samples_are_redone_recorded_and_never_published_twice() {
    let pg = Postgres::start();
    let store = Arc::new(PgLedger::new(&pg.url).unwrap());
    let mut h = Harness::start(quiet_profile(), 3).await;
    {
        let triage = &mut h.pipeline.stages[0];
        triage.gate.escalate_if.clear();
        triage.gate.audit = Some(0.5);
        triage.gate.decision_field = Some("category".into());
    }
    h.ledger = Some(store.clone());
    h.run_pipeline().await;
    // Confident answers: triage accepts every one; about half are audited by `resolve`.
    let jobs: Vec<_> = (0..40)
        .map(|i| {
            job(
                &format!("audit-{i:02}"),
                &format!("[sim:high_confidence] my card {i} has not arrived"),
            )
        })
        .collect();
    h.produce(&jobs).await;
    // Long enough a quiet period for any second publication of a job to show up.
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(5)).await;
    assert_eq!(tally.duplicates(), 0, "a job was published twice");
    assert_eq!(tally.results.len(), 40);
    assert!(tally.dead.is_empty(), "{:?}", tally.dead.keys());
    for r in tally.results.values().map(|v| &v[0]) {
        assert_eq!(r.stage, "triage", "{}", r.job_id);
        assert!(
            r.escalations
                .iter()
                .all(|s| s.reason != EscalationReason::Audit)
        );
    }
    let sampled: Vec<&str> = jobs
        .iter()
        .map(|j| j.job_id.as_str())
        .filter(|id| {
            switchyard::audit::sampled(switchyard::route::job_seed(&format!("{id}/triage")), 0.5)
        })
        .collect();
    assert!(
        (8..=32).contains(&sampled.len()),
        "{} sampled",
        sampled.len()
    );

    // Every sampled job's audit reaches the ledger, once, with the comparison.
    let client = store.client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = client
            .query(
                "SELECT job_id, stage, auditor, agreed, decision, auditor_decision FROM ledger_audits ORDER BY job_id",
                &[],
            )
            .await
            .unwrap_or_default();
        if rows.len() >= sampled.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    h.stop_pipeline().await;
    let audited: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let mut want: Vec<String> = sampled.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(audited, want, "exactly the sampled jobs are audited");
    for r in &rows {
        assert_eq!(r.get::<_, String>(1), "triage");
        assert_eq!(r.get::<_, String>(2), "resolve");
        let agreed: Option<bool> = r.get(3);
        let (a, b): (String, String) = (r.get(4), r.get(5));
        assert_eq!(agreed, Some(a == b), "{a} vs {b}");
    }
    // The audits' calls are in the ledger as the auditor's attempts.
    let audit_calls: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM ledger_attempts WHERE stage = 'resolve'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audit_calls >= sampled.len() as i64);

    // `switchyard usage` reports the audited precision with its interval.
    let report = usage(&store, None, &[]).await.unwrap();
    let a = report
        .audits
        .iter()
        .find(|a| a.stage == "triage")
        .expect("triage audits in usage");
    let agreed = rows
        .iter()
        .filter(|r| r.get::<_, Option<bool>>(3) == Some(true))
        .count() as u64;
    assert_eq!((a.audited, a.agreed), (rows.len() as u64, agreed));
    assert!(a.lower <= a.precision && a.precision <= a.upper, "{a:?}");
    assert!(
        switchyard::ledger::usage_table(&report, &[]).contains("audited precision"),
        "the table shows it"
    );
}
