//! The composition root: wires a pipeline into running stages — one worker per selected stage,
//! sharing one producer, the providers' adapters, rate limits, endpoint health, tenant spend
//! and the envelope schemas — and the ledger sink, until shutdown.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::envelope::Schemas;
use crate::intake::readiness::Readiness;
use crate::intake::{StageShared, run_stage};
use crate::kafka::KafkaSettings;
use crate::limit::Limits;
use crate::limit::budget::Spend;
use crate::output::Output;
use crate::provider::Adapters;
use crate::route::health::{BreakerConfig, Health};
use crate::stage::{StageDeps, StageRunner};

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
    let http =
        crate::provider::http_client().map_err(|e| RunError::Setup(format!("HTTP client: {e}")))?;
    let tenant_keys = pipeline
        .tenants
        .iter()
        .flat_map(|m| m.values())
        .flat_map(|t| {
            t.keys
                .iter()
                .map(move |(p, k)| (t.name.as_str(), p.as_str(), k))
        });
    let deps = StageDeps {
        providers: Arc::new(Adapters::new(pipeline.providers.values(), http)),
        limits: Arc::new(Limits::new(pipeline.providers.values()).with_tenant_keys(tenant_keys)),
        health: Arc::new(Health::new(BreakerConfig::default())),
        spend: Arc::new(Spend::default()),
        telemetry: options
            .ops
            .as_ref()
            .map(|o| o.telemetry())
            .unwrap_or_default(),
        audits: Arc::new(if options.stages.is_empty() {
            crate::audit::AuditBook::default()
        } else {
            crate::audit::AuditBook::running(options.stages.clone())
        }),
    };
    for s in pipeline
        .stages
        .iter()
        .filter(|s| s.gate.target_precision.is_some())
    {
        let next = pipeline
            .stages
            .iter()
            .skip_while(|x| x.name != s.name)
            .nth(1);
        let here =
            |name: &str| options.stages.is_empty() || options.stages.iter().any(|x| x == name);
        if here(&s.name) && !next.is_some_and(|n| here(&n.name)) {
            tracing::warn!(stage = %s.name, "gate.target_precision: the next stage, which re-does the audits, runs in another process; this stage's threshold stays at min_confidence here (audits are still recorded). Run both stages in one process for the threshold to move");
        }
    }
    let producer: FutureProducer = options.kafka.producer().create().map_err(|e| {
        RunError::Setup(format!(
            "cannot create the Kafka producer for {}: {}",
            options.kafka.brokers,
            crate::kafka::error_text(&e)
        ))
    })?;
    let output: Arc<dyn crate::output::Publisher> = Arc::new(Output::new(producer));
    if let Some(ops) = &options.ops {
        ops.set_health(deps.health.clone());
        ops.set_audits(deps.audits.clone());
    }

    // Keep this replica's share of the provider quotas in step with its partitions.
    {
        let readiness = options.readiness.clone();
        let limits = deps.limits.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = readiness.changed() => {
                        let share = readiness.share();
                        tracing::info!(share, "provider quotas rescaled to this replica's share of partitions");
                        limits.set_share(share);
                    }
                    _ = token.cancelled() => break,
                }
            }
        });
    }
    let mut workers = JoinSet::new();
    let now = crate::envelope::now();
    for (tenant, today, month) in &options.spend_seed {
        let spent = crate::limit::budget::SpentSoFar {
            today: crate::money::MicroUsd(*today),
            this_month: crate::money::MicroUsd(*month),
        };
        deps.spend.seed(tenant, spent, now);
    }
    if let Some(store) = options.ledger.clone() {
        let kafka = options.kafka.clone();
        let group = format!("{}.{}.ledger-sink", options.group_prefix, pipeline.name);
        let topic = pipeline.topics.ledger.clone();
        let token = shutdown.clone();
        workers.spawn(async move {
            crate::ledger::run_sink(&kafka, &group, &topic, store.as_ref(), token)
                .await
                .map_err(|e| crate::intake::WorkerError::Setup(e.to_string()))
        });
    }
    let tenants = pipeline.tenants.clone().map(Arc::new);
    let local_stage = pipeline
        .stages
        .iter()
        .find(|s| s.local.is_some())
        .map(|s| s.name.clone());
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if !options.stages.is_empty() && !options.stages.iter().any(|s| *s == stage.name) {
            continue;
        }
        let next = pipeline.stages.get(i + 1).map(|s| s.name.clone());
        let mut runner = StageRunner::new(stage.clone(), next, deps.clone(), tenants.clone())
            .map_err(|e| RunError::Setup(e.to_string()))?;
        runner.pipeline = pipeline.name.clone();
        runner.local_stage = local_stage.clone();
        // Ordered pipelines run the later stages inline in the first stage's worker.
        let mut inline = Vec::new();
        if pipeline.ordering == crate::config::Ordering::Key && i == 0 {
            for (j, later) in pipeline.stages.iter().enumerate().skip(1) {
                let next = pipeline.stages.get(j + 1).map(|s| s.name.clone());
                let mut r = StageRunner::new(later.clone(), next, deps.clone(), tenants.clone())
                    .map_err(|e| RunError::Setup(e.to_string()))?;
                r.pipeline = pipeline.name.clone();
                r.local_stage = local_stage.clone();
                inline.push(r);
            }
        }
        let shared = Arc::new(StageShared {
            inline,
            pipeline: pipeline.clone(),
            runner,
            schemas: schemas.clone(),
            output: output.clone(),
            telemetry: deps.telemetry.clone(),
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
