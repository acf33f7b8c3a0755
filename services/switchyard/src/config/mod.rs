//! Pipeline configuration: `pipeline.yaml` with its prompts and output schemas, the provider
//! set (`providers.yaml`) and the model catalog (`catalog.yaml`).
//!
//! Every file is parsed with unknown keys denied, so a typo is an error that names the file and
//! line instead of a silently ignored setting. Loading resolves and checks everything a run
//! needs (prompt templates compile, schemas compile, every routed model has an endpoint, every
//! endpoint's provider exists, keys resolve), so a bad config fails at start, not mid-stream.

pub mod catalog;
pub mod span;
pub mod tenant;

use span::{Spans, Step};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::money::PerMTok;
use crate::secret::{KeyRef, Secret};

/// A configuration error: the file, the line when known, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// 1-based line, when it could be located.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the errors found in one load, so a user can fix them in one go.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        line,
        column: None,
        message: message.into(),
    }
}

/// The first line of `text` that contains `needle`, to point an error at it.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Reads and parses a YAML file into `T`, with file:line:column on failure.
fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            path,
            None,
            format!(
                "cannot read: {e}; check the path (relative paths are from the pipeline folder)"
            ),
        )
    })?;
    let value = parse_yaml(path, &text)?;
    Ok((value, text))
}

/// Parses YAML text into `T`; errors carry `path` and the parser's line and column.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    serde_norway::from_str(text).map_err(|e| {
        let loc = e.location();
        let mut message = e.to_string();
        // The location is printed in front; drop the parser's own " at line X column Y".
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        ConfigError {
            path: path.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// pipeline.yaml

/// `pipeline.yaml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Pipeline name; topic names derive from it.
    pub name: String,
    /// What the pipeline is for.
    #[serde(default)]
    pub description: String,
    /// The model catalog, relative to the pipeline folder.
    #[serde(default = "default_catalog")]
    pub catalog: PathBuf,
    /// The provider set, relative to the pipeline folder.
    #[serde(default = "default_providers")]
    pub providers: PathBuf,
    /// Topic name overrides.
    #[serde(default)]
    pub topics: TopicOverrides,
    /// How much work runs at once.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Sample jobs (JSONL of payloads) for `switchyard demo`.
    #[serde(default)]
    pub samples: Option<PathBuf>,
    /// Tenants file, relative to the pipeline folder; without one, tenants are not checked.
    #[serde(default)]
    pub tenants: Option<PathBuf>,
    /// `key`: results for one Kafka key come out in intake order (jobs of a key run one at a
    /// time, escalations run inline in the first stage's worker).
    #[serde(default)]
    pub ordering: Ordering,
    /// The stages, in escalation order.
    pub stages: Vec<StageFile>,
}

fn default_catalog() -> PathBuf {
    PathBuf::from("../catalog.yaml")
}

fn default_providers() -> PathBuf {
    PathBuf::from("../providers.yaml")
}

/// Result order guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// No order: jobs run concurrently, escalations finish later.
    #[default]
    None,
    /// Per Kafka key, results in intake order.
    Key,
}

/// Topic overrides; absent ones derive from the pipeline name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverrides {
    /// Where jobs arrive (`<pipeline>.intake`).
    pub intake: Option<String>,
    /// Where the second stage reads escalations (`<pipeline>.escalate`).
    pub escalate: Option<String>,
    /// Where finished jobs go (`<pipeline>.results`).
    pub results: Option<String>,
    /// Where unfinishable jobs go (`<pipeline>.dlq`).
    pub dlq: Option<String>,
    /// Where ledger records go (`<pipeline>.ledger`).
    pub ledger: Option<String>,
}

/// Limits on work in flight, per stage worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Jobs in flight across all partitions of one stage; beyond it partitions pause.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Jobs in flight in one partition; beyond it that partition pauses.
    #[serde(default = "default_in_flight_per_partition")]
    pub max_in_flight_per_partition: usize,
    /// On shutdown, how long in-flight jobs may take to finish before they are handed back.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On a rebalance, how long in-flight jobs of revoked partitions may take to finish.
    #[serde(default = "default_rebalance_drain", with = "humantime_serde")]
    pub rebalance_timeout: Duration,
}

fn default_in_flight() -> usize {
    512
}
fn default_in_flight_per_partition() -> usize {
    128
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_rebalance_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            max_in_flight_per_partition: default_in_flight_per_partition(),
            shutdown_timeout: default_drain(),
            rebalance_timeout: default_rebalance_drain(),
        }
    }
}

/// One stage as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    /// Stage name, unique in the pipeline.
    pub name: String,
    /// System prompt template (minijinja), relative to the pipeline folder.
    #[serde(default)]
    pub system_prompt: Option<PathBuf>,
    /// User prompt template (minijinja), relative to the pipeline folder.
    pub prompt: PathBuf,
    /// JSON Schema the stage's output must satisfy.
    pub output_schema: PathBuf,
    /// Which models to call, in fallback order, and how (`models: []` for a local stage).
    pub route: RouteSpec,
    /// A local classifier instead of models: trained at start-up, zero cost.
    #[serde(default)]
    pub local: Option<LocalSpec>,
    /// When to accept, escalate or flag the output.
    #[serde(default)]
    pub gate: GateSpec,
    /// Input topic override (defaults: intake for the first stage, escalate for the second,
    /// `<pipeline>.escalate.<stage>` after that).
    #[serde(default)]
    pub input_topic: Option<String>,
}

/// A local classifier stage: the rendered prompt is the text it classifies; its output is
/// `{<label_field>: label, confidence: calibrated}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// Training examples, CSV `text,label` with a header row, relative to the pipeline folder.
    pub train: PathBuf,
    /// The output field that gets the label.
    #[serde(default = "default_label_field")]
    pub label_field: String,
}

fn default_label_field() -> String {
    "category".into()
}

/// How a stage calls models.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Models in fallback order, by catalog name.
    pub models: Vec<String>,
    /// Per-attempt time limit.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Upper bound on completion tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Provider preferences applied to every model's endpoints.
    #[serde(default)]
    pub provider: ProviderPrefs,
    /// How long a job may wait for rate-limit capacity at one candidate before trying the next.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Models to try when a provider refuses the content (content_policy); none: dead-letter.
    #[serde(default)]
    pub content_fallback: Vec<String>,
}

fn default_max_wait() -> Duration {
    Duration::from_secs(2)
}

/// How endpoints are sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Cheapest first (input + output price).
    Price,
    /// Lowest observed latency first.
    Latency,
    /// Highest observed throughput first.
    Throughput,
}

/// Whether a provider may keep or train on prompts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPolicy {
    /// It may.
    #[default]
    Allow,
    /// It may not.
    Deny,
}

/// A price ceiling, US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrice {
    /// Highest prompt price allowed.
    #[serde(default)]
    pub input: Option<PerMTok>,
    /// Highest completion price allowed.
    #[serde(default)]
    pub output: Option<PerMTok>,
}

/// Provider preferences, as OpenRouter's `provider` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPrefs {
    /// Providers to try first, in this order.
    #[serde(default)]
    pub order: Vec<String>,
    /// Use only these providers.
    #[serde(default)]
    pub only: Vec<String>,
    /// Never use these providers.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// With false: only the providers in `order` (or only each model's top endpoint).
    #[serde(default = "yes")]
    pub allow_fallbacks: bool,
    /// Sort endpoints by this instead of the default price-weighted choice.
    #[serde(default)]
    pub sort: Option<SortBy>,
    /// Leave out endpoints priced above this.
    #[serde(default)]
    pub max_price: Option<MaxPrice>,
    /// Leave out endpoints that do not support every parameter the request uses.
    #[serde(default)]
    pub require_parameters: bool,
    /// `deny`: leave out endpoints that may keep or train on prompts.
    #[serde(default)]
    pub data_collection: DataPolicy,
    /// Leave out endpoints without zero data retention.
    #[serde(default)]
    pub zdr: bool,
}

fn yes() -> bool {
    true
}

impl Default for ProviderPrefs {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
            sort: None,
            max_price: None,
            require_parameters: false,
            data_collection: DataPolicy::Allow,
            zdr: false,
        }
    }
}

/// `:floor` (cheapest endpoint first) or `:nitro` (fastest first) after a model name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// No variant: the route's sort.
    #[default]
    Standard,
    /// Cheapest endpoint first.
    Floor,
    /// Highest-throughput endpoint first.
    Nitro,
}

/// Splits `model:floor` / `model:nitro`; other suffixes are part of the name.
pub fn split_variant(name: &str) -> (&str, Variant) {
    if let Some(base) = name.strip_suffix(":floor") {
        (base, Variant::Floor)
    } else if let Some(base) = name.strip_suffix(":nitro") {
        (base, Variant::Nitro)
    } else {
        (name, Variant::Standard)
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The gate as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Output property holding the model's self-reported confidence (0..1).
    #[serde(default = "default_confidence_field")]
    pub confidence_field: String,
    /// Below this confidence the job escalates (or, at the last stage, see `at_last_stage`).
    #[serde(default)]
    pub min_confidence: Option<f64>,
    /// Any matching rule escalates the job, whatever its confidence.
    #[serde(default)]
    pub escalate_if: Vec<Rule>,
    /// What an unsatisfied gate does at the last stage: `review` publishes the result with
    /// `needs_review: true`; `dead_letter` sends the job to the dead-letter topic.
    #[serde(default)]
    pub at_last_stage: LastStagePolicy,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            confidence_field: default_confidence_field(),
            min_confidence: None,
            escalate_if: Vec::new(),
            at_last_stage: LastStagePolicy::Review,
        }
    }
}

fn default_confidence_field() -> String {
    "confidence".to_string()
}

/// What an unsatisfied gate does when there is no later stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastStagePolicy {
    /// Publish the result flagged for review.
    #[default]
    Review,
    /// Dead-letter the job (`gate_rejected`).
    DeadLetter,
}

/// A gate rule over one output field (a dotted path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Dotted path into the output, e.g. `urgency` or `customer.tier`.
    pub field: String,
    /// Matches when the field equals this value.
    #[serde(default)]
    pub equals: Option<Value>,
    /// Matches when the field is one of these values.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<Value>>,
}

// ---------------------------------------------------------------------------------------------
// providers.yaml and catalog.yaml

/// `providers.yaml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderFile>,
}

/// The API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFamily {
    /// OpenAI chat completions (OpenAI, OpenRouter, vLLM, Ollama, llm-sim, …).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// One provider as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// API family.
    pub api: ApiFamily,
    /// Base URL, up to and including the version segment (`https://openrouter.ai/api/v1`).
    /// `SWITCHYARD_PROVIDER_<NAME>_URL` overrides it.
    pub base_url: String,
    /// The key as a reference (`env:NAME` or `file:PATH`); none for keyless local servers.
    /// Shorthand for a one-entry `keys` list.
    #[serde(default)]
    pub api_key: Option<KeyRef>,
    /// Several keys, tried in order; each with its own limits.
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    /// Requests per minute this process may send to the provider (all keys together).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt + completion budget) for the provider.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Requests in flight at once to this provider.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Extra headers sent with every request (not secrets: use api_key for those).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Job metadata entries sent as request headers of the same name, e.g. `x-sim-oracle`
    /// (the gold answer, which only llm-sim reads) for `switchyard eval`. Empty for real
    /// providers: metadata is never sent unless listed here.
    #[serde(default)]
    pub forward_metadata: Vec<String>,
}

/// One key of a provider, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Where the key is (`env:NAME` or `file:PATH`).
    pub key: KeyRef,
    /// Requests per minute for this key.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute for this key.
    #[serde(default)]
    pub tpm: Option<u32>,
}

/// `tenants.yaml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// Tenants by name.
    pub tenants: BTreeMap<String, TenantFile>,
}

/// One tenant as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Catalog models it may use (all when absent).
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Providers it may use (all when absent).
    #[serde(default)]
    pub allowed_providers: Vec<String>,
    /// `deny`: only endpoints that do not keep prompts.
    #[serde(default)]
    pub data_collection: DataPolicy,
    /// Budgets in US dollars.
    #[serde(default)]
    pub budget: BudgetFile,
    /// Its own keys by provider (BYOK), tried before the provider's shared keys.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyFile>,
    /// Whether shared keys may be used after its own (default true).
    #[serde(default = "yes")]
    pub shared_keys: bool,
}

/// Budgets as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// Per UTC day, US dollars.
    #[serde(default)]
    pub daily_usd: Option<f64>,
    /// Per UTC month, US dollars.
    #[serde(default)]
    pub monthly_usd: Option<f64>,
}

/// `catalog.yaml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Models by catalog name.
    pub models: BTreeMap<String, ModelFile>,
}

/// One model as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Context window in tokens.
    pub context_length: u32,
    /// What the model supports: `json_schema`, `tools`, `logprobs`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Request parameters the model takes (`response_format`, `max_tokens`, `temperature`, …);
    /// empty means unknown (`require_parameters` then keeps it).
    #[serde(default)]
    pub parameters: Vec<String>,
    /// Where the model can be called.
    pub endpoints: Vec<EndpointFile>,
}

/// One endpoint (provider × model) as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    /// Provider name from providers.yaml.
    pub provider: String,
    /// The provider's own id for the model, when it differs from the catalog name.
    #[serde(default)]
    pub model_id: Option<String>,
    /// Prices in US dollars per million tokens.
    pub price: PriceFile,
    /// Whether the provider may keep or train on prompts.
    #[serde(default)]
    pub data_collection: DataPolicy,
    /// Zero data retention.
    #[serde(default)]
    pub zdr: bool,
    /// Weight precision served (`fp8`, `bf16`, …), informational.
    #[serde(default)]
    pub quantization: Option<String>,
    /// Typical output speed in tokens/s, used for `:nitro` until measured.
    #[serde(default)]
    pub throughput: Option<f64>,
    /// Typical time to first token, used for `sort: latency` until measured.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// Parameters this endpoint takes, when they differ from the model's.
    #[serde(default)]
    pub parameters: Option<Vec<String>>,
}

/// Prices as written, US dollars per million tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    /// Prompt tokens.
    pub input: PerMTok,
    /// Completion tokens.
    pub output: PerMTok,
    /// Cached prompt tokens (defaults to the input price).
    #[serde(default)]
    pub cached: Option<PerMTok>,
}

// ---------------------------------------------------------------------------------------------
// The resolved pipeline

/// A provider ready to call.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Name from providers.yaml.
    pub name: String,
    /// API family.
    pub api: ApiFamily,
    /// Effective base URL (after any environment override).
    pub base_url: String,
    /// Keys in the order they are tried (empty for keyless servers).
    pub keys: Vec<ProviderKey>,
    /// Requests per minute, all keys together.
    pub rpm: Option<u32>,
    /// Tokens per minute, all keys together.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Job metadata entries sent as request headers.
    pub forward_metadata: Vec<String>,
}

/// One resolved key of a provider.
#[derive(Debug, Clone)]
pub struct ProviderKey {
    /// Where it came from (safe to print).
    pub key_ref: KeyRef,
    /// The key.
    pub secret: Secret,
    /// Requests per minute for this key.
    pub rpm: Option<u32>,
    /// Tokens per minute for this key.
    pub tpm: Option<u32>,
}

/// A callable endpoint of a model, with its price.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Catalog model name.
    pub model: String,
    /// Provider name.
    pub provider: String,
    /// What the provider calls the model.
    pub model_id: String,
    /// Prompt token price.
    pub input: PerMTok,
    /// Completion token price.
    pub output: PerMTok,
    /// Cached prompt token price.
    pub cached: PerMTok,
    /// Whether the model takes `response_format: json_schema`.
    pub json_schema: bool,
    /// Context window.
    pub context_length: u32,
    /// Data policy.
    pub data_collection: DataPolicy,
    /// Zero data retention.
    pub zdr: bool,
    /// Quantization, if published.
    pub quantization: Option<String>,
    /// Throughput hint (tokens/s).
    pub throughput: Option<f64>,
    /// Latency hint.
    pub latency: Option<Duration>,
    /// Supported parameters (empty: unknown).
    pub parameters: Vec<String>,
}

impl Endpoint {
    /// `provider/model`, the endpoint's name in logs and explanations.
    pub fn id(&self) -> String {
        format!("{}:{}", self.provider, self.model)
    }

    /// Input + output price, the figure `sort: price` and `:floor` order by.
    pub fn blended_price(&self) -> u64 {
        self.input.0 + self.output.0
    }
}

/// A model in a stage's route, with its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteModel {
    /// Catalog name.
    pub name: String,
    /// `:floor`, `:nitro` or neither.
    pub variant: Variant,
    /// Every endpoint the catalog lists for it.
    pub endpoints: Vec<Endpoint>,
}

/// Topics of a pipeline, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Intake.
    pub intake: String,
    /// Results.
    pub results: String,
    /// Dead letters.
    pub dlq: String,
    /// Ledger records.
    pub ledger: String,
}

/// A stage, resolved: templates read, schema parsed, endpoints listed.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Name.
    pub name: String,
    /// Position in the pipeline (0 = first).
    pub index: usize,
    /// The topic it consumes.
    pub input_topic: String,
    /// System prompt template source.
    pub system_prompt: Option<String>,
    /// User prompt template source.
    pub prompt: String,
    /// Output JSON Schema.
    pub output_schema: Value,
    /// The route's models in fallback order, with their endpoints.
    pub models: Vec<RouteModel>,
    /// Models for content-policy fallback.
    pub content_fallback: Vec<RouteModel>,
    /// Route settings.
    pub route: RouteSpec,
    /// The classifier of a local stage (trained when the pipeline loads).
    pub local: Option<LocalStage>,
    /// Gate settings.
    pub gate: GateSpec,
}

/// A local stage's trained classifier.
#[derive(Debug, Clone)]
pub struct LocalStage {
    /// The classifier.
    pub classifier: std::sync::Arc<crate::classify::Classifier>,
    /// The output field that gets the label.
    pub label_field: String,
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// Topics.
    pub topics: Topics,
    /// Concurrency limits.
    pub concurrency: Concurrency,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Providers used by any stage, by name.
    pub providers: BTreeMap<String, Provider>,
    /// Sample payloads file, if any.
    pub samples: Option<PathBuf>,
    /// Tenants by name; `None` when the pipeline has no tenants file (no tenant checks).
    pub tenants: Option<BTreeMap<String, crate::config::tenant::Tenant>>,
    /// Result order guarantee.
    pub ordering: Ordering,
}

impl Pipeline {
    /// Loads `DIR/pipeline.yaml` and everything it references.
    pub fn load(dir: &Path) -> Result<Pipeline, ConfigErrors> {
        let path = dir.join("pipeline.yaml");
        if !path.is_file() {
            let what = if dir.is_dir() {
                "has no pipeline.yaml"
            } else {
                "does not exist"
            };
            return Err(err(
                dir,
                None,
                format!("{what}; give the folder of a pipeline, e.g. pipelines/support-triage"),
            )
            .into());
        }
        let (file, text): (PipelineFile, String) = read_yaml(&path)?;
        Self::resolve(dir, &path, &text, file)
    }

    /// The stage after `index`, if any.
    pub fn next_stage(&self, index: usize) -> Option<&Stage> {
        self.stages.get(index + 1)
    }

    /// Every topic the pipeline uses.
    pub fn all_topics(&self) -> Vec<String> {
        let mut t = vec![
            self.topics.intake.clone(),
            self.topics.results.clone(),
            self.topics.dlq.clone(),
            self.topics.ledger.clone(),
        ];
        for s in &self.stages {
            if !t.contains(&s.input_topic) {
                t.push(s.input_topic.clone());
            }
        }
        t
    }

    /// Points every provider at `base` (scheme://host:port), keeping each URL's path.
    /// Used by the demo to reach its in-process simulator.
    pub fn point_providers_at(&mut self, base: &str) {
        for p in self.providers.values_mut() {
            let path = url_path(&p.base_url);
            p.base_url = format!("{}{}", base.trim_end_matches('/'), path);
        }
    }

    fn resolve(
        dir: &Path,
        path: &Path,
        text: &str,
        file: PipelineFile,
    ) -> Result<Pipeline, ConfigErrors> {
        let mut errors = Vec::new();
        let at = |needle: &str| line_of(text, needle);
        // Lines of values, from the YAML parser's spans.
        let spans = Spans::parse(text);

        if file.stages.is_empty() {
            errors.push(err(
                path,
                at("stages"),
                "a pipeline needs at least one stage",
            ));
        }
        let catalog_path = dir.join(&file.catalog);
        let providers_path = dir.join(&file.providers);
        let (catalog, catalog_text): (CatalogFile, String) = read_yaml(&catalog_path)?;
        let (providers_file, providers_text): (ProvidersFile, String) = read_yaml(&providers_path)?;

        for (name, m) in &catalog.models {
            for e in &m.endpoints {
                if !providers_file.providers.contains_key(&e.provider) {
                    errors.push(err(
                        &catalog_path,
                        line_of(&catalog_text, &format!("provider: {}", e.provider)),
                        format!(
                            "model `{name}` has an endpoint at provider `{}`, which {} does not define; add it there or remove the endpoint",
                            e.provider,
                            providers_path.display()
                        ),
                    ));
                }
            }
        }

        let name = file.name.clone();
        let topics = Topics {
            intake: file
                .topics
                .intake
                .clone()
                .unwrap_or_else(|| format!("{name}.intake")),
            results: file
                .topics
                .results
                .clone()
                .unwrap_or_else(|| format!("{name}.results")),
            dlq: file
                .topics
                .dlq
                .clone()
                .unwrap_or_else(|| format!("{name}.dlq")),
            ledger: file
                .topics
                .ledger
                .clone()
                .unwrap_or_else(|| format!("{name}.ledger")),
        };
        let escalate = file
            .topics
            .escalate
            .clone()
            .unwrap_or_else(|| format!("{name}.escalate"));

        let mut stages = Vec::new();
        let mut used_providers = Vec::new();
        let mut seen = Vec::new();
        for (index, s) in file.stages.iter().enumerate() {
            let stage_at = |rest: &[Step<'_>]| {
                let mut path = vec![Step::Key("stages"), Step::Index(index)];
                path.extend_from_slice(rest);
                spans.line(&path)
            };
            let stage_line = stage_at(&[]);
            if seen.contains(&s.name) {
                errors.push(err(
                    path,
                    stage_line,
                    format!("stage name `{}` is used twice", s.name),
                ));
            }
            seen.push(s.name.clone());
            let read = |p: &Path, what: &str, errors: &mut Vec<ConfigError>| -> Option<String> {
                let full = dir.join(p);
                match std::fs::read_to_string(&full) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        errors.push(err(
                            path,
                            at(&p.display().to_string()),
                            format!(
                                "stage `{}`: cannot read {what} {}: {e}",
                                s.name,
                                full.display()
                            ),
                        ));
                        None
                    }
                }
            };
            let prompt = read(&s.prompt, "prompt", &mut errors);
            let system_prompt = s
                .system_prompt
                .as_ref()
                .and_then(|p| read(p, "system prompt", &mut errors));
            for (src, p) in [
                (&prompt, Some(&s.prompt)),
                (&system_prompt, s.system_prompt.as_ref()),
            ] {
                if let (Some(src), Some(p)) = (src, p)
                    && let Err(e) = crate::prompt::check(src)
                {
                    let full = dir.join(p);
                    errors.push(err(&full, e.line(), format!("template error: {e}")));
                }
            }
            let schema = read(&s.output_schema, "output schema", &mut errors).and_then(|t| {
                let full = dir.join(&s.output_schema);
                match serde_json::from_str::<Value>(&t) {
                    Ok(v) => match crate::envelope::compile_schema(&v) {
                        Ok(_) => Some(v),
                        Err(e) => {
                            errors.push(err(&full, None, format!("not a valid JSON Schema: {e}")));
                            None
                        }
                    },
                    Err(e) => {
                        errors.push(err(&full, Some(e.line()), format!("not valid JSON: {e}")));
                        None
                    }
                }
            });
            let local = s.local.as_ref().and_then(|l| {
                let train = dir.join(&l.train);
                match crate::classify::read_examples(&train)
                    .and_then(|rows| crate::classify::Classifier::train(&rows))
                {
                    Ok(c) => Some(LocalStage {
                        classifier: std::sync::Arc::new(c),
                        label_field: l.label_field.clone(),
                    }),
                    Err(e) => {
                        errors.push(err(
                            path,
                            stage_at(&[Step::Key("local"), Step::Key("train")]),
                            format!("stage `{}`: local classifier: {e}", s.name),
                        ));
                        None
                    }
                }
            });
            if s.local.is_some() && !s.route.models.is_empty() {
                errors.push(err(
                    path,
                    stage_line,
                    format!(
                        "stage `{}` has both `local` and route.models; a stage is either a local classifier or calls models",
                        s.name
                    ),
                ));
            }
            if s.route.models.is_empty() && s.local.is_none() {
                errors.push(err(
                    path,
                    stage_line,
                    format!(
                        "stage `{}` routes to no models; list at least one under route.models",
                        s.name
                    ),
                ));
            }
            let mut resolve_models = |names: &[String],
                                      what: &str,
                                      key: &str,
                                      errors: &mut Vec<ConfigError>|
             -> Vec<RouteModel> {
                let mut out = Vec::new();
                for (k, written) in names.iter().enumerate() {
                    let (m, variant) = split_variant(written);
                    match catalog.models.get(m) {
                        None => errors.push(err(
                            path,
                            stage_at(&[Step::Key("route"), Step::Key(key), Step::Index(k)]),
                            format!(
                                "stage `{}` {what} model `{m}`, which {} does not list; add it to the catalog or fix the name",
                                s.name,
                                catalog_path.display()
                            ),
                        )),
                        Some(model) => {
                            for e in &model.endpoints {
                                if !used_providers.contains(&e.provider) {
                                    used_providers.push(e.provider.clone());
                                }
                            }
                            out.push(RouteModel {
                                name: m.to_string(),
                                variant,
                                endpoints: model.endpoints.iter().map(|e| endpoint(m, model, e)).collect(),
                            });
                        }
                    }
                }
                out
            };
            let models = resolve_models(&s.route.models, "routes to", "models", &mut errors);
            let content_fallback = resolve_models(
                &s.route.content_fallback,
                "falls back on content refusals to",
                "content_fallback",
                &mut errors,
            );
            let prefs = &s.route.provider;
            let named = [
                ("order", &prefs.order),
                ("only", &prefs.only),
                ("ignore", &prefs.ignore),
            ];
            for (key, p, k) in named
                .iter()
                .flat_map(|(key, list)| list.iter().enumerate().map(move |(k, p)| (*key, p, k)))
            {
                if !providers_file.providers.contains_key(p) {
                    errors.push(err(
                        path,
                        stage_at(&[
                            Step::Key("route"),
                            Step::Key("provider"),
                            Step::Key(key),
                            Step::Index(k),
                        ]),
                        format!(
                            "stage `{}`: provider preference names `{p}`, which {} does not define",
                            s.name,
                            providers_path.display()
                        ),
                    ));
                }
            }
            if let Some(c) = s.gate.min_confidence
                && !(0.0..=1.0).contains(&c)
            {
                errors.push(err(
                    path,
                    stage_at(&[Step::Key("gate"), Step::Key("min_confidence")]),
                    format!("stage `{}`: min_confidence {c} is outside 0..1", s.name),
                ));
            }
            for (j, r) in s.gate.escalate_if.iter().enumerate() {
                if r.equals.is_none() && r.one_of.is_none() {
                    errors.push(err(
                        path,
                        stage_at(&[Step::Key("gate"), Step::Key("escalate_if"), Step::Index(j)]),
                        format!(
                            "stage `{}`: rule on `{}` needs `equals` or `in`",
                            s.name, r.field
                        ),
                    ));
                }
            }
            let input_topic = s.input_topic.clone().unwrap_or_else(|| match index {
                0 => topics.intake.clone(),
                1 => escalate.clone(),
                _ => format!("{name}.escalate.{}", s.name),
            });
            if let (Some(prompt), Some(schema)) = (prompt, schema) {
                stages.push(Stage {
                    name: s.name.clone(),
                    index,
                    input_topic,
                    system_prompt,
                    prompt,
                    output_schema: schema,
                    models,
                    content_fallback,
                    route: s.route.clone(),
                    local,
                    gate: s.gate.clone(),
                });
            }
        }

        {
            let mut seen_topics: Vec<(&str, String)> = vec![
                (topics.results.as_str(), "results".to_string()),
                (topics.dlq.as_str(), "dead letters".to_string()),
                (topics.ledger.as_str(), "ledger".to_string()),
            ];
            for st in &stages {
                seen_topics.push((
                    st.input_topic.as_str(),
                    format!("input of stage `{}`", st.name),
                ));
            }
            for (i, (t, what)) in seen_topics.iter().enumerate() {
                if let Some((_, other)) = seen_topics[..i].iter().find(|(u, _)| u == t) {
                    errors.push(err(path, at(t), format!("topic `{t}` is used both as {other} and as {what}; every role needs its own topic")));
                }
            }
        }

        let mut providers = BTreeMap::new();
        for pname in used_providers {
            let Some(p) = providers_file.providers.get(&pname) else {
                continue;
            };
            let env_name = format!("SWITCHYARD_PROVIDER_{}_URL", env_key(&pname));
            let from_env = std::env::var(&env_name).ok();
            let base_url = from_env.clone().unwrap_or_else(|| p.base_url.clone());
            if from_env.is_some()
                && !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            {
                errors.push(err(&providers_path, None, format!("provider `{pname}`: {env_name}=`{base_url}` must start with http:// or https://")));
            } else if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                errors.push(err(&providers_path, line_of(&providers_text, &p.base_url), format!("provider `{pname}`: base_url `{base_url}` must start with http:// or https://")));
            }
            let mut written_keys: Vec<KeyFile> = p
                .api_key
                .iter()
                .map(|k| KeyFile {
                    key: k.clone(),
                    rpm: None,
                    tpm: None,
                })
                .collect();
            written_keys.extend(p.keys.iter().cloned());
            let mut keys = Vec::new();
            for k in written_keys {
                match k.key.resolve() {
                    Ok(secret) => keys.push(ProviderKey {
                        key_ref: k.key.clone(),
                        secret,
                        rpm: k.rpm,
                        tpm: k.tpm,
                    }),
                    Err(e) => errors.push(err(
                        &providers_path,
                        line_of(&providers_text, &k.key.to_string()),
                        format!("provider `{pname}`: {e}"),
                    )),
                }
            }
            providers.insert(
                pname.clone(),
                Provider {
                    name: pname,
                    api: p.api,
                    base_url,
                    keys,
                    rpm: p.rpm,
                    tpm: p.tpm,
                    max_concurrency: p.max_concurrency,
                    headers: p.headers.clone(),
                    forward_metadata: p.forward_metadata.clone(),
                },
            );
        }

        if let Some(s) = &file.samples {
            match first_sample(&dir.join(s), &file.name) {
                Ok(Some(job)) => check_prompts_render(dir, &file, &stages, &job, &mut errors),
                Ok(None) => {}
                Err(e) => errors.push(err(path, at(&s.display().to_string()), e)),
            }
        }
        let tenants = match &file.tenants {
            None => None,
            Some(t) => {
                let tpath = dir.join(t);
                let (tf, ttext): (TenantsFile, String) = read_yaml(&tpath)?;
                Some(resolve_tenants(
                    &tpath,
                    &ttext,
                    tf,
                    &catalog,
                    &providers_file,
                    &mut errors,
                ))
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Pipeline {
            tenants,
            ordering: file.ordering,
            name,
            description: file.description,
            dir: dir.to_path_buf(),
            topics,
            concurrency: file.concurrency,
            stages,
            providers,
            samples: file.samples.map(|s| dir.join(s)),
        })
    }
}

/// The first sample payload as a job, to try the prompts on.
fn first_sample(path: &Path, pipeline: &str) -> Result<Option<crate::envelope::Intake>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read samples file {}: {e}", path.display()))?;
    let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let payload: Value = serde_json::from_str(line).map_err(|e| {
        format!(
            "samples file {}: first line is not JSON: {e}",
            path.display()
        )
    })?;
    Ok(Some(crate::envelope::Intake {
        job_id: "sample-1".into(),
        tenant: "sample".into(),
        pipeline: pipeline.to_string(),
        payload,
        created_at: crate::envelope::now(),
        metadata: BTreeMap::new(),
        redrive_count: 0,
    }))
}

/// Renders every stage's prompts for a sample job (with a made-up escalation for later
/// stages), so unknown filters and fields the samples lack are found at start.
fn check_prompts_render(
    dir: &Path,
    file: &PipelineFile,
    stages: &[Stage],
    job: &crate::envelope::Intake,
    errors: &mut Vec<ConfigError>,
) {
    use crate::envelope::{EscalationReason, EscalationStep};
    for (stage, written) in stages.iter().zip(&file.stages) {
        let Ok(prompts) =
            crate::prompt::Prompts::new(stage.system_prompt.as_deref(), &stage.prompt)
        else {
            continue;
        };
        let history: Vec<EscalationStep> = stages[..stage.index]
            .iter()
            .map(|earlier| EscalationStep {
                from_stage: earlier.name.clone(),
                to_stage: stage.name.clone(),
                reason: EscalationReason::LowConfidence,
                detail: "sample".into(),
                output: Value::Object(Default::default()),
                confidence: Some(0.5),
            })
            .collect();
        if let Err(e) = prompts.render(job, &history, "{}") {
            let template = match e.name() {
                Some("system") => written.system_prompt.clone().unwrap_or_default(),
                _ => written.prompt.clone(),
            };
            errors.push(err(
                &dir.join(template),
                e.line(),
                format!(
                    "stage `{}`: the prompt does not render for the first sample job: {e}",
                    stage.name
                ),
            ));
        }
    }
}

fn resolve_tenants(
    path: &Path,
    text: &str,
    file: TenantsFile,
    catalog: &CatalogFile,
    providers: &ProvidersFile,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, crate::config::tenant::Tenant> {
    let usd = |v: Option<f64>,
               what: &str,
               name: &str,
               errors: &mut Vec<ConfigError>|
     -> Option<crate::money::MicroUsd> {
        let v = v?;
        if !(v.is_finite() && v >= 0.0) {
            errors.push(err(
                path,
                line_of(text, what),
                format!("tenant `{name}`: {what} {v} must be a non-negative number of dollars"),
            ));
            return None;
        }
        Some(crate::money::MicroUsd((v * 1e6).round() as u64))
    };
    let mut out = BTreeMap::new();
    for (name, t) in file.tenants {
        for m in &t.allowed_models {
            if !catalog.models.contains_key(m) {
                errors.push(err(
                    path,
                    line_of(text, m),
                    format!("tenant `{name}` allows model `{m}`, which the catalog does not list"),
                ));
            }
        }
        for p in t.allowed_providers.iter().chain(t.keys.keys()) {
            if !providers.providers.contains_key(p) {
                errors.push(err(
                    path,
                    line_of(text, p),
                    format!(
                        "tenant `{name}` names provider `{p}`, which providers.yaml does not define"
                    ),
                ));
            }
        }
        let mut keys = Vec::new();
        for (provider, k) in &t.keys {
            match k.key.resolve() {
                Ok(secret) => keys.push((
                    provider.clone(),
                    ProviderKey {
                        key_ref: k.key.clone(),
                        secret,
                        rpm: k.rpm,
                        tpm: k.tpm,
                    },
                )),
                Err(e) => errors.push(err(
                    path,
                    line_of(text, &k.key.to_string()),
                    format!("tenant `{name}`, provider `{provider}`: {e}"),
                )),
            }
        }
        let daily = usd(t.budget.daily_usd, "daily_usd", &name, errors);
        let monthly = usd(t.budget.monthly_usd, "monthly_usd", &name, errors);
        out.insert(
            name.clone(),
            crate::config::tenant::Tenant {
                name,
                allowed_models: t.allowed_models,
                allowed_providers: t.allowed_providers,
                data_collection: t.data_collection,
                daily,
                monthly,
                keys,
                shared_keys: t.shared_keys,
            },
        );
    }
    out
}

fn endpoint(name: &str, model: &ModelFile, e: &EndpointFile) -> Endpoint {
    Endpoint {
        model: name.to_string(),
        provider: e.provider.clone(),
        model_id: e.model_id.clone().unwrap_or_else(|| name.to_string()),
        input: e.price.input,
        output: e.price.output,
        cached: e.price.cached.unwrap_or(e.price.input),
        json_schema: model.capabilities.iter().any(|c| c == "json_schema"),
        context_length: model.context_length,
        data_collection: e.data_collection,
        zdr: e.zdr,
        quantization: e.quantization.clone(),
        throughput: e.throughput,
        latency: e.latency,
        parameters: e
            .parameters
            .clone()
            .unwrap_or_else(|| model.parameters.clone()),
    }
}

/// `simcloud` → `SIMCLOUD`, `open-router` → `OPEN_ROUTER`.
pub fn env_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| &rest[i..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_carry_line_and_column() {
        let text = "name: x\nstages:\n  - name: a\n    promt: p.md\n";
        let e = parse_yaml::<PipelineFile>(Path::new("p/pipeline.yaml"), text).unwrap_err();
        assert_eq!(e.line, Some(4));
        let shown = e.to_string();
        assert!(shown.starts_with("p/pipeline.yaml:4:"), "{shown}");
        assert!(shown.contains("unknown field `promt`"), "{shown}");
    }

    #[test]
    fn the_example_tenants_file_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/tenants.example.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let t: TenantsFile = parse_yaml(&path, &text).unwrap();
        assert_eq!(t.tenants["acme"].budget.daily_usd, Some(25.0));
        assert_eq!(t.tenants["acme"].data_collection, DataPolicy::Deny);
        assert!(t.tenants["globex"].shared_keys);
        let bad = parse_yaml::<TenantsFile>(&path, "tenants:\n  x:\n    budgte: {}\n").unwrap_err();
        assert_eq!(bad.line, Some(3));
    }

    #[test]
    fn url_paths_and_env_keys() {
        assert_eq!(
            url_path("http://127.0.0.1:8089/simcloud/v1"),
            "/simcloud/v1"
        );
        assert_eq!(url_path("https://api.example.com"), "");
        assert_eq!(env_key("open-router"), "OPEN_ROUTER");
    }

    /// Copies the shipped pipelines folder (pipelines refer to ../catalog.yaml) into `dest`.
    fn copy_pipelines(dest: &Path) -> std::path::PathBuf {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        }
        let to = dest.join("pipelines");
        copy(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines"),
            &to,
        );
        to
    }

    #[test]
    fn a_bad_value_in_the_second_stage_is_reported_at_its_own_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_pipelines(tmp.path()).join("support-triage");
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        // Both stages have a min_confidence; only the second one's becomes invalid, and the
        // second stage also names an unknown model and provider.
        let second = text.rfind("min_confidence: 0.5").unwrap();
        let mut edited = text.clone();
        edited.replace_range(
            second..second + "min_confidence: 0.5".len(),
            "min_confidence: 1.5",
        );
        let edited = edited.replacen(
            "models: [simlab/sage-pro, simlab/sage-max]",
            "models: [simlab/sage-pro, simlab/nope]",
            1,
        );
        std::fs::write(&file, &edited).unwrap();
        let line_of_text =
            |needle: &str| edited.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let errors = Pipeline::load(&dir).unwrap_err();
        let find = |what: &str| {
            errors
                .0
                .iter()
                .find(|e| e.message.contains(what))
                .unwrap_or_else(|| panic!("no error about {what}: {errors}"))
        };
        let bad = find("min_confidence 1.5");
        assert_eq!(
            bad.line,
            Some(line_of_text("min_confidence: 1.5")),
            "{errors}"
        );
        assert!(bad.message.contains("stage `resolve`"), "{errors}");
        // Stage 1's min_confidence sits on an earlier line; a substring search would find it.
        assert!(line_of_text("min_confidence: 0.68") < bad.line.unwrap());
        let model = find("simlab/nope");
        assert_eq!(model.line, Some(line_of_text("simlab/nope")), "{errors}");
    }
}
