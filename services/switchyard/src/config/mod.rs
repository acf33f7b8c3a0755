//! Pipeline configuration: `pipeline.yaml` with its prompts and output schemas, the provider
//! set (`providers.yaml`) and the model catalog (`catalog.yaml`).
//!
//! Every file is parsed with unknown keys denied, so a typo is an error that names the file and
//! line instead of a silently ignored setting. Loading resolves and checks everything a run
//! needs (prompt templates compile, schemas compile, every routed model has an endpoint, every
//! endpoint's provider exists, keys resolve), so a bad config fails at start, not mid-stream.

pub mod catalog;
mod error;
mod file;
pub mod interpolate;
mod resolve;
pub mod span;
pub mod tenant;

pub use error::*;
pub use file::*;
pub use resolve::env_key;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::money::PerMTok;
use crate::secret::{KeyRef, Secret};

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
    pub name: crate::ids::StageName,
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
    /// Fields added to request bodies, by provider name (the provider's `extra_body`, the
    /// route's over it, and for OpenRouter the `provider` object); providers without any are
    /// absent.
    pub extra_body: BTreeMap<String, serde_json::Map<String, Value>>,
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
    /// Where a job's tenant comes from.
    pub tenant_binding: TenantBinding,
    /// What one job is, in reports (`ticket`, `document`; `job` by default).
    pub noun: String,
    /// Keys that did not resolve (a variable not set, a file missing), when loaded with
    /// `require_keys: false`; their calls would go out without them.
    pub unresolved_keys: Vec<ConfigError>,
}

/// How strictly to load a pipeline.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Whether every key reference must resolve (`run`), or may be missing (`validate` in CI,
    /// where the secrets are not).
    pub require_keys: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { require_keys: true }
    }
}

/// Where a job's tenant comes from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantBinding {
    /// The job's `tenant` field (trusted producers only).
    Payload,
    /// One intake topic per tenant, `<intake>.<tenant>`.
    Topic,
    /// This message header, set by an authenticated bridge.
    Header(String),
}

/// One topic the first stage reads, with the tenant it is bound to (for `tenant_from: topic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeTopic {
    /// Topic name.
    pub topic: String,
    /// The tenant every job on it belongs to; `None`: the job says (or a header does).
    pub tenant: Option<String>,
}

impl Pipeline {
    /// The topics the first stage reads: the intake topic, or with `tenant_from: topic` one
    /// topic per tenant (`<intake>.<tenant>`) and not the shared intake topic.
    pub fn intake_topics(&self) -> Vec<IntakeTopic> {
        match (&self.tenant_binding, &self.tenants) {
            (TenantBinding::Topic, Some(tenants)) => tenants
                .keys()
                .map(|t| IntakeTopic {
                    topic: self.tenant_intake_topic(t),
                    tenant: Some(t.clone()),
                })
                .collect(),
            _ => vec![IntakeTopic {
                topic: self.topics.intake.clone(),
                tenant: None,
            }],
        }
    }

    /// Where a job of `tenant` is produced: its own intake topic with `tenant_from: topic`,
    /// else the intake topic.
    pub fn tenant_intake_topic(&self, tenant: &str) -> String {
        match self.tenant_binding {
            TenantBinding::Topic => format!("{}.{tenant}", self.topics.intake),
            _ => self.topics.intake.clone(),
        }
    }

    /// The topics stage `index` reads.
    pub fn stage_topics(&self, index: usize) -> Vec<IntakeTopic> {
        match self.stages.get(index) {
            Some(s) if index == 0 => {
                let mut t = self.intake_topics();
                if s.input_topic != self.topics.intake {
                    // An explicit input topic of its own.
                    t = vec![IntakeTopic {
                        topic: s.input_topic.clone(),
                        tenant: None,
                    }];
                }
                t
            }
            Some(s) => vec![IntakeTopic {
                topic: s.input_topic.clone(),
                tenant: None,
            }],
            None => Vec::new(),
        }
    }

    /// This pipeline without its leading local-tier stages: the remaining stages move up, each
    /// taking the position and input topic of the stage it replaces (the first that calls
    /// models reads the intake topic), as if the file had no local stage. For studying the LLM
    /// stages alone (tests of routing, fallback and delivery, where what a job meets first
    /// must be an LLM stage whatever its text).
    pub fn llm_stages_only(mut self) -> Pipeline {
        let locals = self.stages.iter().take_while(|s| s.local.is_some()).count();
        let topics: Vec<String> = self.stages.iter().map(|s| s.input_topic.clone()).collect();
        self.stages.drain(..locals);
        for (i, s) in self.stages.iter_mut().enumerate() {
            s.index = i;
            s.input_topic = topics[i].clone();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::resolve::url_path;
    use super::*;
    use std::path::Path;

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
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(&from)
            .arg(dest)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -r {} {}", from.display(), dest.display());
        dest.join("pipelines")
    }

    /// The error whose message mentions `what`.
    fn error_about<'a>(errors: &'a ConfigErrors, what: &str) -> &'a ConfigError {
        errors
            .0
            .iter()
            .find(|e| e.message.contains(what))
            .unwrap_or_else(|| panic!("no error about {what}: {errors}"))
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
        let find = |what: &str| error_about(&errors, what);
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

    #[test]
    fn audit_settings_that_cannot_work_are_refused_at_their_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_pipelines(tmp.path()).join("support-triage");
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        // triage: a target without an audit; resolve (the last stage): an audit with no next
        // stage to re-do it, and bounds that leave out its min_confidence.
        let edited = text
            .replacen(
                "      min_confidence: 0.68\n",
                "      min_confidence: 0.68\n      target_precision: 0.9\n",
                1,
            )
            .replacen(
                "      min_confidence: 0.5\n",
                "      min_confidence: 0.5\n      audit: 0.1\n      target_precision: 0.9\n      threshold_bounds: [0.6, 0.99]\n",
                1,
            );
        assert_ne!(edited, text);
        std::fs::write(&file, &edited).unwrap();
        let line_of_text =
            |needle: &str| edited.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let errors = Pipeline::load(&dir).unwrap_err();
        let find = |what: &str| error_about(&errors, what);
        let no_audit = find("set gate.audit too");
        assert!(no_audit.message.contains("stage `triage`"), "{errors}");
        assert_eq!(no_audit.line, Some(line_of_text("target_precision")));
        let last = find("needs a next stage");
        assert!(last.message.contains("stage `resolve`"), "{errors}");
        assert_eq!(last.line, Some(line_of_text("audit: 0.1")));
        let outside = find("outside gate.threshold_bounds");
        assert_eq!(outside.line, Some(line_of_text("min_confidence: 0.5")));
    }

    #[test]
    fn tenants_bound_to_topics_need_a_tenants_file_and_get_one_topic_each() {
        let tmp = tempfile::tempdir().unwrap();
        let pipelines = copy_pipelines(tmp.path());
        let dir = pipelines.join("support-triage");
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{text}tenant_from: topic\n")).unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        let e = error_about(&errors, "no `tenants:` file");
        assert_eq!(e.line, Some(text.lines().count() + 1), "{errors}");
        std::fs::write(
            pipelines.join("tenants.yaml"),
            "tenants:\n  acme: {}\n  globex: {}\n",
        )
        .unwrap();
        std::fs::write(
            &file,
            format!("{text}tenant_from: topic\ntenants: ../tenants.yaml\n"),
        )
        .unwrap();
        let p = Pipeline::load(&dir).unwrap();
        let reads: Vec<String> = p.stage_topics(0).into_iter().map(|t| t.topic).collect();
        assert_eq!(
            reads,
            ["support-triage.intake.acme", "support-triage.intake.globex"]
        );
        assert!(!p.all_topics().contains(&p.topics.intake));
        assert_eq!(p.stage_topics(1)[0].topic, p.stages[1].input_topic);
    }

    /// The line (1-based) of the first line of `text` containing `needle`.
    fn line_with(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn mistakes_that_would_silently_turn_a_gate_or_a_route_off_are_refused_at_their_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_pipelines(tmp.path()).join("support-triage");
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let triage = text.find("  - name: triage").unwrap();
        let mut edited = text[..triage].replacen(
            "in: [compromised_card,",
            "in: [compromised_cards, compromised_card,",
            1,
        );
        edited.push_str(&text[triage..].replacen("field: category", "field: categroy", 1));
        let edited = edited
            .replacen(
                "      min_confidence: 0.5\n",
                "      min_confidence: 0.5\n      confidence_field: confidance\n",
                1,
            )
            .replacen(
                "      max_tokens: 1200\n",
                "      max_tokens: 1200\n      provider: { data_collection: deny }\n",
                1,
            );
        std::fs::write(&file, &edited).unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        let typo = error_about(&errors, "`categroy` is not a field");
        assert_eq!(typo.line, Some(line_with(&edited, "categroy")), "{errors}");
        assert!(typo.message.contains("category"), "{typo}");
        let value = error_about(&errors, "\"compromised_cards\" is not a value");
        assert!(value.message.contains("valid choices"), "{value}");
        assert!(value.message.contains("stage `local`"), "{value}");
        assert_eq!(value.line, Some(line_with(&edited, "compromised_cards")));
        let conf = error_about(&errors, "`confidance`");
        assert_eq!(conf.line, Some(line_with(&edited, "confidance")));
        let route = error_about(&errors, "leaves no endpoint");
        assert!(route.message.contains("stage `resolve`"), "{route}");
        assert_eq!(
            route.line,
            Some(line_with(&edited, "data_collection: deny"))
        );
    }

    #[test]
    fn a_tenant_whose_rules_leave_no_endpoint_is_refused_at_its_line() {
        let tmp = tempfile::tempdir().unwrap();
        let pipelines = copy_pipelines(tmp.path());
        let dir = pipelines.join("support-triage");
        let tenants = "tenants:\n  acme: {}\n  strict:\n    data_collection: deny\n";
        std::fs::write(pipelines.join("tenants.yaml"), tenants).unwrap();
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, format!("{text}tenants: ../tenants.yaml\n")).unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        let e = error_about(&errors, "tenant `strict`");
        assert!(e.message.contains("no endpoint"), "{e}");
        // At the tenant's rules (its data policy is line 4).
        assert_eq!(e.line, Some(4), "{errors}");
        assert!(e.path.ends_with("tenants.yaml"));
    }

    #[test]
    fn prompts_name_the_variable_a_sample_lacks_and_an_empty_samples_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_pipelines(tmp.path()).join("support-triage");
        let prompt = dir.join("prompts/triage.md");
        let text = std::fs::read_to_string(&prompt).unwrap();
        std::fs::write(
            &prompt,
            format!("{text}\nTier: {{{{ job.payload.customer_tier }}}}\n"),
        )
        .unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        let e = error_about(&errors, "`job.payload.customer_tier`");
        assert!(e.path.ends_with("prompts/triage.md"), "{e}");
        std::fs::write(dir.join("samples/tickets.jsonl"), "\n").unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        error_about(&errors, "has no jobs");
    }

    #[test]
    fn keys_are_required_to_run_but_not_to_validate() {
        let tmp = tempfile::tempdir().unwrap();
        let pipelines = copy_pipelines(tmp.path());
        let providers = pipelines.join("providers.yaml");
        let text = std::fs::read_to_string(&providers).unwrap();
        let edited = text.replacen(
            "    rpm: 60000",
            "    rpm: 60000\n    api_key: env:SWITCHYARD_TEST_KEY_THAT_IS_NOT_SET",
            1,
        );
        assert_ne!(edited, text);
        std::fs::write(&providers, edited).unwrap();
        let dir = pipelines.join("support-triage");
        let errors = Pipeline::load(&dir).unwrap_err();
        error_about(&errors, "SWITCHYARD_TEST_KEY_THAT_IS_NOT_SET");
        let lenient = Pipeline::load_with(
            &dir,
            &LoadOptions {
                require_keys: false,
            },
        )
        .unwrap();
        assert_eq!(lenient.unresolved_keys.len(), 1);
        assert!(
            lenient.unresolved_keys[0]
                .message
                .contains("SWITCHYARD_TEST_KEY_THAT_IS_NOT_SET")
        );
    }

    #[test]
    fn config_files_take_environment_variables_with_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_pipelines(tmp.path()).join("support-triage");
        let file = dir.join("pipeline.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let edited = text.replacen(
            "min_confidence: 0.68",
            "min_confidence: ${SWITCHYARD_TEST_UNSET_THRESHOLD:-0.66}",
            1,
        );
        std::fs::write(&file, &edited).unwrap();
        let p = Pipeline::load(&dir).unwrap();
        let triage = p.stages.iter().find(|s| s.name == "triage").unwrap();
        assert_eq!(triage.gate.min_confidence, Some(0.66));
        let edited = text.replacen(
            "min_confidence: 0.68",
            "min_confidence: ${SWITCHYARD_TEST_UNSET_THRESHOLD}",
            1,
        );
        std::fs::write(&file, &edited).unwrap();
        let errors = Pipeline::load(&dir).unwrap_err();
        let e = error_about(&errors, "SWITCHYARD_TEST_UNSET_THRESHOLD");
        assert_eq!(e.line, Some(line_with(&edited, "SWITCHYARD_TEST_UNSET")));
    }

    #[test]
    fn a_pipeline_loads_from_its_folder_or_its_file_and_a_missing_one_says_where_it_looked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/support-triage");
        let by_folder = Pipeline::load(&dir).unwrap();
        let by_file = Pipeline::load(&dir.join("pipeline.yaml")).unwrap();
        assert_eq!(by_folder.name, by_file.name);
        assert_eq!(by_folder.stages.len(), by_file.stages.len());
        let missing = Pipeline::load(Path::new("no/such/pipeline"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        assert!(missing.contains("working directory"), "{missing}");
    }
}
