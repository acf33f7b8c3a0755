//! End-to-end: a `switchyard run` process killed mid-stream and restarted loses no job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use switchyard::kafka::client::{read_until, reader};
use switchyard_testkit::Harness;
use switchyard_testkit::Tally;
use switchyard_testkit::fixtures::{copy_llm_pipelines, ids, job, spawn_run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_pipeline_finishes_every_job() {
    // Default fault rates stay on: some jobs fall back, some are repaired, a few dead-letter.
    let mut profile = llm_sim::Profile::default_profile().unwrap();
    profile.latency_scale = 0.2;
    let h = Harness::start(profile, 4).await;

    // A copy of the pipelines with a small in-flight cap, so the run lasts long enough to be
    // interrupted.
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let yaml = pipelines.join("support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = text
        .replace("max_in_flight: 512", "max_in_flight: 24")
        .replace(
            "max_in_flight_per_partition: 128",
            "max_in_flight_per_partition: 6",
        );
    std::fs::write(&yaml, text).unwrap();

    let jobs: Vec<_> = (0..600)
        .map(|i| {
            job(
                &format!("crash-{i:04}"),
                &format!("ticket number {i}: where is my card?"),
            )
        })
        .collect();
    let expected = ids(&jobs);
    h.produce(&jobs).await;

    let mut first = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    // Watch the outputs and kill the process once some, but not all, jobs are done.
    let consumer = reader(
        &h.kafka,
        &[&h.pipeline.topics.results, &h.pipeline.topics.dlq],
    )
    .unwrap();
    let dlq = h.pipeline.topics.dlq.clone();
    let mut seen = Tally::default();
    let started = Instant::now();
    read_until(&consumer, Duration::from_secs(60), |topic, payload| {
        seen.add(topic == dlq, payload);
        seen.finished_count(&expected) >= 100
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let done_at_kill = seen.finished_count(&expected);
    assert!(
        done_at_kill >= 100,
        "only {done_at_kill} jobs finished in {:?}",
        started.elapsed()
    );
    assert!(
        done_at_kill < jobs.len(),
        "the kill must land mid-stream (all {done_at_kill} were done)"
    );

    let mut second = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    let tally = h.collect(&expected, 0, Duration::from_secs(60)).await;
    second.kill().unwrap();
    second.wait().unwrap();

    let summary = tally.summary("support-triage", &expected, started.elapsed());
    assert_eq!(summary.lost, 0, "jobs lost after a crash: {summary:?}");
    assert_eq!(summary.results + summary.dead_lettered, jobs.len());
    // Duplicates come only from jobs whose offsets were not yet committed at the kill (in flight,
    // or finished within the last auto-commit interval); they are counted, not hidden.
    eprintln!(
        "killed after {done_at_kill} jobs; restarted; {} results, {} dead letters, {} duplicates",
        summary.results, summary.dead_lettered, summary.duplicates
    );
}

/// Offsets that remember completed jobs: one job holds its partition's watermark (its provider
/// hangs) while 60 later jobs finish; the process is SIGKILLed and restarted. The commit's
/// metadata recorded the 60 as finished past the watermark, so the next run skips them: only
/// the job that was in flight is redone, not the 60 behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_redoes_only_what_was_in_flight_not_what_finished_past_the_watermark() {
    let mut profile = switchyard_testkit::fixtures::quiet_profile();
    profile.timeout_hang = Duration::from_secs(4);
    let h = Harness::start(profile, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(dir.path());
    let mut jobs = vec![job("holds-the-watermark", "[sim:timeout] my card is late")];
    jobs.extend((0..60).map(|i| {
        job(
            &format!("past-{i:02}"),
            "[sim:high_confidence] where is my card",
        )
    }));
    let expected = ids(&jobs);
    let past: std::collections::HashSet<String> = expected
        .iter()
        .filter(|id| id.starts_with("past-"))
        .cloned()
        .collect();
    h.produce(&jobs).await;

    let mut first = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    let seen = h.collect(&past, 0, Duration::from_secs(60)).await;
    assert_eq!(seen.finished_count(&past), past.len());
    assert!(
        !seen.finished("holds-the-watermark"),
        "it should still hang"
    );
    // Let a periodic commit (every 250 ms) record them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let calls_before = h.sim().sim.stats().requests;

    let mut second = spawn_run(&pipelines, h.broker.bootstrap(), &h.sim().base_url());
    let tally = h.collect(&expected, 0, Duration::from_secs(90)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(tally.finished_count(&expected), expected.len());
    assert_eq!(
        tally.duplicates(),
        0,
        "jobs finished past the watermark were redone after the restart"
    );
    // The second run called the providers only for the job that was in flight.
    let past_calls: u64 = h.sim().sim.stats().requests - calls_before;
    assert!(past_calls <= 6, "{past_calls} calls after the restart");
}
