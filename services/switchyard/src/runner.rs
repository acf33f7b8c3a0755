//! Running a pipeline: one stage worker per selected stage, sharing one producer, one provider
//! set and the envelope schemas, until shutdown.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::envelope::Schemas;
use crate::intake::{StageShared, run_stage};
use crate::kafka::KafkaSettings;
use crate::output::Output;
use crate::provider::ProviderSet;
use crate::stage::StageRunner;

/// Which stages have partitions assigned: a stage is ready to work once it has some.
#[derive(Debug, Default)]
pub struct Readiness {
    assigned: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    totals: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    changed: tokio::sync::Notify,
}

impl Readiness {
    /// Records how many partitions `stage` now owns.
    pub fn set_assigned(&self, stage: &str, partitions: usize) {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage.to_string(), partitions);
        self.changed.notify_waiters();
    }

    /// Records how many partitions `stage`'s topic has in all.
    pub fn set_total(&self, stage: &str, partitions: usize) {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage.to_string(), partitions);
        self.changed.notify_waiters();
    }

    /// This replica's share of the deployment's work: the largest share of partitions any of
    /// its stages owns (1 when unknown). Provider quotas are scaled by it.
    pub fn share(&self) -> f64 {
        let assigned = self.assigned();
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shares: Vec<f64> = assigned
            .iter()
            .filter_map(|(stage, n)| {
                totals
                    .get(stage)
                    .filter(|t| **t > 0)
                    .map(|t| *n as f64 / *t as f64)
            })
            .collect();
        if shares.is_empty() {
            1.0
        } else {
            shares.into_iter().fold(0.0, f64::max).max(0.01)
        }
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Partitions owned, by stage.
    pub fn assigned(&self) -> std::collections::BTreeMap<String, usize> {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until every stage in `stages` owns at least one partition; false on timeout.
    pub async fn wait_for(&self, stages: &[String], timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let now = self.assigned();
            if stages.iter().all(|s| now.get(s).is_some_and(|n| *n > 0)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// What to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Kafka connection.
    pub kafka: KafkaSettings,
    /// Only these stages (all when empty).
    pub stages: Vec<String>,
    /// Consumer group prefix; each stage's group is `<prefix>.<pipeline>.<stage>`.
    pub group_prefix: String,
    /// Updated as stages get and lose partitions.
    pub readiness: Arc<Readiness>,
    /// Where the ledger sink writes; none runs without one.
    pub ledger: Option<Arc<dyn crate::ledger::LedgerStore>>,
    /// Spend so far per tenant (tenant, today, this month, micro-dollars), to seed budgets.
    pub spend_seed: Vec<(String, u64, u64)>,
    /// Metrics and admin endpoints to tell about the providers, when they run.
    pub ops: Option<Arc<crate::ops::Ops>>,
}

/// Why a pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `--stage` that the pipeline does not have.
    #[error("pipeline `{pipeline}` has no stage `{stage}` (stages: {known})")]
    UnknownStage {
        /// Pipeline.
        pipeline: String,
        /// The name given.
        stage: String,
        /// The names it has.
        known: String,
    },
    /// Setup failed.
    #[error("{0}")]
    Setup(String),
    /// A stage worker failed.
    #[error(transparent)]
    Worker(#[from] crate::intake::WorkerError),
}

/// Runs the pipeline's stages until `shutdown` is cancelled, then drains and commits.
pub async fn run(
    pipeline: Arc<Pipeline>,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    for s in &options.stages {
        if !pipeline.stages.iter().any(|st| &st.name == s) {
            return Err(RunError::UnknownStage {
                pipeline: pipeline.name.clone(),
                stage: s.clone(),
                known: pipeline
                    .stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let schemas = Arc::new(Schemas::load().map_err(|e| RunError::Setup(e.to_string()))?);
    let providers = Arc::new(
        ProviderSet::new(pipeline.providers.values(), pipeline.tenants.as_ref())
            .map_err(|e| RunError::Setup(format!("HTTP client: {e}")))?,
    );
    let producer: FutureProducer = options.kafka.producer().create().map_err(|e| {
        RunError::Setup(format!(
            "cannot create the Kafka producer for {}: {}",
            options.kafka.brokers,
            crate::kafka::error_text(&e)
        ))
    })?;
    let output = Arc::new(Output::new(producer));
    if let Some(ops) = &options.ops {
        ops.set_providers(providers.clone());
    }

    // Keep this replica's share of the provider quotas in step with its partitions.
    {
        let readiness = options.readiness.clone();
        let providers = providers.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = readiness.changed() => {
                        let share = readiness.share();
                        tracing::info!(share, "provider quotas rescaled to this replica's share of partitions");
                        providers.limits.set_share(share);
                    }
                    _ = token.cancelled() => break,
                }
            }
        });
    }
    let mut workers = JoinSet::new();
    let now = crate::envelope::now();
    for (tenant, today, month) in &options.spend_seed {
        let spent = crate::tenant::SpentSoFar {
            today: crate::money::MicroUsd(*today),
            this_month: crate::money::MicroUsd(*month),
        };
        providers.spend.seed(tenant, spent, now);
    }
    if let Some(store) = options.ledger.clone() {
        let kafka = options.kafka.clone();
        let group = format!("{}.{}.ledger-sink", options.group_prefix, pipeline.name);
        let topic = pipeline.topics.ledger.clone();
        let token = shutdown.clone();
        workers.spawn(async move {
            crate::ledger::run_sink(&kafka, &group, &topic, store.as_ref(), token)
                .await
                .map_err(crate::intake::WorkerError::Setup)
        });
    }
    let tenants = pipeline.tenants.clone().map(Arc::new);
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if !options.stages.is_empty() && !options.stages.contains(&stage.name) {
            continue;
        }
        let next = pipeline.stages.get(i + 1).map(|s| s.name.clone());
        let mut runner = StageRunner::new(stage.clone(), next, providers.clone(), tenants.clone())
            .map_err(|e| RunError::Setup(e.to_string()))?;
        runner.pipeline = pipeline.name.clone();
        // Ordered pipelines run the later stages inline in the first stage's worker.
        let mut inline = Vec::new();
        if pipeline.ordering == crate::config::Ordering::Key && i == 0 {
            for (j, later) in pipeline.stages.iter().enumerate().skip(1) {
                let next = pipeline.stages.get(j + 1).map(|s| s.name.clone());
                let mut r =
                    StageRunner::new(later.clone(), next, providers.clone(), tenants.clone())
                        .map_err(|e| RunError::Setup(e.to_string()))?;
                r.pipeline = pipeline.name.clone();
                inline.push(r);
            }
        }
        let shared = Arc::new(StageShared {
            inline,
            pipeline: pipeline.clone(),
            runner,
            schemas: schemas.clone(),
            output: output.clone(),
        });
        let group = format!("{}.{}.{}", options.group_prefix, pipeline.name, stage.name);
        let kafka = options.kafka.clone();
        let token = shutdown.clone();
        let readiness = options.readiness.clone();
        workers.spawn(async move { run_stage(shared, &kafka, &group, readiness, token).await });
    }
    let mut first_error = None;
    while let Some(done) = workers.join_next().await {
        let result = match done {
            Ok(r) => r.map_err(RunError::from),
            Err(e) => Err(RunError::Setup(format!("a stage worker crashed: {e}"))),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "stage worker stopped; shutting the others down");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    output.flush(std::time::Duration::from_secs(10));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_the_largest_fraction_of_partitions_owned() {
        let r = Readiness::default();
        assert_eq!(r.share(), 1.0, "unknown totals: full quota");
        r.set_total("triage", 8);
        r.set_assigned("triage", 2);
        assert_eq!(r.share(), 0.25);
        r.set_total("resolve", 4);
        r.set_assigned("resolve", 2);
        assert_eq!(r.share(), 0.5);
    }
}
