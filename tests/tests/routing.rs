//! End-to-end routing: the Anthropic adapter, a revoked key taken out of rotation, the
//! context-window fallback and the content-policy fallback, against llm-sim over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use switchyard::config::{ApiFamily, ProviderKey};
use switchyard::envelope::{AttemptClass, DeadLetterReason, compile_schema};
use switchyard::secret::{KeyRef, Secret};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{ids, job, quiet_profile};

const WAIT: Duration = Duration::from_secs(30);

async fn start(profile: llm_sim::Profile) -> Harness {
    let mut h = Harness::start(profile, 2).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_messages_adapter_round_trip() {
    let mut h = start(quiet_profile()).await;
    h.pipeline.providers.get_mut("simedge").unwrap().api = ApiFamily::Anthropic;
    h.pipeline.stages[0].route.provider.only = vec!["simedge".into()];
    h.run_pipeline().await;
    let jobs = vec![job("claude-1", "[sim:high_confidence] my top-up failed")];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["claude-1"][0];
    assert_eq!(r.attempts.len(), 1, "{:?}", r.attempts);
    assert_eq!(r.attempts[0].provider, "simedge");
    assert_eq!(r.attempts[0].class, AttemptClass::Ok);
    assert!(r.attempts[0].completion_tokens > 0);
    let validator = compile_schema(&h.pipeline.stages[0].output_schema).unwrap();
    assert!(validator.is_valid(&r.output), "{}", r.output);
    // It really went through the Messages API.
    let stats = h.sim().sim.stats();
    assert_eq!(stats.by_provider["simedge"], 1);
    assert_eq!(stats.by_status["200"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_is_taken_out_of_rotation() {
    let mut profile = quiet_profile();
    profile.keys.insert(
        "sk-revoked-0001".into(),
        llm_sim::profile::KeyProfile {
            rpm: None,
            revoked: true,
            out_of_credit: false,
        },
    );
    profile.keys.insert(
        "sk-good-0002".into(),
        llm_sim::profile::KeyProfile {
            rpm: None,
            revoked: false,
            out_of_credit: false,
        },
    );
    let mut h = start(profile).await;
    let key = |name: &str, secret: &str| ProviderKey {
        key_ref: KeyRef::Env(name.into()),
        secret: Secret::new(secret),
        rpm: None,
        tpm: None,
    };
    h.pipeline.providers.get_mut("simcloud").unwrap().keys = vec![
        key("REVOKED_KEY", "sk-revoked-0001"),
        key("GOOD_KEY", "sk-good-0002"),
    ];
    h.pipeline.stages[0].route.provider.only = vec!["simcloud".into()];
    h.run_pipeline().await;

    let first = vec![job("key-1", "[sim:high_confidence] first")];
    h.produce(&first).await;
    let tally = h.collect(&ids(&first), 0, WAIT).await;
    let r = &tally.results["key-1"][0];
    let statuses: Vec<Option<u16>> = r.attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [Some(401), Some(200)],
        "the same endpoint again, with the next key"
    );
    assert_eq!(r.attempts[0].class, AttemptClass::Auth);

    let later: Vec<_> = (0..10)
        .map(|i| job(&format!("key-later-{i}"), "[sim:high_confidence] later"))
        .collect();
    h.produce(&later).await;
    let tally = h.collect(&ids(&later), 0, WAIT).await;
    h.stop_pipeline().await;
    for j in &later {
        let rs = &tally.results[j.job_id.as_str()];
        assert_eq!(
            rs[0].attempts.len(),
            1,
            "the revoked key is not tried again: {:?}",
            rs[0].attempts
        );
    }
    let stats = h.sim().sim.stats();
    let revoked = llm_sim::stats::key_label("sk-revoked-0001");
    assert_eq!(stats.keys[&revoked].requests, 1);
    // No key value anywhere in what was published.
    let published = format!("{:?}", tally.results);
    assert!(!published.contains("sk-revoked") && !published.contains("sk-good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn context_window_error_falls_back_to_a_larger_model() {
    let mut profile = quiet_profile();
    // swift-lite (16k in the catalog) will say the prompt is too long.
    profile
        .models
        .get_mut("simlab/swift-lite")
        .unwrap()
        .context_length = Some(20);
    let mut h = start(profile).await;
    h.pipeline.stages[0].models.reverse(); // swift-lite first, then swift-mini (32k)
    h.run_pipeline().await;
    let jobs = vec![job(
        "ctx-1",
        "[sim:high_confidence] a long complaint about a card that never arrived",
    )];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["ctx-1"][0];
    assert_eq!(r.attempts[0].model, "simlab/swift-lite");
    assert_eq!(r.attempts[0].class, AttemptClass::ContextWindow);
    assert_eq!(r.attempts[0].status, Some(400));
    let last = r.attempts.last().unwrap();
    assert_eq!(last.model, "simlab/swift-mini");
    assert_eq!(last.class, AttemptClass::Ok);
    assert_eq!(r.attempts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_refusal_goes_to_the_content_fallback_or_the_dead_letters() {
    let mut h = start(quiet_profile()).await;
    let lite = h.pipeline.stages[0]
        .models
        .iter()
        .find(|m| m.name == "simlab/swift-lite")
        .unwrap()
        .clone();
    h.pipeline.stages[0]
        .models
        .retain(|m| m.name == "simlab/swift-mini");
    h.pipeline.stages[0].content_fallback = vec![lite];
    h.run_pipeline().await;
    let jobs = vec![
        job(
            "refused-1",
            "[sim:content_filter@simlab/swift-mini] [sim:high_confidence] dispute",
        ),
        job(
            "refused-2",
            "[sim:content_filter:always] dispute everywhere",
        ),
    ];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["refused-1"][0];
    assert_eq!(r.attempts[0].class, AttemptClass::ContentPolicy);
    assert_eq!(r.attempts[0].model, "simlab/swift-mini");
    assert_eq!(
        r.attempts.len(),
        2,
        "the refusal is final for that model: no other endpoint of it is tried"
    );
    assert_eq!(r.attempts[1].model, "simlab/swift-lite");
    assert_eq!(r.attempts[1].class, AttemptClass::Ok);

    let d = &tally.dead["refused-2"][0];
    assert_eq!(d.reason, DeadLetterReason::ContentPolicy);
    assert!(d.detail.contains("content fallback"), "{}", d.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demand_above_a_key_limit_waits_instead_of_drawing_429s() {
    let mut profile = quiet_profile();
    profile.keys.insert(
        "sk-limited-0003".into(),
        llm_sim::profile::KeyProfile {
            rpm: Some(120),
            revoked: false,
            out_of_credit: false,
        },
    );
    let mut h = start(profile).await;
    let p = h.pipeline.providers.get_mut("simcloud").unwrap();
    p.keys = vec![ProviderKey {
        key_ref: KeyRef::Env("LIMITED_KEY".into()),
        secret: Secret::new("sk-limited-0003"),
        rpm: Some(120),
        tpm: None,
    }];
    p.rpm = None;
    h.pipeline.stages[0].route.provider.only = vec!["simcloud".into()];
    h.pipeline.stages[0].route.max_wait = Duration::from_millis(200);
    h.run_pipeline().await;
    // 20 jobs at 2 requests/s: about ten seconds of waiting for capacity, far past max_wait.
    let jobs: Vec<_> = (0..20)
        .map(|i| job(&format!("limited-{i}"), "[sim:high_confidence] limit me"))
        .collect();
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(40)).await;
    h.stop_pipeline().await;

    assert_eq!(
        tally.dead.len(),
        0,
        "a rate limit must never dead-letter a job: {:?}",
        tally.dead
    );
    assert!(
        jobs.iter()
            .all(|j| tally.results.contains_key(j.job_id.as_str()))
    );
    let stats = h.sim().sim.stats();
    assert_eq!(
        stats.sent_429, 0,
        "the limit is kept, not discovered through 429s"
    );
    let k = &stats.keys[&llm_sim::stats::key_label("sk-limited-0003")];
    assert_eq!(k.requests, 20);
    assert!(k.max_rpm_observed <= 122, "{k:?}");
}
