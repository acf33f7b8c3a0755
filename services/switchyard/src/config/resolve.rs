//! Resolution: the files as written become the types a run uses, with every check a run
//! needs, each error at the line of the value it is about.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::error::{err, line_of, read_yaml};
use super::span::{Spans, Step};
use super::*;

impl Pipeline {
    /// Loads `DIR/pipeline.yaml` (or the YAML file given) and everything it references.
    /// Relative paths are from the working directory.
    pub fn load(dir: &Path) -> Result<Pipeline, ConfigErrors> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`Pipeline::load`] with options (e.g. keys not required, for checking a config in CI).
    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Pipeline, ConfigErrors> {
        // `validate pipelines/x/pipeline.yaml` means the folder it is in.
        let (dir, path) = if dir.is_file() {
            let folder = dir.parent().filter(|p| !p.as_os_str().is_empty());
            (folder.unwrap_or(Path::new(".")), dir.to_path_buf())
        } else {
            (dir, dir.join("pipeline.yaml"))
        };
        if !path.is_file() {
            let what = if dir.is_dir() {
                "has no pipeline.yaml".to_string()
            } else if dir.is_relative() {
                let cwd = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the working directory".into());
                format!("does not exist (relative paths are from the working directory, {cwd})")
            } else {
                "does not exist".to_string()
            };
            return Err(err(
                dir,
                None,
                format!("{what}; give the folder of a pipeline, e.g. pipelines/support-triage"),
            )
            .into());
        }
        let (file, text): (PipelineFile, String) = read_yaml(&path)?;
        Self::resolve(dir, &path, &text, file, options)
    }

    /// The stage after `index`, if any.
    pub fn next_stage(&self, index: usize) -> Option<&Stage> {
        self.stages.get(index + 1)
    }

    /// Every topic the pipeline uses.
    pub fn all_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.intake_topics().into_iter().map(|t| t.topic).collect();
        t.extend([
            self.topics.results.clone(),
            self.topics.dlq.clone(),
            self.topics.ledger.clone(),
        ]);
        for s in self.stages.iter().skip(1) {
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
        options: &LoadOptions,
    ) -> Result<Pipeline, ConfigErrors> {
        let mut errors = Vec::new();
        // Keys that did not resolve, when keys are not required.
        let mut keys = Keys {
            required: options.require_keys,
            unresolved: Vec::new(),
        };
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

        check_catalog_providers(
            &catalog,
            &catalog_path,
            &catalog_text,
            &providers_file,
            &providers_path,
            &mut errors,
        );

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
            let stage_line = spans.line(&[Step::Key("stages"), Step::Index(index)]);
            if seen.contains(&s.name) {
                errors.push(err(
                    path,
                    stage_line,
                    format!("stage name `{}` is used twice", s.name),
                ));
            }
            seen.push(s.name.clone());
            let inputs = StageInputs {
                dir,
                path,
                spans: &spans,
                catalog: &catalog,
                catalog_path: &catalog_path,
                providers_file: &providers_file,
                providers_path: &providers_path,
                topics: &topics,
                escalate: &escalate,
                name: &name,
            };
            stages.extend(resolve_stage(
                &inputs,
                index,
                s,
                &mut used_providers,
                &mut errors,
            ));
            let is_last = index + 1 == file.stages.len();
            check_audit(&s.gate, &s.name, is_last, file.ordering, |key| {
                spans.line(&[
                    Step::Key("stages"),
                    Step::Index(index),
                    Step::Key("gate"),
                    Step::Key(key),
                ])
            })
            .into_iter()
            .for_each(|(line, message)| errors.push(err(path, line, message)));
        }

        // An audit compares the decision field of the audited stage and of the next one.
        for (i, s) in stages.iter().enumerate() {
            let (Some(_), Some(field), Some(next)) =
                (s.gate.audit, s.gate.decision_field(), stages.get(i + 1))
            else {
                continue;
            };
            if next
                .output_schema
                .pointer(&format!("/properties/{field}"))
                .is_none()
            {
                errors.push(err(
                    path,
                    spans.line(&[
                        Step::Key("stages"),
                        Step::Index(s.index),
                        Step::Key("gate"),
                        Step::Key("audit"),
                    ]),
                    format!(
                        "stage `{}`: gate.audit compares `{field}` with the next stage's answer, but stage `{}`'s output schema has no such property",
                        s.name, next.name
                    ),
                ));
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

        let providers = resolve_providers(
            used_providers,
            &providers_file,
            &providers_path,
            &providers_text,
            &mut errors,
            &mut keys,
        );

        if let Some(s) = &file.samples {
            match first_sample(&dir.join(s), &file.name) {
                Ok(Some(job)) => check_prompts_render(dir, &file, &stages, &job, &mut errors),
                Ok(None) => errors.push(err(
                    path,
                    at(&s.display().to_string()),
                    format!(
                        "samples file {} has no jobs: the prompts are checked against its first line and `demo` sends them; add one payload per line, or drop `samples:`",
                        dir.join(s).display()
                    ),
                )),
                Err(e) => errors.push(err(path, at(&s.display().to_string()), e)),
            }
        }
        let tenants = match &file.tenants {
            None => None,
            Some(t) => {
                let tpath = dir.join(t);
                let (tf, ttext): (TenantsFile, String) = read_yaml(&tpath)?;
                let resolved = resolve_tenants(
                    &tpath,
                    &ttext,
                    tf,
                    &catalog,
                    &providers_file,
                    &mut errors,
                    &mut keys,
                );
                // A tenant whose rules leave a stage no endpoint would have every job
                // dead-lettered: say so at start.
                let tspans = Spans::parse(&ttext);
                for (name, tenant) in &resolved {
                    let needs = crate::route::Needs {
                        tenant: Some(tenant.rules()),
                        ..Default::default()
                    };
                    for st in stages
                        .iter()
                        .filter(|st| st.local.is_none() && !st.models.is_empty())
                    {
                        let plan = crate::route::plan(
                            &st.models,
                            &st.route.provider,
                            &needs,
                            &|_| Default::default(),
                            None,
                        );
                        if plan.candidates.is_empty() {
                            errors.push(err(
                                &tpath,
                                tspans.line(&[Step::Key("tenants"), Step::Key(name)]),
                                format!(
                                    "tenant `{name}`: its rules leave stage `{}` no endpoint to call, so every job of this tenant would be dead-lettered: {}",
                                    st.name,
                                    exclusions_text(&plan.excluded)
                                ),
                            ));
                        }
                    }
                }
                Some(resolved)
            }
        };
        let tenant_binding = match file.tenant_from {
            TenantFrom::Payload => TenantBinding::Payload,
            TenantFrom::Header => TenantBinding::Header(file.tenant_header.clone()),
            TenantFrom::Topic => TenantBinding::Topic,
        };
        if file.tenant_from == TenantFrom::Topic {
            let line = spans.line(&[Step::Key("tenant_from")]);
            match &tenants {
                None => errors.push(err(
                    path,
                    line,
                    "tenant_from: topic reads one intake topic per tenant of the tenants file, but the pipeline has no `tenants:` file; add one or use tenant_from: payload",
                )),
                Some(ts) => {
                    if ts.is_empty() {
                        errors.push(err(path, line, "tenant_from: topic reads one intake topic per tenant, but the tenants file lists none"));
                    }
                    for t in ts.keys() {
                        let topic = format!("{}.{t}", topics.intake);
                        let legal = t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                        if !legal || topic.len() > 249 {
                            errors.push(err(path, line, format!("tenant_from: topic: tenant `{t}` cannot name a Kafka topic (`{topic}`): use letters, digits, `.`, `_` and `-`, at most 249 characters in all")));
                        }
                    }
                }
            }
            if let Some(first) = file.stages.first().and_then(|s| s.input_topic.as_ref())
                && *first != topics.intake
            {
                errors.push(err(path, at(first), format!("tenant_from: topic derives the first stage's topics from the intake topic (`{}.<tenant>`); set topics.intake instead of the first stage's input_topic `{first}`", topics.intake)));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Pipeline {
            noun: file
                .noun
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "job".into()),
            unresolved_keys: keys.unresolved,
            tenant_binding,
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

/// The providers the stages use, with base URLs (or their environment overrides) checked and
/// keys resolved; problems go to `errors` with the providers file's lines.
fn resolve_providers(
    used_providers: Vec<String>,
    providers_file: &ProvidersFile,
    providers_path: &Path,
    providers_text: &str,
    errors: &mut Vec<ConfigError>,
    key_errors: &mut Keys,
) -> BTreeMap<String, Provider> {
    let mut providers = BTreeMap::new();
    for pname in used_providers {
        let Some(p) = providers_file.providers.get(&pname) else {
            continue;
        };
        for k in p
            .extra_body
            .keys()
            .filter(|k| RESERVED_BODY_FIELDS.contains(&k.as_str()))
        {
            errors.push(err(
                providers_path,
                line_of(providers_text, &format!("{k}:")),
                format!(
                    "provider `{pname}`: extra_body may not set `{k}`, which Switchyard sets itself (it may not set: {})",
                    RESERVED_BODY_FIELDS.join(", ")
                ),
            ));
        }
        let env_name = format!("SWITCHYARD_PROVIDER_{}_URL", env_key(&pname));
        let from_env = std::env::var(&env_name).ok();
        let base_url = from_env.clone().unwrap_or_else(|| p.base_url.clone());
        if from_env.is_some()
            && !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        {
            errors.push(err(providers_path, None, format!("provider `{pname}`: {env_name}=`{base_url}` must start with http:// or https://")));
        } else if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            errors.push(err(
                providers_path,
                line_of(providers_text, &p.base_url),
                format!(
                    "provider `{pname}`: base_url `{base_url}` must start with http:// or https://"
                ),
            ));
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
                Err(e) => key_errors.refused(
                    errors,
                    err(
                        providers_path,
                        line_of(providers_text, &k.key.to_string()),
                        format!("provider `{pname}`: {e}"),
                    ),
                ),
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
    providers
}

/// Every catalog endpoint's provider must be defined in the providers file.
fn check_catalog_providers(
    catalog: &CatalogFile,
    catalog_path: &Path,
    catalog_text: &str,
    providers_file: &ProvidersFile,
    providers_path: &Path,
    errors: &mut Vec<ConfigError>,
) {
    for (name, m) in &catalog.models {
        for e in &m.endpoints {
            if !providers_file.providers.contains_key(&e.provider) {
                errors.push(err(
                    catalog_path,
                    line_of(catalog_text, &format!("provider: {}", e.provider)),
                    format!(
                        "model `{name}` has an endpoint at provider `{}`, which {} does not define; add it there or remove the endpoint",
                        e.provider,
                        providers_path.display()
                    ),
                ));
            }
        }
    }
}

/// What resolving one stage needs from the pipeline's other files.
struct StageInputs<'a> {
    dir: &'a Path,
    path: &'a Path,
    spans: &'a Spans,
    catalog: &'a CatalogFile,
    catalog_path: &'a Path,
    providers_file: &'a ProvidersFile,
    providers_path: &'a Path,
    topics: &'a Topics,
    escalate: &'a str,
    name: &'a str,
}

/// Resolves stage `index`: reads its prompts and schema, trains a local tier, resolves its
/// models against the catalog; every problem goes to `errors` at its own line.
fn resolve_stage(
    inputs: &StageInputs<'_>,
    index: usize,
    s: &StageFile,
    used_providers: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Stage> {
    let StageInputs {
        dir,
        path,
        spans,
        catalog,
        catalog_path,
        providers_file,
        providers_path,
        topics,
        escalate,
        name,
    } = *inputs;
    let stage_at = |rest: &[Step<'_>]| {
        let mut path = vec![Step::Key("stages"), Step::Index(index)];
        path.extend_from_slice(rest);
        spans.line(&path)
    };
    let stage_line = stage_at(&[]);
    // `key` is the stage's field naming the file: its line is the error's.
    let read = |p: &Path, key: &str, what: &str, errors: &mut Vec<ConfigError>| {
        let full = dir.join(p);
        match std::fs::read_to_string(&full) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(err(
                    path,
                    stage_at(&[Step::Key(key)]),
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
    let prompt = read(&s.prompt, "prompt", "prompt", errors);
    let system_prompt = s
        .system_prompt
        .as_ref()
        .and_then(|p| read(p, "system_prompt", "system prompt", errors));
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
    let schema = read(&s.output_schema, "output_schema", "output schema", errors).and_then(|t| {
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
    if let Some(p) = s.local.as_ref().and_then(|l| l.precision)
        && !(0.0..1.0).contains(&p)
    {
        errors.push(err(
            path,
            stage_at(&[Step::Key("local"), Step::Key("precision")]),
            format!(
                "stage `{}`: local.precision {p} must be in 0..1 (e.g. 0.98)",
                s.name
            ),
        ));
    }
    let local = s.local.as_ref().and_then(|l| {
        let train = dir.join(&l.train);
        let options = crate::classify::Options {
            precision: l.precision.filter(|p| (0.0..1.0).contains(p)),
            ..crate::classify::Options::default()
        };
        let oos = match &l.oos_examples {
            None => Ok(Vec::new()),
            Some(f) => crate::classify::read_examples(&dir.join(f))
                .map(|rows| rows.into_iter().map(|(t, _)| t).collect()),
        };
        match oos.and_then(|oos| {
            crate::classify::read_examples(&train).and_then(|rows| trained(&rows, &oos, options))
        }) {
            Ok(c) => Some(LocalStage {
                classifier: {
                    let r = &c.report;
                    if r.target_precision.is_some() && r.threshold.is_none() {
                        tracing::warn!(stage = %s.name, "local tier: {}", r.summary());
                    } else {
                        tracing::info!(stage = %s.name, "local tier: {}", r.summary());
                    }
                    c
                },
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
    let models = resolve_models(&s.route.models, "routes to", "models", errors);
    let content_fallback = resolve_models(
        &s.route.content_fallback,
        "falls back on content refusals to",
        "content_fallback",
        errors,
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
    let needs_decision = s.gate.uses_evidence() || s.gate.audit.is_some();
    match s.gate.decision_field() {
        None if needs_decision => errors.push(err(
            path,
            stage_at(&[Step::Key("gate"), Step::Key("confidence_from")]),
            format!(
                "stage `{}`: gate.confidence_from (logprob, agreement) and gate.audit compare the output field holding the decision; set gate.decision_field (e.g. category)",
                s.name
            ),
        )),
        Some(field)
            if needs_decision
                && schema
                    .as_ref()
                    .is_some_and(|v| v.pointer(&format!("/properties/{field}")).is_none()) =>
        {
            errors.push(err(
                path,
                stage_at(&[Step::Key("gate"), Step::Key("decision_field")]),
                format!(
                    "stage `{}`: decision field `{field}` is not a property of the output schema",
                    s.name
                ),
            ))
        }
        _ => {}
    }
    for (j, r) in s.gate.escalate_if.iter().enumerate() {
        let rule_at = |key: &'static str| {
            stage_at(&[
                Step::Key("gate"),
                Step::Key("escalate_if"),
                Step::Index(j),
                Step::Key(key),
            ])
            .or_else(|| stage_at(&[Step::Key("gate"), Step::Key("escalate_if"), Step::Index(j)]))
        };
        if r.equals.is_none() && r.one_of.is_none() {
            errors.push(err(
                path,
                rule_at("field"),
                format!(
                    "stage `{}`: rule on `{}` needs `equals` or `in`",
                    s.name, r.field
                ),
            ));
        }
        // A rule that can never match turns an escalation off without a word: its field must
        // be in the output schema and its values ones the field can take.
        if let Some(schema) = &schema {
            for (key, message) in check_rule(r, schema) {
                errors.push(err(
                    path,
                    rule_at(key),
                    format!("stage `{}`: gate.escalate_if: {message}", s.name),
                ));
            }
        }
    }
    if let Some(schema) = &schema
        && s.gate.min_confidence.is_some()
        && local.is_none()
        && s.gate.confidence_from.contains(&ConfidenceSource::Reported)
        && schema_at(schema, &s.gate.confidence_field).is_none()
    {
        errors.push(err(
            path,
            stage_at(&[Step::Key("gate"), Step::Key("confidence_field")])
                .or_else(|| stage_at(&[Step::Key("gate"), Step::Key("min_confidence")])),
            format!(
                "stage `{}`: gate.confidence_field `{}` is not a property of the output schema, so min_confidence would compare nothing; its properties: {}",
                s.name,
                s.gate.confidence_field,
                properties_of(schema).join(", ")
            ),
        ));
    }
    // Passthrough body fields, per provider this stage may call.
    for (key, fields) in std::iter::once(("extra_body", &s.route.extra_body)) {
        for k in fields
            .keys()
            .filter(|k| RESERVED_BODY_FIELDS.contains(&k.as_str()))
        {
            errors.push(err(
                path,
                stage_at(&[Step::Key("route"), Step::Key(key), Step::Key(k)]),
                format!(
                    "stage `{}`: route.extra_body may not set `{k}`, which Switchyard sets itself (it may not set: {})",
                    s.name,
                    RESERVED_BODY_FIELDS.join(", ")
                ),
            ));
        }
    }
    let mut extra_body = BTreeMap::new();
    for e in models
        .iter()
        .chain(&content_fallback)
        .flat_map(|m| &m.endpoints)
    {
        if extra_body.contains_key(&e.provider) {
            continue;
        }
        let Some(pf) = providers_file.providers.get(&e.provider) else {
            continue;
        };
        let mut body = pf.extra_body.clone();
        if pf.api == ApiFamily::Openrouter {
            let mut object = openrouter_provider_object(&s.route.provider);
            if let Some(Value::Object(own)) = body.get("provider") {
                object.extend(own.clone());
            }
            if !object.is_empty() {
                body.insert("provider".into(), Value::Object(object));
            }
        }
        body.extend(s.route.extra_body.clone());
        if !body.is_empty() {
            extra_body.insert(e.provider.clone(), body);
        }
    }
    // A route that leaves no endpoint would dead-letter every job: refuse it now.
    if local.is_none() && !models.is_empty() {
        let plan = crate::route::plan(
            &models,
            &s.route.provider,
            &crate::route::Needs::default(),
            &|_| Default::default(),
            None,
        );
        if plan.candidates.is_empty() {
            errors.push(err(
                path,
                stage_at(&[Step::Key("route"), Step::Key("provider")])
                    .or_else(|| stage_at(&[Step::Key("route")])),
                format!(
                    "stage `{}`: its route leaves no endpoint to call, so every job would be dead-lettered: {}. Loosen route.provider or route to models with such endpoints",
                    s.name,
                    exclusions_text(&plan.excluded)
                ),
            ));
        }
    }
    let input_topic = s.input_topic.clone().unwrap_or_else(|| match index {
        0 => topics.intake.clone(),
        1 => escalate.to_string(),
        _ => format!("{name}.escalate.{}", s.name),
    });
    let (Some(prompt), Some(schema)) = (prompt, schema) else {
        return None;
    };
    Some(Stage {
        name: s.name.as_str().into(),
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
        extra_body,
    })
}

/// Request body fields Switchyard sets itself; `extra_body` may not.
const RESERVED_BODY_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "response_format",
    "max_tokens",
    "temperature",
    "logprobs",
    "stream",
    "tools",
    "tool_choice",
];

/// The route's provider preferences that apply among OpenRouter's upstream providers, as
/// OpenRouter's `provider` object.
fn openrouter_provider_object(p: &ProviderPrefs) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    if p.data_collection == DataPolicy::Deny {
        o.insert("data_collection".into(), "deny".into());
    }
    if p.zdr {
        o.insert("zdr".into(), true.into());
    }
    if p.require_parameters {
        o.insert("require_parameters".into(), true.into());
    }
    if let Some(sort) = p.sort {
        let name = match sort {
            SortBy::Price => "price",
            SortBy::Latency => "latency",
            SortBy::Throughput => "throughput",
        };
        o.insert("sort".into(), name.into());
    }
    if !p.quantizations.is_empty() {
        o.insert("quantizations".into(), p.quantizations.clone().into());
    }
    if let Some(m) = &p.max_price {
        let mut price = serde_json::Map::new();
        let per_m = |v: PerMTok| serde_json::json!(v.0 as f64 / 1e6);
        if let Some(v) = m.input {
            price.insert("prompt".into(), per_m(v));
        }
        if let Some(v) = m.output {
            price.insert("completion".into(), per_m(v));
        }
        if let Some(v) = m.request {
            price.insert("request".into(), v.into());
        }
        if let Some(v) = m.image {
            price.insert("image".into(), v.into());
        }
        o.insert("max_price".into(), Value::Object(price));
    }
    o
}

/// Where keys that do not resolve go: errors when keys are required, else a list to report.
pub(crate) struct Keys {
    required: bool,
    unresolved: Vec<ConfigError>,
}

impl Keys {
    fn refused(&mut self, errors: &mut Vec<ConfigError>, e: ConfigError) {
        if self.required {
            errors.push(e);
        } else {
            self.unresolved.push(e);
        }
    }
}

/// Why each endpoint was left out, for error texts.
pub(crate) fn exclusions_text(excluded: &[crate::route::Exclusion]) -> String {
    excluded
        .iter()
        .map(|x| format!("{} at {}: {}", x.model, x.provider, x.rule))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The schema of a dotted path (`customer.tier`) of the objects `schema` describes.
fn schema_at<'a>(schema: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(schema, |s, key| {
        s.get("properties").and_then(|p| p.get(key))
    })
}

/// The property names of an object schema, for error texts.
fn properties_of(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// What is wrong with a gate rule against the stage's output schema, as (key, message).
fn check_rule(r: &Rule, schema: &Value) -> Vec<(&'static str, String)> {
    let Some(field) = schema_at(schema, &r.field) else {
        let parent = r.field.rsplit_once('.').map_or("", |(p, _)| p);
        let siblings = if parent.is_empty() {
            properties_of(schema)
        } else {
            schema_at(schema, parent)
                .map(properties_of)
                .unwrap_or_default()
        };
        return vec![(
            "field",
            format!(
                "`{}` is not a field of the output schema, so this rule never matches; fields there: {}",
                r.field,
                siblings.join(", ")
            ),
        )];
    };
    let allowed: Option<Vec<&Value>> = field
        .get("enum")
        .and_then(Value::as_array)
        .map(|e| e.iter().collect());
    let types: Vec<&str> = match field.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let fits_type = |v: &Value| {
        types.is_empty()
            || types.iter().any(|t| match *t {
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.is_i64() || v.is_u64(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                _ => true,
            })
    };
    let mut out = Vec::new();
    let values = r
        .equals
        .iter()
        .map(|v| ("equals", v))
        .chain(r.one_of.iter().flatten().map(|v| ("in", v)));
    for (key, v) in values {
        match &allowed {
            Some(choices) if !choices.contains(&v) => out.push((
                key,
                format!(
                    "{v} is not a value `{}` can take, so it never matches; valid choices: {}",
                    r.field,
                    choices
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None if !fits_type(v) => out.push((
                key,
                format!(
                    "{v} is not of `{}`'s type ({}), so it never matches",
                    r.field,
                    types.join(" or ")
                ),
            )),
            _ => {}
        }
    }
    out
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
                from_stage: earlier.name.as_str().into(),
                to_stage: stage.name.as_str().into(),
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
            let missing = prompts.missing_variables(job, &history, "{}");
            let named = if missing.is_empty() {
                String::new()
            } else {
                format!(
                    " — it uses {}, which the first sample job does not have (add it to the samples, or guard it with `{{% if … is defined %}}`)",
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            errors.push(err(
                &dir.join(template),
                e.line(),
                format!(
                    "stage `{}`: the prompt does not render for the first sample job: {e}{named}",
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
    key_errors: &mut Keys,
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
                Err(e) => key_errors.refused(
                    errors,
                    err(
                        path,
                        line_of(text, &k.key.to_string()),
                        format!("tenant `{name}`, provider `{provider}`: {e}"),
                    ),
                ),
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

pub(super) fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| &rest[i..]).unwrap_or("")
}

/// The classifier trained on these examples with these options: trained once per process and
/// shared after that. Training is deterministic, so a pipeline loaded again (a reload, a
/// second pipeline on the same data, every test of one binary) gets the same model without
/// paying seconds of CPU again. Keyed by the examples themselves, not the file name, so an
/// edited training file is trained again.
fn trained(
    rows: &[(String, String)],
    oos: &[String],
    options: crate::classify::Options,
) -> Result<std::sync::Arc<crate::classify::Classifier>, crate::classify::TrainError> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::sync::{Arc, Mutex, OnceLock};
    static TRAINED: OnceLock<Mutex<HashMap<u64, Arc<crate::classify::Classifier>>>> =
        OnceLock::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.hash(&mut h);
    oos.hash(&mut h);
    format!("{options:?}").hash(&mut h);
    let key = h.finish();
    // Held while training: two loads of the same data at once train it once, and two
    // trainings do not fight over the machine's cores.
    let mut cache = TRAINED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let c = Arc::new(crate::classify::Classifier::train_with_oos(
        rows, oos, options,
    )?);
    cache.insert(key, c.clone());
    Ok(c)
}

/// What is wrong with a gate's audit settings, each with the line of the key at fault.
fn check_audit(
    gate: &GateSpec,
    stage: &str,
    is_last: bool,
    ordering: Ordering,
    line: impl Fn(&str) -> Option<usize>,
) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    if let Some(rate) = gate.audit {
        if !(rate > 0.0 && rate <= 1.0) {
            out.push((
                line("audit"),
                format!("stage `{stage}`: gate.audit {rate} must be a share in (0, 1], e.g. 0.05 to audit one accepted job in twenty"),
            ));
        }
        if is_last {
            out.push((
                line("audit"),
                format!("stage `{stage}`: gate.audit needs a next stage to re-do the sampled jobs; the last stage has none"),
            ));
        }
        if ordering == Ordering::Key {
            out.push((
                line("audit"),
                format!("stage `{stage}`: gate.audit is not available with `ordering: key` (later stages run inline there)"),
            ));
        }
    }
    if let Some(p) = gate.target_precision {
        if !(p > 0.0 && p < 1.0) {
            out.push((
                line("target_precision"),
                format!("stage `{stage}`: gate.target_precision {p} must be in (0, 1), e.g. 0.95"),
            ));
        }
        if gate.audit.is_none() {
            out.push((
                line("target_precision"),
                format!("stage `{stage}`: gate.target_precision moves the threshold from audit data; set gate.audit too (e.g. 0.05)"),
            ));
        }
        match gate.min_confidence {
            None => out.push((
                line("target_precision"),
                format!("stage `{stage}`: gate.target_precision moves gate.min_confidence; set it as the starting threshold"),
            )),
            Some(c) => {
                let [lo, hi] = gate.bounds();
                if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
                    out.push((
                        line("threshold_bounds"),
                        format!("stage `{stage}`: gate.threshold_bounds [{lo}, {hi}] must be two thresholds in 0..1, lowest first"),
                    ));
                } else if !(lo..=hi).contains(&c) {
                    out.push((
                        line("min_confidence"),
                        format!("stage `{stage}`: gate.min_confidence {c} is outside gate.threshold_bounds [{lo}, {hi}]"),
                    ));
                }
            }
        }
    } else if gate.threshold_bounds.is_some() {
        out.push((
            line("threshold_bounds"),
            format!(
                "stage `{stage}`: gate.threshold_bounds only applies with gate.target_precision"
            ),
        ));
    }
    out
}
