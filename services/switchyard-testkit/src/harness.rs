//! The one in-process pipeline harness: an embedded broker holding the pipeline's topics, the
//! pipeline's stages running in this process through the product's composition root
//! ([`switchyard::app::run`]), and the calls to send jobs in and read every result and dead
//! letter back. `switchyard demo`, `switchyard eval` (and `batch`, through eval) and the
//! end-to-end tests all run pipelines through it; none builds its own.
//!
//! It owns no policy: what the simulator does, which ledger store is used and how long to wait
//! are the caller's. Test conveniences that panic live in [`crate::fixtures`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use switchyard::app::{RunError, RunOptions, run};
use switchyard::config::Pipeline;
use switchyard::envelope::Intake;
use switchyard::intake::readiness::Readiness;
use switchyard::kafka::KafkaSettings;
use switchyard::kafka::client::{produce_jobs, read_until, reader};
use switchyard::ledger::LedgerStore;

use crate::broker::EmbeddedBroker;
use crate::tally::Tally;

/// A broker, (optionally) a simulator and a pipeline, ready to run in this process.
pub struct Harness {
    /// The embedded broker.
    pub broker: EmbeddedBroker,
    /// The simulator the pipeline's providers point at, when this harness owns one.
    pub sim: Option<llm_sim::SimServer>,
    /// Kafka settings pointing at the broker.
    pub kafka: KafkaSettings,
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Where the in-process ledger sink writes (none: no sink).
    pub ledger: Option<Arc<dyn LedgerStore>>,
    running: Option<Running>,
}

/// The stages running in this process.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("broker", &self.broker)
            .field("pipeline", &self.pipeline.name)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Starts an embedded broker with every topic of `pipeline` (`partitions` each).
    /// `kafka_options` are librdkafka settings for every client (`key=value`).
    pub fn new(
        pipeline: Pipeline,
        partitions: i32,
        kafka_options: &[String],
    ) -> anyhow::Result<Harness> {
        let broker = EmbeddedBroker::start()?;
        for t in pipeline.all_topics() {
            broker.create_topic(&t, partitions)?;
        }
        let kafka = KafkaSettings::new(broker.bootstrap())
            .with_options(kafka_options)
            .map_err(|e| anyhow!(e))?;
        Ok(Harness {
            broker,
            sim: None,
            kafka,
            pipeline,
            ledger: None,
            running: None,
        })
    }

    /// Points the pipeline's providers at `sim` and keeps it for the harness's lifetime.
    pub fn with_sim(mut self, sim: llm_sim::SimServer) -> Harness {
        self.pipeline.point_providers_at(&sim.base_url());
        self.sim = Some(sim);
        self
    }

    /// Uses `ledger` as the in-process ledger sink's store.
    pub fn with_ledger(mut self, ledger: Arc<dyn LedgerStore>) -> Harness {
        self.ledger = Some(ledger);
        self
    }

    /// Runs every stage in this process (consumer groups named after `group_prefix`) and waits
    /// up to `wait` until each owns partitions. Returns whether they all did.
    pub async fn start_stages(&mut self, group_prefix: &str, wait: Duration) -> bool {
        let shutdown = CancellationToken::new();
        let readiness = Arc::new(Readiness::default());
        let options = RunOptions {
            ops: None,
            kafka: self.kafka.clone(),
            stages: Vec::new(),
            group_prefix: group_prefix.to_string(),
            readiness: readiness.clone(),
            ledger: self.ledger.clone(),
            spend_seed: Vec::new(),
        };
        let task = tokio::spawn(run(
            Arc::new(self.pipeline.clone()),
            options,
            shutdown.clone(),
        ));
        self.running = Some(Running { shutdown, task });
        readiness.wait_for(&self.stage_names(), wait).await
    }

    /// The pipeline's stage names.
    pub fn stage_names(&self) -> Vec<String> {
        self.pipeline
            .stages
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Stops the stages gracefully (drain, commit) and returns how they ended.
    pub async fn stop_stages(&mut self) -> anyhow::Result<()> {
        let Some(Running { shutdown, task }) = self.running.take() else {
            return Ok(());
        };
        shutdown.cancel();
        task.await
            .context("the pipeline task failed")?
            .context("the pipeline stopped with an error")
    }

    /// Produces jobs to the intake topic (each keyed by its job id).
    pub async fn send_jobs(&self, jobs: &[Intake]) -> anyhow::Result<()> {
        produce_jobs(&self.kafka, &self.pipeline.topics.intake, jobs)
            .await
            .map(|_| ())
            .map_err(|e| anyhow!(e))
    }

    /// Reads the results and dead-letter topics from the start until every `expected` job has
    /// ended and `unnamed` dead letters without a job id have arrived, or until nothing new came
    /// for `idle`. `on_finished` is called with each expected job's id the first time it ends,
    /// and how many have ended so far.
    pub async fn read_back(
        &self,
        expected: &HashSet<String>,
        unnamed: usize,
        idle: Duration,
        on_finished: impl FnMut(&str, usize),
    ) -> anyhow::Result<Tally> {
        read_back(
            &self.kafka,
            &self.pipeline,
            expected,
            unnamed,
            idle,
            on_finished,
        )
        .await
    }
}

/// [`Harness::read_back`] against any broker holding `pipeline`'s topics (pipelines run by
/// separate processes, say).
pub async fn read_back(
    kafka: &KafkaSettings,
    pipeline: &Pipeline,
    expected: &HashSet<String>,
    unnamed: usize,
    idle: Duration,
    mut on_finished: impl FnMut(&str, usize),
) -> anyhow::Result<Tally> {
    let consumer = reader(kafka, &[&pipeline.topics.results, &pipeline.topics.dlq])?;
    let dlq = pipeline.topics.dlq.clone();
    let mut tally = Tally::default();
    let mut done = 0usize;
    read_until(&consumer, idle, |topic, payload| {
        if let Some(id) = tally.add(topic == dlq, payload)
            && expected.contains(&id)
        {
            done += 1;
            on_finished(&id, done);
        }
        done >= expected.len() && tally.dead_without_id.len() >= unnamed
    })
    .await;
    Ok(tally)
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Dropped with the stages still running (a test that failed, say): stop them, and keep
        // the broker alive (leaked) so their consumers can close instead of hanging on a
        // vanished broker.
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
            if let Ok(spare) = EmbeddedBroker::start() {
                std::mem::forget(std::mem::replace(&mut self.broker, spare));
            }
        }
    }
}
