//! End-to-end: the real pipeline on the embedded broker (over TCP) and llm-sim (over HTTP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use switchyard::envelope::{
    AttemptClass, DeadLetterReason, EscalationReason, Original, compile_schema,
};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{ids, job, quiet_profile};

const WAIT: Duration = Duration::from_secs(30);

/// A harness whose triage gate has no rules, so only confidence decides escalation.
async fn harness(profile: llm_sim::Profile) -> Harness {
    let mut h = Harness::start(profile, 4).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h.run_pipeline().await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confident_tickets_are_accepted_at_triage_with_schema_valid_output() {
    let mut h = harness(quiet_profile()).await;
    let jobs: Vec<_> = (0..40)
        .map(|i| {
            job(
                &format!("happy-{i}"),
                &format!("[sim:high_confidence] my card {i} has not arrived"),
            )
        })
        .collect();
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let validator = compile_schema(&h.pipeline.stages[0].output_schema).unwrap();
    assert_eq!(tally.results.len(), 40, "dead letters: {:?}", tally.dead);
    for (id, results) in &tally.results {
        let r = &results[0];
        assert_eq!(r.stage, "triage", "{id}");
        assert!(r.escalations.is_empty());
        assert!(validator.is_valid(&r.output), "{id}: {}", r.output);
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.attempts[0].class, AttemptClass::Ok);
        assert_eq!(r.attempts[0].attempt_id, format!("acme:{id}/triage/1"));
        assert!(r.attempts[0].prompt_tokens > 0);
        assert!(r.cost_micro_usd.0 > 0);
        assert_eq!(r.cost_micro_usd, r.attempts[0].cost_micro_usd);
        assert_eq!(r.confidence, Some(0.97));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsure_triage_escalates_to_resolve_with_its_output_and_reason() {
    let mut h = harness(quiet_profile()).await;
    let jobs = vec![job(
        "esc-1",
        "[sim:low_confidence@cheap] I was charged twice?",
    )];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["esc-1"][0];
    assert_eq!(r.stage, "resolve");
    assert_eq!(r.escalations.len(), 1);
    let step = &r.escalations[0];
    assert_eq!(
        (step.from_stage.as_str(), step.to_stage.as_str()),
        ("triage", "resolve")
    );
    assert_eq!(step.reason, EscalationReason::LowConfidence);
    assert_eq!(step.confidence, Some(0.2));
    assert!(
        step.output.get("category").is_some(),
        "earlier output is carried: {}",
        step.output
    );
    let stages: Vec<&str> = r.attempts.iter().map(|a| a.stage.as_str()).collect();
    assert_eq!(stages, ["triage", "resolve"]);
    assert!(
        r.attempts[1].model.starts_with("simlab/sage"),
        "{}",
        r.attempts[1].model
    );
    let total: u64 = r.attempts.iter().map(|a| a.cost_micro_usd.0).sum();
    assert_eq!(r.cost_micro_usd.0, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_violation_is_repaired_by_one_re_ask() {
    let mut h = harness(quiet_profile()).await;
    let jobs = vec![job(
        "repair-1",
        "[sim:schema_violation] [sim:high_confidence] where is my refund",
    )];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["repair-1"][0];
    assert_eq!(r.stage, "triage");
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].class, AttemptClass::SchemaInvalid);
    assert!(
        r.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("/category"),
        "{:?}",
        r.attempts[0].error
    );
    assert!(!r.attempts[0].repair);
    assert_eq!(r.attempts[1].class, AttemptClass::Ok);
    assert!(r.attempts[1].repair);
    assert_eq!(
        r.attempts[0].provider, r.attempts[1].provider,
        "the repair goes to the same endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_violation_that_survives_repair_escalates() {
    let mut h = harness(quiet_profile()).await;
    let jobs = vec![job(
        "badschema-1",
        "[sim:schema_violation:always@cheap] [sim:high_confidence] card declined",
    )];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["badschema-1"][0];
    assert_eq!(r.stage, "resolve");
    assert_eq!(r.escalations[0].reason, EscalationReason::SchemaInvalid);
    assert!(
        r.escalations[0].detail.contains("after one repair"),
        "{}",
        r.escalations[0].detail
    );
    let triage: Vec<_> = r.attempts.iter().filter(|a| a.stage == "triage").collect();
    assert_eq!(triage.len(), 2, "first answer and one repair, no more");
    assert!(
        triage
            .iter()
            .all(|a| a.class == AttemptClass::SchemaInvalid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_provider_500_falls_back_to_the_next() {
    let mut profile = quiet_profile();
    profile
        .providers
        .get_mut("simcloud")
        .unwrap()
        .faults
        .server_error = 1.0;
    let mut h = Harness::start(profile, 4).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    // simcloud first, so its 500 is the first thing the job meets.
    h.pipeline.stages[0].route.provider.order = vec!["simcloud".into()];
    h.run_pipeline().await;
    let jobs = vec![job("fallback-1", "[sim:high_confidence] transfer pending")];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["fallback-1"][0];
    assert_eq!(r.stage, "triage");
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].provider, "simcloud");
    assert_eq!(r.attempts[0].status, Some(500));
    assert_eq!(r.attempts[0].class, AttemptClass::Transient);
    assert_eq!(
        r.attempts[0].cost_micro_usd.0, 0,
        "a failed call costs nothing"
    );
    assert_eq!(r.attempts[1].provider, "simedge");
    assert_eq!(r.attempts[1].class, AttemptClass::Ok);
    let stats = h.sim().sim.stats();
    assert_eq!(stats.by_provider["simcloud"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_failing_dead_letters_with_all_attempts() {
    let mut h = harness(quiet_profile()).await;
    let jobs = vec![job(
        "dead-1",
        "[sim:server_error:always] my account is locked",
    )];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    assert!(tally.results.is_empty());
    let d = &tally.dead["dead-1"][0];
    assert_eq!(d.reason, DeadLetterReason::ProviderExhausted);
    assert_eq!(d.stage, "triage");
    assert!(d.replayable);
    let mut tried: Vec<(String, String, Option<u16>)> = d
        .attempts
        .iter()
        .map(|a| (a.provider.clone(), a.model.clone(), a.status))
        .collect();
    // The fallback model comes after every endpoint of the primary model.
    assert_eq!(tried.last().unwrap().1, "simlab/swift-lite", "{tried:?}");
    let mut expected: Vec<(String, String, Option<u16>)> = h.pipeline.stages[0]
        .models
        .iter()
        .flat_map(|m| m.endpoints.iter())
        .map(|e| (e.provider.clone(), e.model.clone(), Some(500)))
        .collect();
    tried.sort();
    expected.sort();
    assert_eq!(
        tried, expected,
        "one attempt per candidate endpoint, none twice"
    );
    assert!(
        d.attempts
            .iter()
            .all(|a| a.error.as_deref().is_some_and(|e| e.contains("500")))
    );
    // The original job rides along, ready for replay.
    match &d.original {
        Original::Json(v) => assert_eq!(v["job_id"], "dead-1"),
        other => panic!("expected the job as JSON, got {other:?}"),
    }
    assert!(
        d.detail.contains("simcloud/simlab/swift-mini"),
        "{}",
        d.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_intake_is_dead_lettered_with_the_original_bytes() {
    let mut h = harness(quiet_profile()).await;
    let not_json = b"hello, this is not json".to_vec();
    let binary = vec![0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96];
    let wrong_schema =
        br#"{"job_id": "wrong-1", "tenant": "acme", "payload": "not an object"}"#.to_vec();
    let wrong_pipeline = serde_json::to_vec(&{
        let mut j = job("other-1", "hi");
        j.pipeline = "document-extraction".into();
        j
    })
    .unwrap();
    h.produce_raw(&[
        not_json.clone(),
        binary.clone(),
        wrong_schema,
        wrong_pipeline,
        Vec::new(),
    ])
    .await;
    // A good job after the bad ones proves the partition did not stall.
    let good = vec![job("after-bad", "[sim:high_confidence] fine")];
    h.produce(&good).await;
    let expected: HashSet<String> = ["wrong-1", "other-1", "after-bad"].map(String::from).into();
    let tally = h.collect(&expected, 3, WAIT).await;
    h.stop_pipeline().await;

    assert!(tally.results.contains_key("after-bad"));
    let mut unnamed = tally.dead_without_id.clone();
    unnamed.sort_by_key(|d| d.source.offset);
    assert_eq!(unnamed.len(), 3, "{unnamed:?}");
    for d in tally.dead.values().flatten().chain(&unnamed) {
        assert_eq!(d.reason, DeadLetterReason::InvalidIntake, "{d:?}");
        assert!(!d.replayable);
        assert!(d.attempts.is_empty(), "no LLM call is made for bad input");
    }
    let originals: Vec<&Original> = unnamed.iter().map(|d| &d.original).collect();
    assert!(originals.contains(&&Original::Utf8("hello, this is not json".into())));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&binary);
    assert!(originals.contains(&&Original::Base64(b64)), "{originals:?}");
    assert!(unnamed.iter().any(|d| d.detail.contains("empty message")));
    assert!(unnamed.iter().any(|d| d.detail.contains("not UTF-8")));
    let wrong = &tally.dead["wrong-1"][0];
    assert!(wrong.detail.contains("/payload"), "{}", wrong.detail);
    assert!(
        wrong.detail.contains("pipeline"),
        "names the missing property: {}",
        wrong.detail
    );
    let other = &tally.dead["other-1"][0];
    assert!(
        other.detail.contains("document-extraction"),
        "{}",
        other.detail
    );
}
