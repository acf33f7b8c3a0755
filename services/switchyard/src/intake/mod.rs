//! The consuming side of a stage: one consumer group per stage reads the stage's input topic,
//! runs many jobs at once (partitions concurrently, several jobs per partition), publishes each
//! job's single output, and only then lets its offset move.
//!
//! Guarantees kept here: auto offset store is off; an offset is stored only when it and every
//! earlier offset of its partition have an acknowledged output ([`watermark`]); partitions pause
//! when their in-flight cap is reached; at the stage's cap no further message is taken (the
//! backlog waits in librdkafka's bounded prefetch queue) and, after a few seconds there, every
//! partition pauses so that polling (and group membership) continues; on a revoke, in-flight work of the revoked partitions gets a bounded
//! time to finish, then the final offsets are committed synchronously; on shutdown, fetching
//! stops, in-flight jobs finish (up to a deadline) and offsets are committed before exit.

pub mod decode;
pub mod readiness;
pub mod watermark;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Pipeline;
use crate::envelope::{EscalationReason, Schemas, Source};
use crate::kafka::KafkaSettings;
use crate::output::compose::{Composed, Composer, Decision, Input};
use crate::output::{PublishError, Publisher};
use crate::stage::{Outcome, StageRunner};
use crate::telemetry::Telemetry;
use decode::{Decoder, Job};
use readiness::Readiness;
use watermark::{Caps, Ticket, Watermarks};

/// What one stage worker shares with its job tasks.
#[derive(Debug)]
pub struct StageShared {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The stage to run.
    pub runner: StageRunner,
    /// Envelope schemas.
    pub schemas: Arc<Schemas>,
    /// The producer.
    pub output: Arc<dyn Publisher>,
    /// With `ordering: key`, the first stage runs the later stages inline: their runners.
    pub inline: Vec<StageRunner>,
    /// Where telemetry events go.
    pub telemetry: Telemetry,
}

impl StageShared {
    /// The composer of this stage's envelopes.
    pub fn composer(&self) -> Composer<'_> {
        Composer {
            pipeline: &self.pipeline,
            stage: &self.runner.stage.name,
            schemas: &self.schemas,
        }
    }
}

/// An error that stops a stage worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The consumer could not be created or subscribed.
    #[error(
        "stage `{stage}`: cannot consume {topic}: {}",
        crate::kafka::error_text(source)
    )]
    Consumer {
        /// Stage.
        stage: String,
        /// Topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
    /// Another part of the worker could not start.
    #[error("{0}")]
    Setup(String),
}

/// A partition of one of the stage's input topics (the topic by its index in [`StageTopics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Part {
    topic: u16,
    partition: i32,
}

/// The topics a stage reads, with the tenant each is bound to (`tenant_from: topic`).
#[derive(Debug)]
struct StageTopics {
    topics: Vec<crate::config::IntakeTopic>,
}

impl StageTopics {
    fn part(&self, topic: &str, partition: i32) -> Option<Part> {
        let i = self.topics.iter().position(|t| t.topic == topic)?;
        Some(Part {
            topic: u16::try_from(i).ok()?,
            partition,
        })
    }

    fn name(&self, p: Part) -> &str {
        self.topics
            .get(usize::from(p.topic))
            .map_or("", |t| t.topic.as_str())
    }

    fn parts_of(&self, list: &TopicPartitionList) -> Vec<Part> {
        list.elements()
            .iter()
            .filter_map(|e| self.part(e.topic(), e.partition()))
            .collect()
    }

    fn list(&self, parts: &[Part]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition(self.name(*p), p.partition);
        }
        tpl
    }

    fn names(&self) -> Vec<&str> {
        self.topics.iter().map(|t| t.topic.as_str()).collect()
    }

    /// Who says which tenant a message on `p` belongs to.
    fn tenant_origin(
        &self,
        p: Part,
        binding: &crate::config::TenantBinding,
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> decode::TenantOrigin {
        use crate::config::TenantBinding;
        use rdkafka::message::Headers;
        if let Some(tenant) = self
            .topics
            .get(usize::from(p.topic))
            .and_then(|t| t.tenant.clone())
        {
            return decode::TenantOrigin::Bound {
                tenant,
                by: format!("its intake topic `{}`", self.name(p)),
            };
        }
        let TenantBinding::Header(name) = binding else {
            return decode::TenantOrigin::Payload;
        };
        let value = headers.and_then(|h| {
            h.iter()
                .filter(|h| h.key == name.as_str())
                .last()
                .and_then(|h| h.value)
        });
        match value.map(std::str::from_utf8) {
            Some(Ok(t)) => decode::TenantOrigin::Bound {
                tenant: t.to_string(),
                by: format!("its `{name}` header"),
            },
            Some(Err(_)) => decode::TenantOrigin::Unbound {
                why: format!(
                    "the `{name}` header is not UTF-8; this pipeline takes the tenant from that header (tenant_from: header), which the authenticated bridge sets"
                ),
            },
            None => decode::TenantOrigin::Unbound {
                why: format!(
                    "the message has no `{name}` header; this pipeline takes the tenant from that header (tenant_from: header), which the authenticated bridge that produces to the intake topic sets"
                ),
            },
        }
    }
}

type Tracker = Arc<Mutex<Watermarks<Part>>>;

fn lock(t: &Tracker) -> MutexGuard<'_, Watermarks<Part>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's context: keeps the watermarks in step with rebalances.
struct StageContext {
    tracker: Tracker,
    topics: Arc<StageTopics>,
    pipeline: String,
    stage: String,
    rebalance_timeout: Duration,
    readiness: Arc<Readiness>,
    telemetry: Telemetry,
    /// Per assigned partition: cancelled when it is revoked, so jobs left running past the
    /// drain stop instead of publishing what the next owner will publish again.
    partition_tokens: PartitionTokens,
    /// Parent of every partition token (cancelled at the shutdown deadline).
    abandon: CancellationToken,
    /// librdkafka's repeated complaints (a broker outage) collapsed to one line per kind and
    /// interval, with a count.
    repeats: Arc<crate::kafka::Repeats>,
    /// Held while committing (see [`CommitLock`]).
    commits: CommitLock,
}

type PartitionTokens = Arc<Mutex<HashMap<Part, CancellationToken>>>;

impl ClientContext for StageContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for (id, part) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *id >= 0 && part.consumer_lag >= 0 {
                    crate::telemetry::ConsumerLag {
                        pipeline: &self.pipeline,
                        stage: &self.stage,
                        partition: *id,
                        lag: part.consumer_lag,
                    }
                    .emit(&self.telemetry);
                }
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let loud = matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        );
        let held_back = if loud {
            match self.repeats.admit(&format!("{fac} {message}")) {
                Some(n) => n,
                None => return,
            }
        } else {
            0
        };
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", stage = %self.stage, fac, held_back, "{message}")
            }
            L::Warning => {
                tracing::warn!(target: "librdkafka", stage = %self.stage, fac, held_back, "{message}")
            }
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", stage = %self.stage, fac, "{message}")
            }
            L::Debug => {
                tracing::debug!(target: "librdkafka", stage = %self.stage, fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(held_back) = self.repeats.admit(&format!("{error} {reason}")) {
            tracing::warn!(stage = %self.stage, error = %error, held_back, "Kafka client error: {reason}");
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = self.topics.parts_of(list);
        // Give in-flight jobs of the revoked partitions a bounded time to finish, so their
        // offsets can be committed now instead of the jobs being redone by the next owner.
        let wait = || {
            let deadline = Instant::now() + self.rebalance_timeout;
            loop {
                let busy: usize = {
                    let t = lock(&self.tracker);
                    partitions.iter().map(|p| t.in_flight_in(*p)).sum()
                };
                if busy == 0 || Instant::now() >= deadline {
                    if busy > 0 {
                        tracing::warn!(stage = %self.stage, jobs = busy, "rebalance: handing back unfinished jobs; they will be redelivered");
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // The callback runs on a runtime worker (inside `recv`); tell the runtime it blocks, so
        // the jobs being waited for keep their threads.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
        // The final commit of each revoked partition: its watermark and, in the metadata, the
        // offsets finished past it, so the next owner redoes only what was not finished. No
        // periodic commit runs meanwhile (or lands after it).
        {
            let _one_at_a_time = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            let tpl = {
                let mut t = lock(&self.tracker);
                let tpl = commit_points(&t, &self.topics, &partitions);
                for p in &partitions {
                    t.revoke(*p);
                }
                tpl
            };
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(stage = %self.stage, error = %e, "rebalance: committing final offsets failed; their jobs may be redone");
            }
        }
        {
            let mut tokens = self
                .partition_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for p in &partitions {
                if let Some(t) = tokens.remove(p) {
                    t.cancel();
                }
            }
        }
        let (left, resumable) = {
            let mut t = lock(&self.tracker);
            (t.partitions().len(), t.resumable())
        };
        if !resumable.is_empty() {
            let _ = consumer.resume(&self.topics.list(&resumable));
        }
        self.readiness.set_assigned(&self.stage, left);
        tracing::info!(stage = %self.stage, ?partitions, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.topics.parts_of(list);
                // What the last owners finished past their committed offsets (the commits'
                // metadata): those messages are skipped, not redone.
                let mut resumes: HashMap<Part, watermark::Resume> = HashMap::new();
                match consumer.committed_offsets((*list).clone(), Duration::from_secs(10)) {
                    Ok(committed) => {
                        for e in committed.elements() {
                            if let (Some(part), Offset::Offset(at)) =
                                (self.topics.part(e.topic(), e.partition()), e.offset())
                                && let Some(r) = watermark::Resume::decode(at, e.metadata())
                            {
                                resumes.insert(part, r);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(stage = %self.stage, error = %e, "cannot read the committed offsets' metadata; jobs finished past them by the last owner will be redone")
                    }
                }
                let owned = {
                    let mut t = lock(&self.tracker);
                    for p in &partitions {
                        t.assign_resuming(*p, resumes.remove(p));
                    }
                    t.partitions().len()
                };
                {
                    let mut tokens = self
                        .partition_tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    for p in &partitions {
                        if let Some(old) = tokens.insert(*p, self.abandon.child_token()) {
                            old.cancel();
                        }
                    }
                }
                let names = self.topics.names();
                let md = if let [one] = names[..] {
                    consumer.fetch_metadata(Some(one), Duration::from_secs(2))
                } else {
                    consumer.fetch_metadata(None, Duration::from_secs(2))
                };
                if let Ok(md) = md {
                    let total = md
                        .topics()
                        .iter()
                        .filter(|t| names.contains(&t.name()))
                        .map(|t| t.partitions().len())
                        .sum();
                    self.readiness.set_total(&self.stage, total);
                }
                // librdkafka keeps an application's pause across unassign and assign: a partition
                // paused before the rebalance would stay paused for good. Start it afresh.
                if let Err(e) = consumer.resume(list) {
                    tracing::debug!(stage = %self.stage, error = %e, "resume after assign failed");
                }
                self.readiness.set_assigned(&self.stage, owned);
                tracing::info!(stage = %self.stage, ?partitions, "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(stage = %self.stage, error = %e, "rebalance error")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

type StageConsumer = StreamConsumer<StageContext>;

/// A message taken off the topic, owned so a job task can keep it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Where it came from.
    pub source: Source,
    /// The raw value (empty for a null value).
    pub payload: Vec<u8>,
    /// Who says which tenant the job belongs to.
    pub tenant: decode::TenantOrigin,
}

/// Consumes the stage's input topic until `shutdown`, then drains and commits.
pub async fn run_stage(
    shared: Arc<StageShared>,
    kafka: &KafkaSettings,
    group: &str,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let stage = shared.runner.stage.name.clone();
    let topics = Arc::new(StageTopics {
        topics: shared.pipeline.stage_topics(shared.runner.stage.index),
    });
    let topic = topics.names().join(", ");
    let conc = &shared.pipeline.concurrency;
    // The stage's cap is kept by not taking the next message while it is reached (below), so
    // librdkafka's bounded prefetch queue holds the backlog; pausing every partition at the cap
    // would drop that prefetch and re-fetch it each time a job finishes. Partitions still pause
    // at their own cap.
    let stage_cap = conc.max_in_flight.max(1);
    // Held input bytes are capped too: 512 jobs of 2 MB each would be a gigabyte.
    let byte_cap = conc.max_in_flight_mib.max(1).saturating_mul(1 << 20);
    let held_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tracker: Tracker = Arc::new(Mutex::new(Watermarks::new(Caps {
        total: usize::MAX,
        per_partition: conc.max_in_flight_per_partition,
    })));
    // Jobs keep running (and publishing) for a while after shutdown is asked for; they stop
    // when `abandon` fires at the drain deadline, or when their partition is revoked.
    let abandon = CancellationToken::new();
    let partition_tokens: PartitionTokens = Arc::default();
    let repeats = Arc::new(crate::kafka::Repeats::new(Duration::from_secs(10)));
    let commits: CommitLock = Arc::default();
    let context = StageContext {
        partition_tokens: partition_tokens.clone(),
        abandon: abandon.clone(),
        tracker: tracker.clone(),
        topics: topics.clone(),
        repeats: repeats.clone(),
        commits: commits.clone(),
        pipeline: shared.pipeline.name.clone(),
        stage: stage.to_string(),
        rebalance_timeout: conc.rebalance_timeout,
        readiness,
        telemetry: shared.telemetry.clone(),
    };
    let consumer_error = |source| WorkerError::Consumer {
        stage: stage.to_string(),
        topic: topic.clone(),
        source,
    };
    let consumer: Arc<StageConsumer> = Arc::new(
        kafka
            .consumer(group)
            .create_with_context(context)
            .map_err(consumer_error)?,
    );
    consumer
        .subscribe(&topics.names())
        .map_err(consumer_error)?;
    tracing::info!(stage = %stage, topic = %topic, group, "stage consuming");
    let committer_stop = CancellationToken::new();
    let committer = tokio::spawn(commit_periodically(
        consumer.clone(),
        tracker.clone(),
        topics.clone(),
        commits.clone(),
        committer_stop.clone(),
    ));

    let mut tasks = tokio::task::JoinSet::new();
    let ordered =
        shared.pipeline.ordering == crate::config::Ordering::Key && shared.runner.stage.index == 0;
    let mut chains: HashMap<String, futures::future::Shared<tokio::sync::oneshot::Receiver<()>>> =
        HashMap::new();
    // Since when the stage has been at its cap.
    let mut full_since: Option<Instant> = None;
    loop {
        let (full, held) = {
            let mut t = lock(&tracker);
            crate::telemetry::InFlight {
                pipeline: &shared.pipeline.name,
                stage: &stage,
                jobs: t.in_flight(),
            }
            .emit(&shared.telemetry);
            let full = t.in_flight() >= stage_cap
                || held_bytes.load(std::sync::atomic::Ordering::Relaxed) >= byte_cap;
            if !full {
                full_since = None;
            }
            let since = *full_since.get_or_insert_with(Instant::now);
            // At the cap for long (every job slow or waiting for capacity): pause every
            // partition and poll again, so rebalances are served and the member stays in its
            // group; partitions resume at the low mark.
            if full && !t.is_held() && since.elapsed() >= STAGE_HOLD_AFTER {
                let pause = t.hold(stage_cap);
                set_paused(&consumer, &topics, &pause, true);
            }
            (full, t.is_held())
        };
        let take = !full || held;
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            m = consumer.recv(), if take => m,
            _ = tokio::time::sleep(Duration::from_millis(100)), if !take => continue,
        };
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                if let Some(held_back) = repeats.admit(&format!("consume {e}")) {
                    tracing::warn!(stage = %stage, error = %e, held_back, "consume error; continuing");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(part) = topics.part(m.topic(), m.partition()) else {
            continue;
        };
        let received = Received {
            source: Source {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().and_then(crate::envelope::usable_key),
            },
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            tenant: topics.tenant_origin(part, &shared.pipeline.tenant_binding, m.headers()),
        };
        drop(m);
        let ticket = {
            let mut t = lock(&tracker);
            if t.already_finished(part, received.source.offset) {
                // Finished by the partition's last owner (its commit's metadata says so).
                continue;
            }
            let Some((ticket, pause)) = t.start(part, received.source.offset) else {
                continue;
            };
            if !pause.is_empty() {
                set_paused(&consumer, &topics, &pause, true);
            }
            ticket
        };
        // `ordering: key`: each job of a key waits for the one before it.
        let (after, done) = match (&received.source.key, ordered) {
            (Some(k), true) => {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let prev = chains.insert(k.clone(), rx.shared());
                if chains.len() > 4096 {
                    chains.retain(|_, f| f.peek().is_none());
                }
                (prev, Some(tx))
            }
            _ => (None, None),
        };
        let job = JobTask {
            _bytes: HeldBytes::new(&held_bytes, received.payload.len()),
            after,
            done,
            shared: shared.clone(),
            consumer: consumer.clone(),
            tracker: tracker.clone(),
            topics: topics.clone(),
            abandon: partition_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&ticket.partition)
                .cloned()
                .unwrap_or_else(|| abandon.child_token()),
            fatal: shutdown.clone(),
        };
        tasks.spawn(job.run(ticket, received));
    }

    // Shutdown: no more fetching; let in-flight jobs finish up to the deadline.
    let deadline = Instant::now() + conc.shutdown_timeout;
    let mut last = usize::MAX;
    loop {
        let busy = lock(&tracker).in_flight();
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(stage = %stage, jobs = busy, "shutdown deadline reached; unfinished jobs will be redelivered");
            break;
        }
        if busy != last {
            tracing::info!(stage = %stage, jobs = busy, "shutdown: waiting for in-flight jobs");
            last = busy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    abandon.cancel();
    committer_stop.cancel();
    let _ = committer.await;
    commit_final(&consumer, &tracker, &topics, &stage);
    // Unfinished jobs are handed back: forget them, stop them, and close the consumer now (its
    // final revoke then has nothing to wait for).
    lock(&tracker).clear();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(consumer);
    Ok(())
}

/// How long a stage may sit at its in-flight cap without polling its consumer before it pauses
/// every partition and polls again.
const STAGE_HOLD_AFTER: Duration = Duration::from_secs(5);

fn commit_final(consumer: &StageConsumer, tracker: &Tracker, topics: &StageTopics, stage: &str) {
    let tpl = {
        let t = lock(tracker);
        commit_points(&t, topics, &t.partitions())
    };
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::info!(stage, "final offsets committed"),
        Err(e) => {
            tracing::warn!(stage, error = %e, "final commit failed; jobs finished since the last commit may be redone")
        }
    }
}

/// The commit of `parts`: each one's watermark + 1 and, as metadata, the offsets finished past
/// it (see [`watermark::Resume`]).
fn commit_points(t: &Watermarks<Part>, topics: &StageTopics, parts: &[Part]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        if let Some((next, metadata)) = t.commit_point(*p) {
            let mut e = tpl.add_partition(topics.name(*p), p.partition);
            if e.set_offset(Offset::Offset(next)).is_ok() {
                e.set_metadata(metadata);
            }
        }
    }
    tpl
}

/// How often a stage commits what finished since (its watermarks and the offsets finished
/// past them): what a crash can make it redo, beyond the jobs in flight.
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);

/// Commits, every [`COMMIT_INTERVAL`] until `stop`, each partition whose commit point moved.
/// Commits are synchronous (on a blocking thread), so a refused one (a rebalance under way, a
/// broker away) is known and tried again at the next tick rather than assumed done.
async fn commit_periodically(
    consumer: Arc<StageConsumer>,
    tracker: Tracker,
    topics: Arc<StageTopics>,
    commits: CommitLock,
    stop: CancellationToken,
) {
    let mut last: HashMap<Part, (i64, String)> = HashMap::new();
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (c, tr, tp, cl) = (
            consumer.clone(),
            tracker.clone(),
            topics.clone(),
            commits.clone(),
        );
        let known = last.clone();
        // Read and commit under the commit lock, which a revoke also holds for its final
        // commit: a periodic commit read before a revoke can never land after it (it would
        // set the partition back for its next owner).
        let committed = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = cl.lock().unwrap_or_else(|p| p.into_inner());
            let (tpl, points) = {
                let t = lock(&tr);
                let mut changed = Vec::new();
                let mut points = Vec::new();
                for p in t.partitions() {
                    if let Some(point) = t.commit_point(p)
                        && known.get(&p) != Some(&point)
                    {
                        points.push((p, point));
                        changed.push(p);
                    }
                }
                (commit_points(&t, &tp, &changed), points)
            };
            if tpl.count() == 0 {
                return Ok(points);
            }
            c.commit(&tpl, CommitMode::Sync).map(|()| points)
        })
        .await;
        match committed {
            Ok(Ok(points)) => {
                last.extend(points);
                let t = lock(&tracker);
                let parts = t.partitions();
                last.retain(|p, _| parts.contains(p));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "periodic commit refused (a rebalance under way?); retrying at the next tick")
            }
            Err(e) => tracing::debug!(error = %e, "periodic commit did not run"),
        }
    }
}

/// Held while committing: periodic commits, a revoke's final commit and the shutdown commit
/// never interleave.
type CommitLock = Arc<Mutex<()>>;

fn set_paused(consumer: &StageConsumer, topics: &StageTopics, partitions: &[Part], pause: bool) {
    let tpl = topics.list(partitions);
    let r = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, ?partitions, pause, "pause/resume failed (partition no longer assigned?)");
    }
}

/// Input bytes a job holds while in flight; released when its task ends, however it ends.
struct HeldBytes(Arc<std::sync::atomic::AtomicUsize>, usize);

impl HeldBytes {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>, n: usize) -> Self {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Self(counter.clone(), n)
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.0
            .fetch_sub(self.1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct JobTask {
    _bytes: HeldBytes,
    /// With ordering: the completion of the previous job of the same key.
    after: Option<futures::future::Shared<tokio::sync::oneshot::Receiver<()>>>,
    /// With ordering: completes (by drop) when this job is done, releasing the next.
    done: Option<tokio::sync::oneshot::Sender<()>>,
    shared: Arc<StageShared>,
    consumer: Arc<StageConsumer>,
    tracker: Tracker,
    topics: Arc<StageTopics>,
    abandon: CancellationToken,
    fatal: CancellationToken,
}

impl JobTask {
    async fn run(mut self, ticket: Ticket<Part>, received: Received) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
        let started = Instant::now();
        // A job whose task panics (a bug, or input nothing foresaw) ends as a dead letter: its
        // slot is freed and its offset moves like any other job's, instead of the partition
        // waiting for it forever and the job being redone after every restart.
        let guarded = std::panic::AssertUnwindSafe(process(&self.shared, &received)).catch_unwind();
        let Composed { envelopes, end } = tokio::select! {
            c = guarded => c.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(topic = %received.source.topic, partition = received.source.partition, offset = received.source.offset, panic = %what, "a job's task panicked; dead-lettering it as internal_error");
                let stage = &self.shared.runner.stage;
                let decoded = decode::Decoder {
                    pipeline: &self.shared.pipeline.name,
                    stage: &stage.name,
                    first: stage.index == 0,
                    schemas: &self.shared.schemas,
                }
                .decode_from(&received.payload, &received.tenant)
                .ok();
                self.shared.composer().internal_error(
                    Input {
                        source: &received.source,
                        payload: &received.payload,
                    },
                    decoded.as_ref().map(|j| &j.intake),
                    decoded.as_ref().map(|j| j.history.clone()).unwrap_or_default(),
                    &what,
                )
            }),
            // Revoked (after the drain) or shut down: hand the job back.
            _ = self.abandon.cancelled() => return,
        };
        // Output and ledger records go out together; the offset moves only when all are acked.
        let sends = envelopes
            .iter()
            .map(|env| self.shared.output.publish(env, &self.abandon));
        let results = futures::future::join_all(sends).await;
        for (env, result) in envelopes.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(PublishError::ShuttingDown { .. }) => return,
                Err(e @ PublishError::Refused { .. })
                    if env.topic == self.shared.pipeline.topics.ledger =>
                {
                    tracing::error!(error = %e, job_id = ?env.headers.first(), "the broker refused a ledger record; the job's output was published, this attempt is missing from the ledger");
                }
                Err(e @ PublishError::Refused { .. }) if env.is_audit_copy() => {
                    // The job's result went out; only its audit is lost.
                    tracing::warn!(error = %e, job_id = ?env.headers.first(), "the broker refused an audit copy; the job's result was published, it goes unaudited");
                }
                Err(e @ PublishError::Refused { .. }) => {
                    // The broker will never take this output: dead-letter the job instead.
                    let input = Input {
                        source: &received.source,
                        payload: &received.payload,
                    };
                    let dl = self.shared.composer().refused(input, &e.to_string(), env);
                    let first = self.shared.output.publish(&dl, &self.abandon).await;
                    if matches!(first, Err(PublishError::ShuttingDown { .. })) {
                        // Revoked or shutting down, not refused: the next owner redoes it.
                        return;
                    }
                    let published = first.is_ok() || {
                        // Even that was too much: position, reason and a few bytes.
                        let minimal =
                            self.shared
                                .composer()
                                .minimal_dead_letter(input, &e.to_string(), env);
                        self.shared
                            .output
                            .publish(&minimal, &self.abandon)
                            .await
                            .is_ok()
                    };
                    if !published {
                        // Nowhere to put the job: stop loudly rather than move past it.
                        tracing::error!(
                            error = %e,
                            topic = %received.source.topic,
                            partition = received.source.partition,
                            offset = received.source.offset,
                            "the broker refused both the output and the dead letter; stopping this worker so the job is not skipped. Check the dead-letter topic's max message size"
                        );
                        self.fatal.cancel();
                        return;
                    }
                }
            }
        }
        crate::telemetry::JobFinished {
            pipeline: &self.shared.pipeline.name,
            stage: &self.shared.runner.stage.name,
            outcome: end,
            duration: started.elapsed(),
        }
        .emit(&self.shared.telemetry);
        // The committer (every COMMIT_INTERVAL) commits what this finish moved.
        let mut t = lock(&self.tracker);
        let actions = t.finish(ticket);
        if !actions.resume.is_empty() {
            set_paused(&self.consumer, &self.topics, &actions.resume, false);
        }
        drop(t);
        // Release the next job of this key (also released when the task ends any other way).
        drop(self.done.take());
    }
}

/// Turns one input message into the envelopes to publish and how the job left. Never fails:
/// anything that cannot be done becomes a dead letter with the reason.
pub async fn process(shared: &StageShared, received: &Received) -> Composed {
    let stage = &shared.runner.stage;
    let composer = shared.composer();
    let input = Input {
        source: &received.source,
        payload: &received.payload,
    };
    let decoder = Decoder {
        pipeline: &shared.pipeline.name,
        stage: &stage.name,
        first: stage.index == 0,
        schemas: &shared.schemas,
    };
    let Job {
        intake: job,
        mut history,
        prior,
    } = match decoder.decode_from(&received.payload, &received.tenant) {
        Ok(j) => j,
        Err(e) => return composer.undecodable(input, &e.to_string()),
    };
    let span = tracing::info_span!("job", job_id = %job.job_id, tenant = %job.tenant, pipeline = %shared.pipeline.name, stage = %stage.name);
    if let Some(audit) = history
        .last()
        .filter(|s| s.reason == EscalationReason::Audit)
        .cloned()
    {
        // An audit copy: re-do the job, compare, record; the job's result is already out. The
        // prompt sees the audit step (reason `audit`) but not the audited answer, so the
        // re-do is independent of it.
        if let Some(last) = history.last_mut() {
            last.output = serde_json::Value::Null;
            last.confidence = None;
        }
        let mut run = shared.runner.run(&job, &history).instrument(span).await;
        let attempts = std::mem::take(&mut run.attempts);
        crate::telemetry::TenantSpent {
            tenant: &job.tenant,
            cost: attempts.iter().map(|a| a.cost_micro_usd).sum(),
        }
        .emit(&shared.telemetry);
        let records = audit_records(shared, &job, &audit, &run.outcome);
        return composer.audited(input, &job, attempts, records);
    }
    let mut run = shared
        .runner
        .run(&job, &history)
        .instrument(span.clone())
        .await;
    let mut this_stage = std::mem::take(&mut run.attempts);
    // Ordered pipelines escalate inline, so a job's result is out before the next job of its
    // key starts.
    let mut decided_by = stage.name.as_str();
    for next in &shared.inline {
        let Outcome::Escalate(step) = &run.outcome else {
            break;
        };
        history.push(step.clone());
        run = next.run(&job, &history).instrument(span.clone()).await;
        this_stage.append(&mut run.attempts);
        decided_by = &next.stage.name;
    }
    crate::telemetry::TenantSpent {
        tenant: &job.tenant,
        cost: this_stage.iter().map(|a| a.cost_micro_usd).sum(),
    }
    .emit(&shared.telemetry);
    composer.outcome(
        input,
        &job,
        Decision {
            stage: decided_by,
            outcome: run.outcome,
            history,
            prior,
            this_stage,
        },
    )
}

/// The ledger records of an audit: the comparison, and the threshold move it caused, if any.
fn audit_records(
    shared: &StageShared,
    job: &crate::envelope::Intake,
    audit: &crate::envelope::EscalationStep,
    outcome: &Outcome,
) -> Vec<crate::ledger::LedgerRecord> {
    use crate::ledger::{LedgerAudit, LedgerRecord, LedgerThresholdMove};
    use serde_json::Value;
    let Some(audited) = shared
        .pipeline
        .stages
        .iter()
        .find(|s| s.name == audit.from_stage)
    else {
        tracing::warn!(stage = %audit.from_stage, "audit copy from a stage this pipeline does not have; nothing recorded");
        return Vec::new();
    };
    let field = audited.gate.decision_field().unwrap_or("");
    let decision_of = |v: &Value| {
        crate::gate::lookup(v, field)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let decision = decision_of(&audit.output);
    let auditor_decision = match outcome {
        Outcome::Accept { output, .. } => decision_of(output),
        Outcome::Escalate(step) => decision_of(&step.output),
        Outcome::DeadLetter { .. } => Value::Null,
    };
    let agreed =
        (!decision.is_null() && !auditor_decision.is_null()).then(|| decision == auditor_decision);
    let at = crate::envelope::now();
    let mut records = vec![LedgerRecord::Audit(LedgerAudit {
        job_id: job.job_id.clone(),
        tenant: job.tenant.clone(),
        pipeline: shared.pipeline.name.clone(),
        stage: audited.name.clone(),
        auditor: shared.runner.stage.name.clone(),
        decision,
        auditor_decision,
        agreed,
        confidence: audit.confidence,
        at,
    })];
    crate::telemetry::Audited {
        pipeline: &shared.pipeline.name,
        stage: &audited.name,
        agreed,
    }
    .emit(&shared.telemetry);
    let moved = agreed.and_then(|agreed| {
        shared
            .runner
            .audits()
            .record(&audited.name, &audited.gate, audit.confidence, agreed)
    });
    if let Some(m) = moved {
        tracing::info!(
            stage = %m.stage, from = m.from, to = m.to, target = m.target, audits = m.audits,
            agreed = m.agreed, lower = m.lower, upper = m.upper,
            "gate threshold moved by audits"
        );
        records.push(LedgerRecord::ThresholdMove(LedgerThresholdMove {
            pipeline: shared.pipeline.name.clone(),
            change: m,
            at,
        }));
    }
    records
}

#[cfg(test)]
mod tests {
    //! The data path without a broker: a message decoded, run through the stage (a scripted
    //! fake provider) and composed into the envelopes a worker would publish.

    use super::*;
    use crate::envelope::{AttemptClass, DeadLetter, DeadLetterReason, JobEnd, JobResult};
    use crate::ledger::{JobOutcome, LedgerRecord};
    use crate::output::MemoryPublisher;
    use crate::stage::testing::{failure, fixture};

    /// The shipped triage stage behind the fake provider, and the fake's script and log.
    struct Rig {
        script: crate::stage::testing::Script,
        seen: Arc<Mutex<Vec<crate::stage::testing::Seen>>>,
        models: Vec<String>,
    }

    fn shared() -> (StageShared, Rig) {
        let crate::stage::testing::Fixture {
            pipeline,
            runner,
            script,
            seen,
            contexts,
        } = fixture(false);
        let rig = Rig {
            script,
            seen,
            models: contexts.into_keys().collect(),
        };
        let shared = StageShared {
            pipeline: Arc::new(pipeline),
            runner,
            schemas: Arc::new(Schemas::load().unwrap()),
            output: Arc::new(MemoryPublisher::default()),
            inline: Vec::new(),
            telemetry: Telemetry::default(),
        };
        (shared, rig)
    }

    fn received(payload: &[u8]) -> Received {
        Received {
            source: Source {
                topic: "support-triage.intake".into(),
                partition: 3,
                offset: 41,
                key: Some("k-1".into()),
            },
            payload: payload.to_vec(),
            tenant: decode::TenantOrigin::Payload,
        }
    }

    const JOB: &str = r#"{"job_id": "job-9", "tenant": "acme", "pipeline": "support-triage",
        "payload": {"text": "my card has not arrived", "channel": "email"},
        "created_at": "2026-12-07T00:00:00Z"}"#;

    fn ledger(c: &Composed) -> Vec<LedgerRecord> {
        c.envelopes
            .iter()
            .filter(|e| e.topic.ends_with(".ledger"))
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_good_job_becomes_one_result_and_its_ledger_records() {
        let (shared, _f) = shared();
        let c = process(&shared, &received(JOB.as_bytes())).await;
        assert_eq!(c.end, JobEnd::Result);
        let results: Vec<_> = c
            .envelopes
            .iter()
            .filter(|e| e.topic == shared.pipeline.topics.results)
            .collect();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].key, "k-1", "keyed by the intake message's key");
        let r: JobResult = serde_json::from_slice(&results[0].payload).unwrap();
        assert_eq!(r.job_id, "job-9");
        assert_eq!(r.attempts.len(), 1);
        let records = ledger(&c);
        assert!(
            matches!(&records[0], LedgerRecord::Attempt(a) if a.attempt.class == AttemptClass::Ok)
        );
        assert!(
            matches!(&records[1], LedgerRecord::Job(j) if j.outcome == JobOutcome::Result && j.job_id == "job-9")
        );
    }

    #[tokio::test]
    async fn an_audited_job_is_published_once_and_its_copy_recorded_not_published() {
        let (mut triage, _f) = shared();
        let mut pipeline = (*triage.pipeline).clone();
        pipeline.stages[0].gate.escalate_if.clear();
        pipeline.stages[0].gate.audit = Some(1.0);
        pipeline.stages[0].gate.decision_field = Some("category".into());
        triage.pipeline = Arc::new(pipeline);
        let c = process(&triage, &received(JOB.as_bytes())).await;
        assert_eq!(c.end, JobEnd::Result);
        let to = |topic: &str| c.envelopes.iter().filter(|e| e.topic == topic).count();
        assert_eq!(to(&triage.pipeline.topics.results), 1);
        let resolve = &triage.pipeline.stages[1];
        assert_eq!(
            to(&resolve.input_topic),
            1,
            "the audit copy goes to the next stage"
        );
        let copy: crate::envelope::Escalation = serde_json::from_slice(
            &c.envelopes
                .iter()
                .find(|e| e.topic == resolve.input_topic)
                .unwrap()
                .payload,
        )
        .unwrap();
        let step = copy.escalations.last().unwrap();
        assert_eq!(step.reason, EscalationReason::Audit);
        let accepted = step.output["category"].clone();

        // The next stage re-does it: only ledger records come out, with the comparison.
        let (mut auditor, _g) = shared();
        auditor.pipeline = triage.pipeline.clone();
        auditor.runner.stage = resolve.clone();
        let payload = serde_json::to_vec(&copy).unwrap();
        let c = process(&auditor, &received(&payload)).await;
        assert_eq!(c.end, JobEnd::Audited);
        assert!(c.envelopes.iter().all(|e| e.topic.ends_with(".ledger")));
        let audit = ledger(&c)
            .into_iter()
            .find_map(|r| match r {
                LedgerRecord::Audit(a) => Some(a),
                _ => None,
            })
            .expect("an audit record");
        assert_eq!(audit.stage, "triage");
        assert_eq!(audit.decision, accepted);
        assert_eq!(audit.agreed, Some(audit.decision == audit.auditor_decision));
    }

    #[tokio::test]
    async fn a_message_that_is_not_a_job_is_dead_lettered_with_its_position() {
        let (shared, f) = shared();
        let c = process(&shared, &received(b"{not json")).await;
        assert_eq!(c.end, JobEnd::DeadLetter);
        let dl: DeadLetter = serde_json::from_slice(&c.envelopes[0].payload).unwrap();
        assert_eq!(dl.reason, DeadLetterReason::InvalidIntake);
        assert!(dl.detail.contains("partition 3 offset 41"), "{}", dl.detail);
        assert!(!dl.replayable);
        assert!(f.seen.lock().unwrap().is_empty(), "no provider was called");
        // The ledger still learns how the message ended, under its position.
        let records = ledger(&c);
        assert!(
            matches!(&records[..], [LedgerRecord::Job(j)] if j.job_id == "support-triage.intake/3/41"),
            "{records:?}"
        );
    }

    #[tokio::test]
    async fn a_job_every_endpoint_fails_is_dead_lettered_with_every_attempt() {
        let (shared, f) = shared();
        for m in &f.models {
            f.script.lock().unwrap().insert(
                m.clone(),
                vec![Err(failure(AttemptClass::Transient, 503)); 4].into(),
            );
        }
        let c = process(&shared, &received(JOB.as_bytes())).await;
        assert_eq!(c.end, JobEnd::DeadLetter);
        let dl: DeadLetter = serde_json::from_slice(&c.envelopes[0].payload).unwrap();
        assert_eq!(dl.reason, DeadLetterReason::ProviderExhausted);
        assert!(dl.replayable);
        assert_eq!(dl.attempts.len(), f.seen.lock().unwrap().len());
        assert!(dl.attempts.len() >= 2, "{:?}", dl.attempts);
        let attempts = ledger(&c)
            .iter()
            .filter(|r| matches!(r, LedgerRecord::Attempt(_)))
            .count();
        assert_eq!(attempts, dl.attempts.len(), "one ledger record per attempt");
    }

    #[tokio::test]
    async fn a_dead_letter_too_large_for_the_broker_keeps_its_reason_when_cut() {
        let (shared, f) = shared();
        for m in &f.models {
            f.script.lock().unwrap().insert(
                m.clone(),
                vec![Err(failure(AttemptClass::Transient, 503)); 4].into(),
            );
        }
        let r = received(JOB.as_bytes());
        let c = process(&shared, &r).await;
        let input = Input {
            source: &r.source,
            payload: &r.payload,
        };
        let composer = shared.composer();
        let cut = composer.refused(input, "message too large", &c.envelopes[0]);
        let dl: DeadLetter = serde_json::from_slice(&cut.payload).unwrap();
        assert_eq!(
            dl.reason,
            DeadLetterReason::ProviderExhausted,
            "{}",
            dl.detail
        );
        assert!(dl.replayable);
        assert!(dl.detail.contains("refused by the broker"), "{}", dl.detail);
        let minimal = composer.minimal_dead_letter(input, "message too large", &c.envelopes[0]);
        let dl: DeadLetter = serde_json::from_slice(&minimal.payload).unwrap();
        assert_eq!(dl.reason, DeadLetterReason::ProviderExhausted);
        // A result the broker refused is what it was: an output that could not be published.
        let result = process(&shared, &received(b"{not json")).await;
        let mut as_result = result.envelopes[0].clone();
        as_result.topic = shared.pipeline.topics.results.clone();
        let refused = composer.refused(input, "message too large", &as_result);
        let dl: DeadLetter = serde_json::from_slice(&refused.payload).unwrap();
        assert_eq!(dl.reason, DeadLetterReason::OutputRejected);
    }
}
