//! The configuration files as written: serde types with unknown keys denied.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::money::PerMTok;
use crate::secret::KeyRef;

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
    /// What one job is, in reports (`ticket`, `document`, …; `job` when absent).
    #[serde(default)]
    pub noun: Option<String>,
    /// Tenants file, relative to the pipeline folder; without one, tenants are not checked.
    #[serde(default)]
    pub tenants: Option<PathBuf>,
    /// Where a job's tenant comes from: `payload` (the job's `tenant` field; only for intake
    /// topics that trusted producers alone may write), `topic` (one intake topic per tenant of
    /// the tenants file, `<intake>.<tenant>`, each protected by a Kafka ACL), or `header` (a
    /// header set by an authenticated bridge, see `tenant_header`).
    #[serde(default)]
    pub tenant_from: TenantFrom,
    /// With `tenant_from: header`, the header's name.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// `key`: results for one Kafka key come out in intake order (jobs of a key run one at a
    /// time, escalations run inline in the first stage's worker).
    #[serde(default)]
    pub ordering: Ordering,
    /// The stages, in escalation order.
    pub stages: Vec<StageFile>,
}

pub(crate) fn default_catalog() -> PathBuf {
    PathBuf::from("../catalog.yaml")
}

pub(crate) fn default_providers() -> PathBuf {
    PathBuf::from("../providers.yaml")
}

pub(crate) fn default_tenant_header() -> String {
    "switchyard-tenant".into()
}

/// Where a job's tenant comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantFrom {
    /// The job's own `tenant` field: whoever can produce to intake can claim any tenant.
    #[default]
    Payload,
    /// The intake topic: `<intake>.<tenant>`, one per tenant of the tenants file.
    Topic,
    /// A message header set by an authenticated bridge.
    Header,
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
    /// Input bytes held by jobs in flight (waiting ones included, e.g. behind an earlier job of
    /// their key with `ordering: key`), in MiB; at it no further message is taken.
    #[serde(default = "default_in_flight_mib")]
    pub max_in_flight_mib: usize,
    /// On shutdown, how long in-flight jobs may take to finish before they are handed back.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On a rebalance, how long in-flight jobs of revoked partitions may take to finish.
    #[serde(default = "default_rebalance_drain", with = "humantime_serde")]
    pub rebalance_timeout: Duration,
}

pub(crate) fn default_in_flight() -> usize {
    512
}
pub(crate) fn default_in_flight_per_partition() -> usize {
    128
}
pub(crate) fn default_in_flight_mib() -> usize {
    64
}
pub(crate) fn default_drain() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_rebalance_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            max_in_flight_per_partition: default_in_flight_per_partition(),
            max_in_flight_mib: default_in_flight_mib(),
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
    /// Precision the tier's answers must reach on cross-validated training data; the
    /// threshold is chosen for it at load, and when the data cannot support it every job
    /// escalates. Without it the tier answers everything in scope and the gate decides.
    #[serde(default)]
    pub precision: Option<f64>,
    /// Optional out-of-scope examples (CSV `text,label` with a header; labels ignored) that
    /// train a "none of these" class the tier never answers with.
    #[serde(default)]
    pub oos_examples: Option<PathBuf>,
}

pub(crate) fn default_label_field() -> String {
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
    /// Fields added to this stage's request bodies, over the provider's own `extra_body`
    /// (e.g. `{transforms: [], reasoning: {effort: low}}` for OpenRouter).
    #[serde(default)]
    pub extra_body: serde_json::Map<String, Value>,
}

pub(crate) fn default_max_wait() -> Duration {
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
    /// Highest prompt price allowed (OpenRouter's name: `prompt`).
    #[serde(default, alias = "prompt")]
    pub input: Option<PerMTok>,
    /// Highest completion price allowed (OpenRouter's name: `completion`).
    #[serde(default, alias = "completion")]
    pub output: Option<PerMTok>,
    /// Highest price per request, US dollars; passed on to OpenRouter (the catalog has no
    /// per-request prices to filter by here).
    #[serde(default)]
    pub request: Option<f64>,
    /// Highest price per image, US dollars; passed on to OpenRouter.
    #[serde(default)]
    pub image: Option<f64>,
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
    /// Sort endpoints by this instead of the default price-weighted choice: `price`,
    /// `latency` or `throughput`, or OpenRouter's object form `{by: price, partition: …}`.
    #[serde(default, deserialize_with = "sort_either")]
    pub sort: Option<SortBy>,
    /// Only endpoints serving one of these quantizations (`fp8`, `int4`, …); endpoints whose
    /// quantization the catalog does not give are kept.
    #[serde(default)]
    pub quantizations: Vec<String>,
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

pub(crate) fn yes() -> bool {
    true
}

/// `sort` as a name or as OpenRouter's object `{by, partition}`.
fn sort_either<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SortBy>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Name(SortBy),
        Object {
            by: SortBy,
            #[serde(default)]
            #[allow(dead_code)]
            partition: Option<String>,
        },
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::Name(by) | Either::Object { by, .. } => by,
    }))
}

impl Default for ProviderPrefs {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
            sort: None,
            quantizations: Vec::new(),
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

pub(crate) fn default_timeout() -> Duration {
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
    /// Where the confidence compared with `min_confidence` comes from: `reported` (the
    /// model's own `confidence_field`), `logprob` (the probability of the chosen value of
    /// `decision_field`, from token logprobs), `agreement` (1 when the local tier's label
    /// agrees with the model's, 0 when not). With several, the lowest counts; sources a call
    /// cannot give (no logprobs, no local label) are skipped, and with none left the reported
    /// confidence counts.
    #[serde(default = "default_confidence_from")]
    pub confidence_from: Vec<ConfidenceSource>,
    /// The output field whose value is the stage's decision (for `logprob` and `agreement`);
    /// defaults to the first `escalate_if` rule's field.
    #[serde(default)]
    pub decision_field: Option<String>,
    /// Share of the jobs this stage accepts (0..1) that the next stage also runs, as a shadow:
    /// its answer is compared with this stage's decision and recorded in the ledger as an
    /// audit; nothing of it is published. Measures the stage's precision on live traffic.
    #[serde(default)]
    pub audit: Option<f64>,
    /// The precision this stage's accepted answers should reach: the audits move
    /// `min_confidence` (up when they show less, down in small steps when they show more),
    /// within `threshold_bounds`. Needs `audit` and `min_confidence`.
    #[serde(default)]
    pub target_precision: Option<f64>,
    /// Lowest and highest threshold `target_precision` may set (default 0.5 and 0.99).
    #[serde(default)]
    pub threshold_bounds: Option<[f64; 2]>,
}

/// Threshold bounds when `target_precision` is set without `threshold_bounds`.
pub const DEFAULT_THRESHOLD_BOUNDS: [f64; 2] = [0.5, 0.99];

/// A source of confidence for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceSource {
    /// The model's self-reported confidence.
    Reported,
    /// The probability of the decision's tokens.
    Logprob,
    /// Agreement with the local tier's label.
    Agreement,
}

pub(crate) fn default_confidence_from() -> Vec<ConfidenceSource> {
    vec![ConfidenceSource::Reported]
}

impl GateSpec {
    /// The field whose value is the decision.
    pub fn decision_field(&self) -> Option<&str> {
        self.decision_field
            .as_deref()
            .or_else(|| self.escalate_if.first().map(|r| r.field.as_str()))
    }

    /// Whether the gate reads evidence beyond the reported confidence (logprob, agreement).
    pub fn uses_evidence(&self) -> bool {
        self.confidence_from
            .iter()
            .any(|c| *c != ConfidenceSource::Reported)
    }

    /// Whether calls should ask for token logprobs.
    pub fn wants_logprobs(&self) -> bool {
        self.confidence_from.contains(&ConfidenceSource::Logprob)
    }

    /// The bounds `target_precision` moves the threshold within.
    pub fn bounds(&self) -> [f64; 2] {
        self.threshold_bounds.unwrap_or(DEFAULT_THRESHOLD_BOUNDS)
    }
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            confidence_field: default_confidence_field(),
            min_confidence: None,
            escalate_if: Vec::new(),
            at_last_stage: LastStagePolicy::Review,
            confidence_from: default_confidence_from(),
            decision_field: None,
            audit: None,
            target_precision: None,
            threshold_bounds: None,
        }
    }
}

pub(crate) fn default_confidence_field() -> String {
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
    /// OpenRouter: OpenAI chat completions plus OpenRouter's routing among its upstream
    /// providers. The route's provider preferences that apply upstream (`sort`, `max_price`,
    /// `quantizations`, `data_collection`, `zdr`, `require_parameters`) go out as the request's
    /// `provider` object; `order`, `only` and `ignore` name Switchyard's providers and do not
    /// (set OpenRouter's own in `extra_body.provider`).
    Openrouter,
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
    /// Fields added to every request body sent to this provider, as the provider documents
    /// them (e.g. OpenRouter's `provider`, `transforms`, `reasoning`, `usage`). A route's own
    /// `extra_body` adds to and overrides these.
    #[serde(default)]
    pub extra_body: serde_json::Map<String, Value>,
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
