//! The `switchyard` command line: argument definitions and one function per command.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::tools::demo::{DemoOptions, run_demo};
use switchyard::app::{RunOptions, run};
use switchyard::config::Pipeline;
use switchyard::kafka::KafkaSettings;
use switchyard::kafka::client::{jobs_from_jsonl, send_all};
use switchyard_testkit::broker::{EmbeddedBroker, forward};

/// Switchyard: LLM work on Kafka streams, across model vendors.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline end to end on an embedded broker and simulator (nothing to install).
    Demo(DemoArgs),
    /// Serve the embedded Kafka-protocol broker to other processes until Ctrl-C (SIGUSR1 takes
    /// it down, SIGUSR2 brings it back).
    DevBroker(DevBrokerArgs),
    /// Run a pipeline's stages against a Kafka cluster until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Load jobs from a JSONL file onto a pipeline's intake topic.
    Produce(ProduceArgs),
    /// Check a pipeline's config, prompts and schemas; errors name file and line.
    Validate(ValidateArgs),
    /// Print a pipeline's results (or dead letters, or ledger records) as JSON lines.
    Tail(TailArgs),
    /// Fault drill: broker, simulator and replicas as processes, killed and restarted at random.
    Chaos(ChaosArgs),
    /// Benchmark: Switchyard against a peer implementation on one broker and one simulator.
    Bench(BenchArgs),
    /// Labelled jobs through the pipeline and through cheap-only and strong-only baselines.
    Eval(EvalArgs),
    /// The local tier alone on labelled data: top-1, coverage and precision at the threshold,
    /// out-of-scope queries answered (banking77 CSVs or clinc150's data_full.json).
    LocalEval(LocalEvalArgs),
    /// Management report over a window of the results, dead-letter and ledger topics.
    Report(ReportArgs),
    /// A file of documents through a pipeline (split to fit, merged back); outputs and F1.
    Batch(BatchArgs),
    /// List or replay dead letters.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Store the ledger topic in PostgreSQL (also part of `run` when DATABASE_URL is set).
    LedgerSink(LedgerSinkArgs),
    /// Calls, tokens, cost, escalations and failures from the ledger, grouped as asked.
    Usage(UsageArgs),
    /// List the catalog's models and endpoints.
    Models(ModelsArgs),
    /// Explain a stage's route: ordered candidates, and why each left-out endpoint is out.
    Route {
        /// What to do.
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Work with the model catalog.
    Catalog {
        /// What to do.
        #[command(subcommand)]
        command: CatalogCommand,
    },
}

/// Which topic `switchyard tail` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailTopic {
    /// Finished jobs.
    Results,
    /// Dead letters.
    DeadLetters,
    /// Ledger records.
    Ledger,
    /// Escalations to the second stage.
    Escalate,
}

/// `switchyard tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// Which topic.
    #[arg(long, value_enum, default_value = "results")]
    pub topic: TailTopic,
    /// Stop after N messages.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep reading new messages (until Ctrl-C) instead of stopping when caught up.
    #[arg(long)]
    pub follow: bool,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// `switchyard chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Jobs to run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Seed for the faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faults to inject.
    #[arg(long, default_value_t = 8)]
    pub faults: usize,
    /// Pipeline folder.
    #[arg(long, default_value = "pipelines/support-triage")]
    pub pipeline: PathBuf,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `switchyard batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Documents, JSON lines `{"payload": {...}, "expected": {key: [values]}}`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write one JSON line per document.
    #[arg(long)]
    pub out: PathBuf,
    /// The payload field with the document text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// The payload field naming the document.
    #[arg(long, default_value = "doc_id")]
    pub id_field: String,
    /// Largest part in characters (default: what fits the first stage's smallest context window).
    #[arg(long)]
    pub chunk_chars: Option<usize>,
    /// Call the providers of providers.yaml instead of the in-process simulator (oracle mode).
    #[arg(long)]
    pub real_providers: bool,
    /// Simulator latency scale.
    #[arg(long, default_value_t = 0.05)]
    pub latency_scale: f64,
}

/// `switchyard report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// The window: what happened in the last DURATION (e.g. 24h, 7days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// The HTML page; report.json and report.md go beside it (same name, other extension).
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Write the narrative with an in-process llm-sim instead of the configured providers.
    #[arg(long)]
    pub sim: bool,
    /// Stop reading the topics after this long without a message.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// `switchyard eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Pipeline folder.
    #[arg(long, default_value = "pipelines/support-triage")]
    pub pipeline: PathBuf,
    /// Labelled jobs, JSON lines `{"payload": {...}, "label": "..."}`.
    #[arg(long)]
    pub data: PathBuf,
    /// The output field compared with the label.
    #[arg(long, default_value = "category")]
    pub label_field: String,
    /// Only the first N jobs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Call the providers of providers.yaml (keys from the environment) instead of the
    /// in-process simulator in oracle mode.
    #[arg(long)]
    pub real_providers: bool,
    /// Simulator latency scale (0 answers at once).
    #[arg(long, default_value_t = 0.05)]
    pub latency_scale: f64,
    /// Simulator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Simulated models overstate their self-reported confidence by this share of the way to
    /// 1 (0: calibrated; 0.8: overconfident). Their token logprobs stay honest.
    #[arg(long, default_value_t = 0.0)]
    pub sim_overconfidence: f64,
    /// Simulated models answer this share of out-of-scope jobs (gold label `--oos-label`)
    /// with some intent instead, sure of it in their reported confidence and logprobs alike.
    #[arg(long, default_value_t = 0.0)]
    pub sim_oos_confusion: f64,
    /// Override every model stage's gate confidence sources (comma-separated: reported,
    /// logprob, agreement).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub confidence_from: Vec<ConfidenceFromArg>,
    /// The gold label of out-of-scope jobs (reported under `oos` when the data has some).
    #[arg(long, default_value = "none")]
    pub oos_label: String,
    /// Leave out the pipeline's local tier: measure its LLM stages' gates alone.
    #[arg(long)]
    pub llm_stages_only: bool,
    /// Audit this share of the jobs each model stage with a next stage accepts (gate.audit).
    #[arg(long)]
    pub audit: Option<f64>,
    /// Let the audits move those stages' thresholds toward this precision
    /// (gate.target_precision; needs --audit).
    #[arg(long, requires = "audit")]
    pub target_precision: Option<f64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A gate confidence source (see `gate.confidence_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfidenceFromArg {
    /// The model's self-reported confidence.
    Reported,
    /// The probability of the decision's tokens.
    Logprob,
    /// Agreement with the local tier.
    Agreement,
}

impl From<ConfidenceFromArg> for switchyard::config::ConfidenceSource {
    fn from(a: ConfidenceFromArg) -> Self {
        use switchyard::config::ConfidenceSource as S;
        match a {
            ConfidenceFromArg::Reported => S::Reported,
            ConfidenceFromArg::Logprob => S::Logprob,
            ConfidenceFromArg::Agreement => S::Agreement,
        }
    }
}

/// `switchyard bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller job counts (about a minute without the peer).
    #[arg(long)]
    pub quick: bool,
    /// The peer's command (program and arguments, split on spaces), e.g.
    /// `bench/.venv/bin/python bench/peer/peer.py`; Switchyard runs alone without it.
    #[arg(long)]
    pub peer: Option<String>,
    /// Jobs for Switchyard in overhead mode (default 100,000, quick 20,000).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Jobs for Switchyard in latency mode (default 60,000, quick 20,000).
    #[arg(long)]
    pub latency_jobs: Option<usize>,
    /// Jobs for the peer in each mode (default 6,000, quick 2,000).
    #[arg(long)]
    pub peer_jobs: Option<usize>,
    /// Jobs in flight in latency mode.
    #[arg(long, default_value_t = 2000)]
    pub in_flight: usize,
    /// The peer's concurrency in overhead mode.
    #[arg(long, default_value_t = 200)]
    pub peer_concurrency: usize,
    /// Pipeline folder.
    #[arg(long, default_value = "pipelines/support-triage")]
    pub pipeline: PathBuf,
    /// Extra librdkafka options for the `switchyard run` processes (tuning experiments).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// `switchyard dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (newest last).
    List(DlqArgs),
    /// Send chosen dead letters back to the stage where they failed.
    Replay(DlqReplayArgs),
}

/// Which dead letters.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// Only this reason (e.g. provider_exhausted).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this job's (job ids are per tenant: add --tenant to pick one tenant's job).
    #[arg(long = "job")]
    pub job_id: Option<String>,
    /// Only those of the last DURATION (e.g. 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// At most N.
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// `switchyard dlq replay`.
#[derive(Debug, clap::Args)]
pub struct DlqReplayArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub which: DlqArgs,
    /// Show what would be replayed without sending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Jobs replayed this many times already stay put.
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
}

/// `switchyard route …`.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Print the ordered candidates of a stage and the rule that left each other endpoint out.
    Explain(ExplainArgs),
}

/// `switchyard catalog …`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Convert OpenRouter's models listing (JSON from /api/v1/models) into catalog.yaml.
    Import(ImportArgs),
}

/// `switchyard route explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Stage name.
    #[arg(long)]
    pub stage: String,
    /// Estimated prompt size in tokens (checks context windows).
    #[arg(long)]
    pub prompt_tokens: Option<u64>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// How to sort `switchyard models` (see [`ModelSort`](switchyard::config::catalog::ModelSort)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSortArg {
    /// Cheapest (input + output) first.
    Price,
    /// Lowest latency hint first.
    Latency,
    /// Highest throughput hint first.
    Throughput,
    /// Largest context first.
    Context,
}

impl From<ModelSortArg> for switchyard::config::catalog::ModelSort {
    fn from(a: ModelSortArg) -> Self {
        use switchyard::config::catalog::ModelSort;
        match a {
            ModelSortArg::Price => ModelSort::Price,
            ModelSortArg::Latency => ModelSort::Latency,
            ModelSortArg::Throughput => ModelSort::Throughput,
            ModelSortArg::Context => ModelSort::Context,
        }
    }
}

/// How `switchyard usage` groups (see [`GroupBy`](switchyard::ledger::GroupBy)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupByArg {
    /// By tenant.
    Tenant,
    /// By pipeline.
    Pipeline,
    /// By stage.
    Stage,
    /// By model.
    Model,
    /// By provider.
    Provider,
    /// By UTC day.
    Day,
}

impl From<GroupByArg> for switchyard::ledger::GroupBy {
    fn from(a: GroupByArg) -> Self {
        use switchyard::ledger::GroupBy;
        match a {
            GroupByArg::Tenant => GroupBy::Tenant,
            GroupByArg::Pipeline => GroupBy::Pipeline,
            GroupByArg::Stage => GroupBy::Stage,
            GroupByArg::Model => GroupBy::Model,
            GroupByArg::Provider => GroupBy::Provider,
            GroupByArg::Day => GroupBy::Day,
        }
    }
}

/// `switchyard local-eval`.
#[derive(Debug, clap::Args)]
pub struct LocalEvalArgs {
    /// Training data: a CSV of `text,label`, or clinc150's data_full.json.
    #[arg(long)]
    pub train: PathBuf,
    /// Test CSV (clinc150 brings its own test split).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Precision the answers must reach (the threshold is chosen by cross-validation).
    #[arg(long, default_value_t = 0.98)]
    pub precision: f64,
    /// clinc150: train with its out-of-scope training queries as a "none of these" class.
    #[arg(long)]
    pub oos_examples: bool,
    /// One JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// `switchyard models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Catalog file.
    #[arg(long, default_value = "pipelines/catalog.yaml")]
    pub catalog: PathBuf,
    /// Sort order.
    #[arg(long, value_enum, default_value = "price")]
    pub sort: ModelSortArg,
    /// Only models with this capability (json_schema, tools, logprobs).
    #[arg(long)]
    pub capability: Option<String>,
    /// Only endpoints whose input and output prices are at most this (USD per million tokens).
    #[arg(long)]
    pub max_price: Option<f64>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `switchyard catalog import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// OpenRouter models JSON.
    pub file: PathBuf,
    /// Provider name the endpoints are called through.
    #[arg(long, default_value = "openrouter")]
    pub provider: String,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `switchyard demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Jobs to run.
    #[arg(long, default_value_t = 300)]
    pub jobs: usize,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Pipeline folder.
    #[arg(long, default_value = "pipelines/support-triage")]
    pub pipeline: PathBuf,
    /// Partitions per topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Simulated latency scale: 1 is hosted-model latency, 0 answers at once.
    #[arg(long, default_value_t = 0.05)]
    pub latency_scale: f64,
    /// Simulator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Give up when no job finishes for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Play a fault scenario.
    #[arg(long, value_enum)]
    pub scenario: Option<crate::tools::demo::Scenario>,
    /// PostgreSQL for the ledger; the demo keeps it in memory without one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// `switchyard dev-broker`.
#[derive(Debug, clap::Args)]
pub struct DevBrokerArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 9092)]
    pub port: u16,
    /// Create the topics of these pipelines.
    #[arg(long = "pipeline")]
    pub pipelines: Vec<PathBuf>,
    /// Create these topics too.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Partitions per topic created.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
}

/// `run --from`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StartArg {
    /// The oldest message on the topic.
    Earliest,
    /// The end of the topic.
    Latest,
    /// Committed offsets only; a new group is an error.
    Committed,
}

impl From<StartArg> for switchyard::kafka::StartFrom {
    fn from(a: StartArg) -> Self {
        match a {
            StartArg::Earliest => Self::Earliest,
            StartArg::Latest => Self::Latest,
            StartArg::Committed => Self::Committed,
        }
    }
}

/// `switchyard run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pipeline folder.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// Run only these stages (repeatable; all when absent).
    #[arg(long = "stage")]
    pub stages: Vec<String>,
    /// Consumer group prefix.
    #[arg(long, default_value = "switchyard")]
    pub group_prefix: String,
    /// Where a stage whose consumer group has no committed offsets starts: `earliest` (every
    /// message still on the topic is processed, and paid for), `latest` (only new ones), or
    /// `committed` (refuse to start: a new group is a mistake). Groups with committed offsets
    /// always resume from them.
    #[arg(long = "from", value_enum, default_value = "earliest")]
    pub start_from: StartArg,
    /// Extra librdkafka property, `key=value` (repeatable), e.g. `-X security.protocol=SASL_SSL`.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// PostgreSQL for the ledger; with it, this process also runs the ledger sink.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Do not run the ledger sink here (another process does).
    #[arg(long)]
    pub no_ledger_sink: bool,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` here, e.g. `0.0.0.0:9464`.
    #[arg(long, env = "SWITCHYARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the admin page here, e.g. `127.0.0.1:8080` (loopback unless you mean otherwise).
    /// Needs a token: SWITCHYARD_ADMIN_TOKEN or --admin-token-file.
    #[arg(long, env = "SWITCHYARD_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// A file holding the admin page's token (at least 16 characters; never put the token on
    /// the command line, where the process list shows it). Or set SWITCHYARD_ADMIN_TOKEN.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Another `host[:port]` the admin page may be reached by (e.g. a proxy's name);
    /// repeatable. Requests with any other Host header are refused.
    #[arg(
        long = "admin-host",
        env = "SWITCHYARD_ADMIN_HOSTS",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "human",
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    pub log_format: crate::log::LogFormat,
}

/// `switchyard ledger-sink`.
#[derive(Debug, clap::Args)]
pub struct LedgerSinkArgs {
    /// Pipeline folder (for its ledger topic).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Consumer group.
    #[arg(long, default_value = "switchyard")]
    pub group_prefix: String,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// Output format of `switchyard usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageFormat {
    /// Aligned columns.
    Table,
    /// One JSON object.
    Json,
    /// CSV rows.
    Csv,
}

/// `switchyard usage`.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Only the last DURATION (e.g. 24h, 7days).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Group by these (comma-separated): tenant, pipeline, stage, model, provider, day.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub by: Vec<GroupByArg>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: UsageFormat,
}

/// `switchyard produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Pipeline folder (for its name and intake topic).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    pub brokers: String,
    /// JSONL: whole intake jobs, or bare payload objects to wrap.
    #[arg(long)]
    pub file: PathBuf,
    /// Tenant for wrapped payloads.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Send each line as it is, unchecked (for testing dead-lettering of bad input).
    #[arg(long)]
    pub raw: bool,
    /// Extra librdkafka property, `key=value` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// `switchyard validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Pipeline folder.
    pub pipeline: PathBuf,
    /// Also require every key reference to resolve (`env:NAME` set, `file:PATH` readable), as
    /// `run` does. Without it, missing keys are listed but do not fail the check, so a config
    /// can be validated where its secrets are not (CI).
    #[arg(long)]
    pub check_keys: bool,
}

/// Runs a parsed command line; the process exit code is the result.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(a) => demo(a).await,
        Command::DevBroker(a) => dev_broker(a).await,
        Command::Run(a) => run_pipeline(a).await,
        Command::Produce(a) => produce(a).await,
        Command::Validate(a) => validate(&a.pipeline, a.check_keys),
        Command::Models(a) => models(a),
        Command::LedgerSink(a) => ledger_sink(a).await,
        Command::Chaos(a) => chaos(a).await,
        Command::Bench(a) => bench(a).await,
        Command::Eval(a) => eval(a).await,
        Command::LocalEval(a) => local_eval(a),
        Command::Report(a) => report(a).await,
        Command::Batch(a) => batch(a).await,
        Command::Tail(a) => tail(a).await,
        Command::Dlq {
            command: DlqCommand::List(a),
        } => dlq_list(a).await,
        Command::Dlq {
            command: DlqCommand::Replay(a),
        } => dlq_replay(a).await,
        Command::Usage(a) => usage(a).await,
        Command::Route {
            command: RouteCommand::Explain(a),
        } => explain(a),
        Command::Catalog {
            command: CatalogCommand::Import(a),
        } => import(a),
    }
}

/// A pipeline folder as given: relative paths are from the working directory, never from the
/// folder the binary was built in.
fn locate(dir: &Path) -> PathBuf {
    dir.to_path_buf()
}

fn load(dir: &Path) -> anyhow::Result<Pipeline> {
    Pipeline::load(&locate(dir)).map_err(|e| anyhow!("invalid pipeline configuration:\n{e}"))
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    // These tools run the simulator on purpose: no "answers as llm-sim" warning.
    crate::log::init("warn,switchyard::simulator=off");
    let progress = !a.json || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = run_demo(DemoOptions {
        jobs: a.jobs,
        pipeline: locate(&a.pipeline),
        partitions: a.partitions,
        latency_scale: a.latency_scale,
        seed: a.seed,
        idle_timeout: a.idle_timeout,
        progress,
        scenario: a.scenario,
        database_url: a.database_url.clone(),
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "Switchyard demo: {} on an embedded broker and llm-sim\n",
            summary.pipeline
        );
        print!("{}", summary.table());
    }
    if summary.lost > 0 {
        anyhow::bail!(
            "{} jobs were lost (neither a result nor a dead letter)",
            summary.lost
        );
    }
    Ok(())
}

async fn dev_broker(a: DevBrokerArgs) -> anyhow::Result<()> {
    crate::log::init("info");
    let broker = EmbeddedBroker::start()?;
    let mut topics = a.topics.clone();
    for p in &a.pipelines {
        topics.extend(load(p)?.all_topics());
    }
    for t in &topics {
        broker.create_topic(t, a.partitions)?;
    }
    let target: SocketAddr = broker
        .bootstrap()
        .split(',')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("unexpected mock cluster address {}", broker.bootstrap()))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", a.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}; is another broker running there?",
                a.port
            )
        })?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout();
    writeln!(out, "bootstrap=127.0.0.1:{port}")?;
    out.flush()?;
    tracing::info!(port, topics = ?topics, "embedded broker serving; Ctrl-C to stop");
    let shutdown = shutdown_signal();
    let broker = Arc::new(broker);
    control_signals(broker.clone());
    tokio::select! {
        _ = forward(listener, target) => {}
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

/// Says, loudly, where each stage's consumer group will start when it has no committed
/// offsets (a new group, e.g. a new `--group-prefix`), and refuses with `--from committed`.
fn announce_start_positions(
    pipeline: &Pipeline,
    kafka: &KafkaSettings,
    a: &RunArgs,
) -> anyhow::Result<()> {
    use switchyard::kafka::StartFrom;
    for stage in &pipeline.stages {
        if !a.stages.is_empty() && !a.stages.iter().any(|s| s == stage.name.as_str()) {
            continue;
        }
        let group = format!("{}.{}.{}", a.group_prefix, pipeline.name, stage.name);
        let topics: Vec<String> = pipeline
            .stage_topics(stage.index)
            .into_iter()
            .map(|t| t.topic)
            .collect();
        let start = switchyard::kafka::client::group_start(kafka, &group, &topics)
            .map_err(anyhow::Error::msg)?;
        if start.committed == start.partitions {
            continue;
        }
        let fresh = if start.committed == 0 {
            "has no committed offsets (a new group)".to_string()
        } else {
            format!(
                "has committed offsets on {} of {} partitions",
                start.committed, start.partitions
            )
        };
        match kafka.start_from {
            StartFrom::Committed => anyhow::bail!(
                "consumer group {group} {fresh} on {}, and --from committed refuses to start it; check --group-prefix (now `{}`), or start it with --from earliest (process the {} messages there) or --from latest (only new ones)",
                topics.join(", "),
                a.group_prefix,
                start.uncommitted_backlog
            ),
            StartFrom::Earliest => tracing::warn!(
                group = %group,
                "consumer group {group} {fresh}: those partitions start from the EARLIEST message, so {} messages already on {} will be processed (and their LLM calls paid for); use --from latest to start at the end, --from committed to refuse",
                start.uncommitted_backlog,
                topics.join(", ")
            ),
            StartFrom::Latest => tracing::warn!(
                group = %group,
                "consumer group {group} {fresh}: those partitions start from the LATEST message; the {} messages already on {} are skipped",
                start.uncommitted_backlog,
                topics.join(", ")
            ),
        }
    }
    Ok(())
}

async fn run_pipeline(a: RunArgs) -> anyhow::Result<()> {
    crate::log::init_with("info", a.log_format);
    let pipeline = Arc::new(load(&a.pipeline)?);
    let mut kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    kafka.start_from = a.start_from.into();
    let missing = switchyard::kafka::client::missing_topics(&kafka, &pipeline.all_topics())
        .map_err(anyhow::Error::msg)?;
    if !missing.is_empty() {
        anyhow::bail!(
            "topics missing on {}: {}; create them (as many partitions as you want replicas to share work), or use `switchyard dev-broker --pipeline DIR` locally",
            a.brokers,
            missing.join(", ")
        );
    }
    announce_start_positions(&pipeline, &kafka, &a)?;
    let shutdown = shutdown_signal();
    tracing::info!(pipeline = %pipeline.name, brokers = %a.brokers, "starting");
    let (ledger, spend_seed) = match (&a.database_url, a.no_ledger_sink) {
        (Some(url), no_sink) => {
            let pg = Arc::new(switchyard::ledger::PgLedger::new(url)?);
            // Budgets start from what the ledger already holds; a database that is down now is
            // waited for by the sink, and budgets then start from zero (logged).
            let seed = match tokio::time::timeout(
                Duration::from_secs(5),
                pg.spend(switchyard::envelope::now()),
            )
            .await
            {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read spend from the ledger; budgets start from zero");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(
                        "ledger database did not answer in 5 s; budgets start from zero"
                    );
                    Vec::new()
                }
            };
            let store: Option<Arc<dyn switchyard::ledger::LedgerStore>> =
                if no_sink { None } else { Some(pg) };
            (store, seed)
        }
        (None, _) => {
            tracing::warn!(
                "no DATABASE_URL: ledger records go to the ledger topic only (run `switchyard ledger-sink` to store them)"
            );
            (None, Vec::new())
        }
    };
    let readiness: Arc<switchyard::intake::readiness::Readiness> = Arc::default();
    let otlp_metrics = switchyard::telemetry::otlp::from_env().is_some_and(|o| o.exports_metrics());
    let ops = if a.metrics_addr.is_some() || a.admin_addr.is_some() || otlp_metrics {
        let ops = Arc::new(
            switchyard::ops::Ops::new(
                pipeline.clone(),
                kafka.clone(),
                readiness.clone(),
                a.metrics_addr.is_some(),
            )
            .map_err(anyhow::Error::msg)?,
        );
        if let Some(addr) = a.metrics_addr {
            let bound = switchyard::ops::serve_metrics(ops.clone(), addr, shutdown.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(%bound, "metrics on http://{bound}/metrics (and /healthz, /readyz)");
        }
        if let Some(addr) = a.admin_addr {
            let access = admin_access(a.admin_token_file.as_deref(), a.admin_hosts.clone())?;
            let bound = switchyard::ops::serve_admin(ops.clone(), addr, access, shutdown.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(%bound, "admin page on http://{bound}/");
        }
        Some(ops)
    } else {
        None
    };
    let options = RunOptions {
        ops,
        kafka,
        stages: a.stages,
        group_prefix: a.group_prefix,
        readiness,
        ledger,
        spend_seed,
    };
    run(pipeline, options, shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    crate::log::init("warn,librdkafka=off,rdkafka=off");
    let pipeline = load(&a.pipeline)?;
    let kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    // `--file -` is standard input; bytes, so `--raw` can send lines that are not UTF-8.
    let (bytes, name) = if a.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("cannot read standard input")?;
        (b, "<stdin>".to_string())
    } else {
        let b =
            std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
        (b, a.file.display().to_string())
    };
    // Fail fast, naming the brokers, rather than waiting out every message's timeout.
    let intake_topics: Vec<String> = pipeline
        .intake_topics()
        .into_iter()
        .map(|t| t.topic)
        .collect();
    let check = kafka.clone();
    let wanted = intake_topics;
    let missing = tokio::task::spawn_blocking(move || {
        switchyard::kafka::client::missing_topics(&check, &wanted)
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let mut topics: Vec<String> = Vec::new();
    let sent = if a.raw {
        topics.push(pipeline.topics.intake.clone());
        let messages: Vec<(String, Vec<u8>)> = bytes
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| (format!("raw-{i}"), l.to_vec()))
            .collect();
        send_all(&kafka, &pipeline.topics.intake, &messages).await
    } else {
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow!("{name} is not UTF-8 ({e}); jobs are UTF-8 JSON lines (use --raw to send bytes unchecked)"))?;
        let jobs = jobs_from_jsonl(&text, &name, &pipeline.name, &a.tenant)?;
        for j in &jobs {
            let t = pipeline.tenant_intake_topic(&j.tenant);
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        if let Some(t) = topics.iter().find(|t| missing.contains(t)) {
            anyhow::bail!(
                "topic {t} does not exist on {}; create it (or run `switchyard dev-broker --pipeline DIR` locally)",
                a.brokers
            );
        }
        switchyard::kafka::client::produce_intake(&kafka, &pipeline, &jobs).await
    }
    .map_err(anyhow::Error::msg)?;
    println!("produced {sent} jobs to {}", topics.join(", "));
    Ok(())
}

fn validate(dir: &Path, check_keys: bool) -> anyhow::Result<()> {
    let options = switchyard::config::LoadOptions {
        require_keys: check_keys,
    };
    let p = Pipeline::load_with(&locate(dir), &options)
        .map_err(|e| anyhow!("invalid pipeline configuration:\n{e}"))?;
    println!("{}: ok", p.dir.join("pipeline.yaml").display());
    for k in &p.unresolved_keys {
        println!(
            "  key not available here (`run` needs it; --check-keys makes this an error): {k}"
        );
    }
    println!("  topics to create: {}", p.all_topics().join(", "));
    let tenants = match &p.tenant_binding {
        switchyard::config::TenantBinding::Payload => {
            "from each job's `tenant` field (trusted producers only)".to_string()
        }
        switchyard::config::TenantBinding::Topic => {
            format!("from the intake topic ({}.<tenant>)", p.topics.intake)
        }
        switchyard::config::TenantBinding::Header(h) => format!("from the `{h}` header"),
    };
    println!("  tenant: {tenants}");
    for s in &p.stages {
        let plan = switchyard::route::plan(
            &s.models,
            &s.route.provider,
            &switchyard::route::Needs::default(),
            &|_| Default::default(),
            None,
        );
        let models: Vec<String> = plan.candidates.iter().map(|c| c.endpoint.id()).collect();
        let how = match &s.local {
            Some(l) => format!(
                "local classifier, trained at start-up, no paid call: {}",
                l.classifier.report.summary()
            ),
            None => models.join(" → "),
        };
        let reads: Vec<String> = p
            .stage_topics(s.index)
            .into_iter()
            .map(|t| t.topic)
            .collect();
        println!("  stage {} (reads {}): {how}", s.name, reads.join(", "));
    }
    Ok(())
}

async fn tail(a: TailArgs) -> anyhow::Result<()> {
    crate::log::init("warn");
    let p = load(&a.pipeline)?;
    let kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let topic = match a.topic {
        TailTopic::Results => p.topics.results.clone(),
        TailTopic::DeadLetters => p.topics.dlq.clone(),
        TailTopic::Ledger => p.topics.ledger.clone(),
        TailTopic::Escalate => p
            .stages
            .get(1)
            .map(|s| s.input_topic.clone())
            .ok_or_else(|| anyhow!("pipeline `{}` has one stage: nothing escalates", p.name))?,
    };
    let mut n = 0usize;
    let limit = a.limit.unwrap_or(usize::MAX);
    let mut out = std::io::stdout().lock();
    let mut print = |_: &str, payload: &[u8]| {
        let _ = out.write_all(payload);
        let _ = out.write_all(b"\n");
        n += 1;
        n >= limit
    };
    if a.follow {
        // Until Ctrl-C (a year of silence is as good as forever).
        let consumer =
            switchyard::kafka::client::reader(&kafka, &[&topic]).map_err(anyhow::Error::msg)?;
        switchyard::kafka::client::read_until(
            &consumer,
            Duration::from_secs(365 * 24 * 3600),
            print,
        )
        .await;
    } else {
        // Up to the end the topic had when `tail` started, even while it is being written to.
        switchyard::kafka::client::read_to_end(
            &kafka,
            &[&topic],
            Duration::from_secs(10),
            &mut print,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    eprintln!("{n} messages from {topic}");
    Ok(())
}

async fn chaos(a: ChaosArgs) -> anyhow::Result<()> {
    // These tools run the simulator on purpose: no "answers as llm-sim" warning.
    crate::log::init("warn,switchyard::simulator=off");
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot tell where the switchyard binary is"))?;
    let report = crate::tools::chaos::run_chaos(crate::tools::chaos::ChaosOptions {
        jobs: a.jobs,
        seed: a.seed,
        bin_dir,
        pipeline: locate(&a.pipeline),
        faults: a.faults,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if report.lost > 0 {
        anyhow::bail!("{} jobs were lost", report.lost);
    }
    Ok(())
}

async fn batch(a: BatchArgs) -> anyhow::Result<()> {
    // These tools run the simulator on purpose: no "answers as llm-sim" warning.
    crate::log::init("warn,switchyard::simulator=off");
    let summary = crate::tools::batch::run_batch(crate::tools::batch::BatchOptions {
        pipeline: locate(&a.pipeline),
        input: locate_file(&a.input),
        out: a.out,
        text_field: a.text_field,
        id_field: a.id_field,
        chunk_chars: a.chunk_chars,
        real_providers: a.real_providers,
        latency_scale: a.latency_scale,
        progress: true,
    })
    .await?;
    if let Some(s) = &summary.score {
        eprintln!(
            "{} documents ({} parts, {} split), F1 {:.3} (precision {:.3}, recall {:.3}){}; outputs in {}",
            summary.documents,
            summary.jobs,
            summary.split_documents,
            s.f1,
            s.precision,
            s.recall,
            if summary.oracle {
                " — simulated models in oracle mode, not a real model's score"
            } else {
                ""
            },
            summary.out
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

async fn eval(a: EvalArgs) -> anyhow::Result<()> {
    // These tools run the simulator on purpose: no "answers as llm-sim" warning.
    crate::log::init("warn,switchyard::simulator=off");
    let report = crate::tools::eval::run_eval(crate::tools::eval::EvalOptions {
        pipeline: locate(&a.pipeline),
        data: locate_file(&a.data),
        label_field: a.label_field,
        limit: a.limit,
        real_providers: a.real_providers,
        latency_scale: a.latency_scale,
        seed: a.seed,
        progress: !a.json,
        overconfidence: a.sim_overconfidence,
        oos_confusion: a.sim_oos_confusion,
        confidence_from: (!a.confidence_from.is_empty())
            .then(|| a.confidence_from.iter().map(|c| (*c).into()).collect()),
        oos_label: a.oos_label,
        llm_stages_only: a.llm_stages_only,
        audit: a.audit,
        target_precision: a.target_precision,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn report(a: ReportArgs) -> anyhow::Result<()> {
    crate::log::init("warn");
    let pipeline = load(&a.pipeline)?;
    let kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let (report, files) = crate::tools::report::run_report(crate::tools::report::ReportOptions {
        pipeline,
        kafka,
        since: a.since,
        out: a.out,
        sim: a.sim,
        idle: a.idle,
    })
    .await?;
    let n = &report.narrative;
    match n.author {
        crate::tools::report::Author::Model => eprintln!(
            "narrative by {} at {}",
            n.model.as_deref().unwrap_or("?"),
            n.provider.as_deref().unwrap_or("?")
        ),
        crate::tools::report::Author::Generated => eprintln!(
            "narrative generated without a model: {}",
            n.note.as_deref().unwrap_or("")
        ),
    }
    println!(
        "{} tickets; wrote {}, {} and {}",
        report.aggregates.jobs,
        files.html.display(),
        files.json.display(),
        files.markdown.display()
    );
    Ok(())
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    // These tools run the simulator on purpose: no "answers as llm-sim" warning.
    crate::log::init("warn,switchyard::simulator=off");
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot tell where the switchyard binary is"))?;
    let pick = |given: Option<usize>, full: usize, quick: usize| {
        given.unwrap_or(if a.quick { quick } else { full })
    };
    let report = crate::tools::bench::run_bench(crate::tools::bench::BenchOptions {
        bin_dir,
        pipeline: locate(&a.pipeline),
        peer: a
            .peer
            .as_deref()
            .map(|p| p.split_whitespace().map(str::to_string).collect()),
        jobs: pick(a.jobs, 100_000, 20_000),
        latency_jobs: pick(a.latency_jobs, 60_000, 20_000),
        peer_jobs: pick(a.peer_jobs, 6_000, 2_000),
        in_flight: a.in_flight,
        peer_concurrency: a.peer_concurrency,
        kafka_options: a.kafka_options,
    })
    .await?;
    print!("{}", report.table());
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn dlq_context(
    a: &DlqArgs,
) -> anyhow::Result<(
    Pipeline,
    KafkaSettings,
    switchyard::output::replay::Filter,
    switchyard::output::replay::Picture,
)> {
    crate::log::init("warn");
    let pipeline = load(&a.pipeline)?;
    let kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let since = match a.since {
        Some(d) => Some(
            switchyard::envelope::now()
                - time::Duration::try_from(d).map_err(|e| anyhow!("--since: {e}"))?,
        ),
        None => None,
    };
    if let Some(r) = &a.reason {
        switchyard::envelope::DeadLetterReason::parse(r).map_err(anyhow::Error::msg)?;
    }
    let filter = switchyard::output::replay::Filter {
        reason: a.reason.clone(),
        tenant: a.tenant.clone(),
        job_id: a.job_id.clone(),
        since,
        limit: a.limit,
    };
    let picture =
        switchyard::output::replay::read_picture(&kafka, &pipeline, Duration::from_secs(3))
            .await
            .map_err(anyhow::Error::msg)?;
    Ok((pipeline, kafka, filter, picture))
}

async fn dlq_list(a: DlqArgs) -> anyhow::Result<()> {
    let (_, _, filter, picture) = dlq_context(&a).await?;
    let rows = switchyard::output::replay::list(&picture, &filter);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<25} {:<28} {:<10} {:<9} {:<20} {:>7} {:>6}  DETAIL",
        "FAILED AT", "JOB", "TENANT", "STAGE", "REASON", "REPLAY?", "REDRV"
    );
    for r in &rows {
        let detail: String = r.detail.chars().take(90).collect();
        let replay = if r.resolved {
            "done"
        } else if r.replayable {
            "yes"
        } else {
            "no"
        };
        let at: String = r.failed_at.chars().take(19).collect();
        let dash = |v: &str| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.to_string()
            }
        };
        println!(
            "{:<20} {:<30} {:<10} {:<8} {:<18} {:<7} {:>5}  {detail}",
            at,
            dash(&r.job_id),
            dash(&r.tenant),
            r.stage,
            r.reason,
            replay,
            r.redrive_count
        );
    }
    println!("{} dead letters", rows.len());
    Ok(())
}

async fn dlq_replay(a: DlqReplayArgs) -> anyhow::Result<()> {
    let (pipeline, kafka, filter, picture) = dlq_context(&a.which).await?;
    let (decisions, messages) =
        switchyard::output::replay::plan_replay(&picture, &pipeline, &filter, a.max_redrives);
    if a.which.json {
        println!("{}", serde_json::to_string_pretty(&decisions)?);
    } else {
        for d in &decisions {
            println!(
                "{:<28} {:<12} {:<9} {}",
                d.job_id, d.tenant, d.stage, d.action
            );
        }
    }
    let n = messages.len();
    if a.dry_run {
        eprintln!("dry run: {n} jobs would be replayed");
        return Ok(());
    }
    let sent = switchyard::output::replay::send(&kafka, messages)
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!("replayed {sent} jobs");
    Ok(())
}

async fn ledger_sink(a: LedgerSinkArgs) -> anyhow::Result<()> {
    crate::log::init("info");
    let pipeline = load(&a.pipeline)?;
    let kafka = KafkaSettings::new(&a.brokers)
        .with_options(&a.kafka_options)
        .map_err(anyhow::Error::msg)?;
    let store = switchyard::ledger::PgLedger::new(&a.database_url)?;
    let group = format!("{}.{}.ledger-sink", a.group_prefix, pipeline.name);
    switchyard::ledger::run_sink(
        &kafka,
        &group,
        &pipeline.topics.ledger,
        &store,
        shutdown_signal(),
    )
    .await
    .map_err(anyhow::Error::msg)
}

async fn usage(a: UsageArgs) -> anyhow::Result<()> {
    crate::log::init("warn");
    let store = switchyard::ledger::PgLedger::new(&a.database_url)?;
    let since = match a.since {
        Some(d) => Some(
            switchyard::envelope::now()
                - time::Duration::try_from(d).map_err(|e| anyhow!("--since: {e}"))?,
        ),
        None => None,
    };
    let by: Vec<switchyard::ledger::GroupBy> = a.by.iter().map(|b| (*b).into()).collect();
    let report = switchyard::ledger::usage(&store, since, &by).await?;
    match a.format {
        UsageFormat::Table => print!("{}", switchyard::ledger::usage_table(&report, &by)),
        UsageFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        UsageFormat::Csv => print!("{}", switchyard::ledger::usage_csv(&report, &by)),
    }
    Ok(())
}

/// A file as given: relative paths are from the working directory.
fn locate_file(path: &Path) -> PathBuf {
    path.to_path_buf()
}

fn local_eval(a: LocalEvalArgs) -> anyhow::Result<()> {
    crate::log::init("warn");
    let report =
        crate::tools::local_eval::run_local_eval(&crate::tools::local_eval::LocalEvalOptions {
            train: locate_file(&a.train),
            test: a.test.as_deref().map(locate_file),
            precision: Some(a.precision),
            oos_examples: a.oos_examples,
        })?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn models(a: ModelsArgs) -> anyhow::Result<()> {
    let catalog = switchyard::config::catalog::load(&locate_file(&a.catalog))?;
    let rows = switchyard::config::catalog::rows(
        &catalog,
        a.sort.into(),
        a.capability.as_deref(),
        a.max_price,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", switchyard::config::catalog::table(&rows));
    }
    Ok(())
}

fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    let p = load(&a.pipeline)?;
    let stage = p.stages.iter().find(|s| s.name == a.stage).ok_or_else(|| {
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        anyhow!(
            "pipeline `{}` has no stage `{}` (stages: {})",
            p.name,
            a.stage,
            names.join(", ")
        )
    })?;
    let mut parameters = vec!["response_format".to_string()];
    if stage.route.max_tokens.is_some() {
        parameters.push("max_tokens".into());
    }
    if stage.route.temperature.is_some() {
        parameters.push("temperature".into());
    }
    let needs = switchyard::route::Needs {
        parameters,
        prompt_tokens: a.prompt_tokens,
        tenant: None,
    };
    let plan = switchyard::route::plan(
        &stage.models,
        &stage.route.provider,
        &needs,
        &|_| Default::default(),
        None,
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    println!(
        "route of {}/{} (no health data here; a running worker also pushes back open breakers)",
        p.name, stage.name
    );
    for (i, c) in plan.candidates.iter().enumerate() {
        let e = c.endpoint;
        println!(
            "  {}. {:<32} in ${:.2}/M out ${:.2}/M ctx {:>7}  {}",
            i + 1,
            e.id(),
            e.input.as_usd(),
            e.output.as_usd(),
            e.context_length,
            c.why
        );
    }
    for m in &stage.models {
        let shares = switchyard::route::primary_shares(m, &stage.route.provider, &needs, &|_| {
            Default::default()
        });
        if shares.len() > 1 {
            let text: Vec<String> = shares
                .iter()
                .map(|(p, s)| format!("{p} {:.0}%", s * 100.0))
                .collect();
            println!(
                "  {}: first endpoint is picked per job, weighted by 1/price²: {}",
                m.name,
                text.join(", ")
            );
        }
    }
    if plan.excluded.is_empty() {
        println!("  nothing left out");
    }
    for x in &plan.excluded {
        println!("  left out {}:{}: {}", x.provider, x.model, x.rule);
    }
    Ok(())
}

fn import(a: ImportArgs) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let catalog = switchyard::config::catalog::import_openrouter(&json, &a.provider)
        .with_context(|| format!("{}", a.file.display()))?;
    let yaml = serde_norway::to_string(&catalog)?;
    match &a.out {
        Some(out) => {
            std::fs::write(out, yaml).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {} models to {}", catalog.models.len(), out.display());
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

/// SIGUSR1 takes the embedded broker down (clients see it unreachable, data is kept), SIGUSR2
/// brings it back: for fault drills against separate processes.
fn control_signals(broker: Arc<EmbeddedBroker>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut down), Ok(mut up)) = (
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = down.recv() => match broker.broker_down() {
                    Ok(()) => tracing::warn!("broker DOWN (SIGUSR1); SIGUSR2 brings it back"),
                    Err(e) => tracing::error!(error = %e, "cannot take the broker down"),
                },
                _ = up.recv() => match broker.broker_up() {
                    Ok(()) => tracing::warn!("broker UP (SIGUSR2)"),
                    Err(e) => tracing::error!(error = %e, "cannot bring the broker up"),
                },
            }
        }
    });
    #[cfg(not(unix))]
    let _ = broker;
}

/// A token cancelled on the first SIGINT or SIGTERM; a second signal exits at once.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing in-flight jobs (signal again to exit now)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The admin page's token, from `--admin-token-file` or SWITCHYARD_ADMIN_TOKEN.
fn admin_access(
    file: Option<&std::path::Path>,
    hosts: Vec<String>,
) -> anyhow::Result<switchyard::ops::access::AdminAccess> {
    let token = match (file, std::env::var("SWITCHYARD_ADMIN_TOKEN").ok()) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("--admin-token-file {}: cannot read it: {e}", path.display())
        })?,
        (None, Some(t)) => t,
        (None, None) => anyhow::bail!(
            "--admin-addr needs a token: put one in a file and pass --admin-token-file FILE, or set SWITCHYARD_ADMIN_TOKEN (e.g. `openssl rand -hex 24`)"
        ),
    };
    switchyard::ops::access::AdminAccess::new(&token, hosts).map_err(anyhow::Error::msg)
}
