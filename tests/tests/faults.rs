//! Delivery under faults: dead-letter replay, SIGTERM and restart, replicas joining and
//! leaving mid-run. Each test kills or stops real processes and counts the topics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use switchyard::envelope::DeadLetterReason;
use switchyard::kafka::client::{read_until, reader};
use switchyard::output::replay::{Filter, list, plan_replay, read_picture, send};
use switchyard_testkit::Harness;
use switchyard_testkit::Tally;
use switchyard_testkit::fixtures::{copy_llm_pipelines, ids, job, quiet_profile, spawn_run};

fn sigterm(child: &std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_replay_once_and_only_once() {
    let mut profile = quiet_profile();
    for p in ["simcloud", "simedge"] {
        profile.providers.get_mut(p).unwrap().faults.server_error = 1.0;
    }
    let mut h = Harness::start(profile, 2).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h.run_pipeline().await;
    let jobs: Vec<_> = (0..6)
        .map(|i| {
            job(
                &format!("replay-{i}"),
                "[sim:high_confidence] outage victim",
            )
        })
        .collect();
    h.produce(&jobs).await;
    h.produce_raw(&[b"not a job".to_vec()]).await;
    let tally = h.collect(&ids(&jobs), 1, Duration::from_secs(30)).await;
    assert_eq!(tally.dead.len(), 6);
    assert!(
        tally
            .dead
            .values()
            .all(|d| d[0].reason == DeadLetterReason::ProviderExhausted)
    );

    // The outage is over.
    for p in ["simcloud", "simedge"] {
        h.sim()
            .sim
            .set_provider_faults(p, llm_sim::FaultRates::default());
    }
    let picture = read_picture(&h.kafka, &h.pipeline, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        list(&picture, &Filter::default()).len(),
        7,
        "six jobs and the unreadable message"
    );
    let only_exhausted = Filter {
        reason: Some("provider_exhausted".into()),
        ..Filter::default()
    };
    assert_eq!(list(&picture, &only_exhausted).len(), 6);

    // A cap of zero keeps everything in place.
    let (decisions, messages) = plan_replay(&picture, &h.pipeline, &Filter::default(), 0);
    assert!(messages.is_empty());
    assert!(
        decisions.iter().all(|d| d.action.contains("cap 0")),
        "{decisions:?}"
    );

    let (decisions, messages) = plan_replay(
        &picture,
        &h.pipeline,
        &Filter {
            limit: Some(4),
            ..Filter::default()
        },
        3,
    );
    assert_eq!(messages.len(), 4, "{decisions:?}");
    assert!(messages.iter().all(|m| m.topic == h.pipeline.topics.intake));
    send(&h.kafka, messages).await.unwrap();
    let replayed: Vec<String> = decisions
        .iter()
        .filter(|d| d.topic.is_some())
        .map(|d| d.job_id.clone())
        .collect();
    let want: std::collections::HashSet<String> = replayed.iter().cloned().collect();
    let consumer = reader(&h.kafka, &[&h.pipeline.topics.results]).unwrap();
    let mut tally = Tally::default();
    read_until(&consumer, Duration::from_secs(20), |_, p| {
        tally.add(false, p);
        want.iter().all(|id| tally.results.contains_key(id))
    })
    .await;
    assert!(
        want.iter().all(|id| tally.results.contains_key(id)),
        "replayed jobs finish"
    );

    // Replaying again sends nothing for the finished ones; the other two are still eligible.
    let picture = read_picture(&h.kafka, &h.pipeline, Duration::from_secs(2))
        .await
        .unwrap();
    let (decisions, messages) = plan_replay(&picture, &h.pipeline, &Filter::default(), 3);
    h.stop_pipeline().await;
    assert_eq!(messages.len(), 2, "{decisions:?}");
    for id in &replayed {
        let d = decisions.iter().find(|d| &d.job_id == id).unwrap();
        assert!(d.action.contains("has a result"), "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_commits_and_a_restart_redoes_nothing() {
    let mut profile = quiet_profile();
    profile.latency_scale = 0.05;
    let h = Harness::start(profile, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let jobs: Vec<_> = (0..120)
        .map(|i| job(&format!("term-{i}"), &format!("ticket {i}")))
        .collect();
    h.produce(&jobs).await;

    let first = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(60)).await;
    assert_eq!(tally.finished_count(&ids(&jobs)), 120);
    let calls_before = h.sim().sim.stats().requests;
    sigterm(&first);
    let mut first = first;
    let started = Instant::now();
    assert!(first.wait().unwrap().success(), "exit 0 on SIGTERM");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "drained promptly: {:?}",
        started.elapsed()
    );

    let mut second = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    // Long enough to join the group and fetch from the committed offsets.
    tokio::time::sleep(Duration::from_secs(10)).await;
    sigterm(&second);
    assert!(second.wait().unwrap().success());
    assert_eq!(
        h.sim().sim.stats().requests,
        calls_before,
        "the restart made no LLM call: nothing finished was redone"
    );
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(3)).await;
    assert_eq!(tally.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_joining_and_leaving_mid_run_lose_nothing() {
    let mut profile = llm_sim::Profile::default_profile().unwrap();
    profile.latency_scale = 0.3;
    let h = Harness::start(profile, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let yaml = pipelines.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("max_in_flight: 512", "max_in_flight: 16")
            .replace(
                "max_in_flight_per_partition: 128",
                "max_in_flight_per_partition: 4",
            ),
    )
    .unwrap();
    let jobs: Vec<_> = (0..500)
        .map(|i| {
            job(
                &format!("rebal-{i:03}"),
                &format!("ticket {i}: card declined"),
            )
        })
        .collect();
    let expected = ids(&jobs);
    h.produce(&jobs).await;

    let watch = |n: usize| {
        let kafka = h.kafka.clone();
        let topics = [
            h.pipeline.topics.results.clone(),
            h.pipeline.topics.dlq.clone(),
        ];
        let expected = expected.clone();
        async move {
            let consumer = reader(&kafka, &[&topics[0], &topics[1]]).unwrap();
            let mut t = Tally::default();
            read_until(&consumer, Duration::from_secs(60), |topic, p| {
                t.add(topic == topics[1], p);
                t.finished_count(&expected) >= n
            })
            .await;
            t.finished_count(&expected)
        }
    };
    let sim = h.sim().base_url();
    let boot = h.broker.bootstrap().to_string();
    let mut a = spawn_run(&pipelines, &boot, &sim);
    assert!(watch(80).await >= 80);
    let mut b = spawn_run(&pipelines, &boot, &sim);
    assert!(watch(160).await >= 160);
    let mut c = spawn_run(&pipelines, &boot, &sim);
    assert!(watch(240).await >= 240);
    sigterm(&a); // a graceful leave
    assert!(a.wait().unwrap().success());
    let done = watch(320).await;
    assert!(
        (320..500).contains(&done),
        "the kill lands mid-run ({done} done)"
    );
    b.kill().unwrap(); // a crash
    b.wait().unwrap();

    let tally = h.collect(&expected, 0, Duration::from_secs(90)).await;
    sigterm(&c);
    c.wait().unwrap();
    let summary = tally.summary("support-triage", &expected, Duration::from_secs(1));
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert_eq!(summary.results + summary.dead_lettered, 500);
    eprintln!(
        "3 replicas, one left, one crashed: {} results, {} dead letters, {} duplicates",
        summary.results, summary.dead_lettered, summary.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_unreachable_for_a_while_then_back_loses_nothing() {
    let mut profile = quiet_profile();
    profile.latency_scale = 0.05;
    let mut h = Harness::start(profile, 3).await;
    h.run_pipeline().await;
    let first: Vec<_> = (0..60)
        .map(|i| job(&format!("outage-a-{i}"), &format!("ticket {i}")))
        .collect();
    h.produce(&first).await;
    // Take the broker away while those jobs are in flight, for 12 s.
    tokio::time::sleep(Duration::from_millis(150)).await;
    h.broker.broker_down().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    h.broker.broker_up().unwrap();
    let second: Vec<_> = (0..60)
        .map(|i| job(&format!("outage-b-{i}"), &format!("ticket {i}")))
        .collect();
    h.produce(&second).await;
    let mut all = ids(&first);
    all.extend(ids(&second));
    let tally = h.collect(&all, 0, Duration::from_secs(60)).await;
    h.stop_pipeline().await;
    let summary = tally.summary("support-triage", &all, Duration::from_secs(1));
    assert_eq!(summary.lost, 0, "{summary:?}");
    assert_eq!(summary.results + summary.dead_lettered, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_jobs_are_dead_lettered_without_stalling_the_partition() {
    let mut h = Harness::start(quiet_profile(), 1).await;
    let producer_side = h.kafka.clone();
    // The pipeline's producer takes at most 200 KB a message (as a topic's max.message.bytes would).
    h.kafka = h
        .kafka
        .clone()
        .with_options(&["message.max.bytes=200000".to_string()])
        .unwrap();
    h.run_pipeline().await;
    // 150 KB: too long for every model's context window. 300 KB: its dead letter (which
    // carries the whole job) is larger than the producer takes, so a bounded excerpt goes.
    let big = job("huge-150k", &"card ".repeat(30_000));
    let bigger = job("huge-300k", &"card ".repeat(60_000));
    let after = job("after-huge", "[sim:high_confidence] small one");
    let expected = ids(&[big.clone(), bigger.clone(), after.clone()]);
    switchyard::kafka::client::produce_jobs(
        &producer_side,
        &h.pipeline.topics.intake,
        &[big, bigger, after],
    )
    .await
    .unwrap();
    let tally = h.collect(&expected, 0, Duration::from_secs(40)).await;
    h.stop_pipeline().await;
    assert!(
        tally.results.contains_key("after-huge"),
        "the partition kept moving"
    );
    let d = &tally.dead["huge-150k"][0];
    assert_eq!(d.reason, DeadLetterReason::InputTooLarge);
    assert!(!d.replayable, "a replay cannot make it fit");
    assert!(d.detail.contains("context window"), "{}", d.detail);
    assert!(
        d.attempts.is_empty(),
        "no call is made for a prompt no model can take"
    );
    // Its dead letter, too large for the producer, is cut to an excerpt but keeps its reason.
    let d = &tally.dead["huge-300k"][0];
    assert_eq!(d.reason, DeadLetterReason::InputTooLarge, "{}", d.detail);
    assert!(!d.replayable);
    assert!(d.detail.contains("refused by the broker"), "{}", d.detail);
    assert!(d.detail.contains("bytes at"), "{}", d.detail);
    assert!(
        d.original.to_bytes().len() <= 16 * 1024,
        "a bounded excerpt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_by_key_keeps_intake_order_through_escalations() {
    let mut profile = quiet_profile();
    profile.latency_scale = 0.05;
    let mut h = Harness::start(profile, 3).await;
    h.pipeline.ordering = switchyard::config::Ordering::Key;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h.run_pipeline().await;
    // 12 customers × 8 tickets; every third ticket escalates (a slower path) so that, without
    // ordering, later tickets of a customer would overtake it.
    let mut messages = Vec::new();
    let mut expected = std::collections::HashSet::new();
    for n in 0..8 {
        for c in 0..12 {
            let text = if n % 3 == 0 {
                "[sim:low_confidence@cheap] unsure"
            } else {
                "[sim:high_confidence] sure"
            };
            let j = job(&format!("ord-c{c:02}-n{n}"), text);
            expected.insert(j.job_id.clone());
            messages.push((format!("customer-{c:02}"), serde_json::to_vec(&j).unwrap()));
        }
    }
    switchyard::kafka::client::send_all(&h.kafka, &h.pipeline.topics.intake, &messages)
        .await
        .unwrap();

    let consumer = reader(&h.kafka, &[&h.pipeline.topics.results]).unwrap();
    let mut order: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    let mut seen = 0;
    let mut escalated = 0;
    read_until(&consumer, Duration::from_secs(30), |_, payload| {
        let r: switchyard::envelope::JobResult = serde_json::from_slice(payload).unwrap();
        let (customer, n) = r
            .job_id
            .trim_start_matches("ord-")
            .split_once("-n")
            .unwrap();
        order
            .entry(customer.to_string())
            .or_default()
            .push(n.parse().unwrap());
        if !r.escalations.is_empty() {
            escalated += 1;
            assert_eq!(r.stage, "resolve");
        }
        seen += 1;
        seen >= expected.len()
    })
    .await;
    h.stop_pipeline().await;
    assert_eq!(seen, 96);
    assert_eq!(escalated, 36, "the escalations ran (inline)");
    for (customer, ns) in &order {
        assert_eq!(
            ns,
            &(0..8).collect::<Vec<u32>>(),
            "{customer}'s results out of intake order"
        );
    }
}
