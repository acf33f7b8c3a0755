//! The deployment files under `deploy/` (issue 9), checked without a container engine or a
//! cluster: every YAML file parses (all documents of it; Helm templates excepted, they are Go
//! templates), the Grafana dashboard parses, every `switchyard_*` metric the dashboard and the
//! Prometheus files use is one `switchyard run` exports, ports and topics agree between the
//! compose file, Prometheus, the Helm values and the pipeline itself, and the chart's copy of the
//! pipeline is the pipeline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;
use switchyard::config::Pipeline;
use switchyard_testkit::fixtures::repo_root;

/// What `scripts/test.sh` installs to build (the Dockerfile's builder needs the same).
const BUILD_PACKAGES: &[&str] = &[
    "build-essential",
    "make",
    "perl",
    "pkg-config",
    "libssl-dev",
    "zlib1g-dev",
];

const METRICS_PORT: u16 = 9464;
const ADMIN_PORT: u16 = 8080;

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted; folders for which `skip` is true are left out.
fn walk(dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if !skip(&p) {
                out.extend(walk(&p, skip));
            }
        } else {
            out.push(p);
        }
    }
    out
}

/// Every document of a YAML file (a stream of `---`-separated documents).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The single document of a YAML file.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

/// Every string in a YAML value (keys too).
fn yaml_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(items) => items.iter().for_each(|i| yaml_strings(i, out)),
        Value::Mapping(m) => {
            for (k, v) in m {
                yaml_strings(k, out);
                yaml_strings(v, out);
            }
        }
        Value::Tagged(t) => yaml_strings(&t.value, out),
        _ => {}
    }
}

/// Every string in a JSON value.
fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_strings(i, out)),
        serde_json::Value::Object(m) => m.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Every `switchyard_[a-z_]+` token in `text` (not part of a longer identifier).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("switchyard_") {
        let start = i + off;
        let mut end = start + "switchyard_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let bounded_left = start == 0 || !is_word(bytes[start - 1]);
        let bounded_right = end == bytes.len() || !is_word(bytes[end]);
        if bounded_left && bounded_right && end > start + "switchyard_".len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The metric names `switchyard run` exports (`switchyard::telemetry::METRICS`).
fn exported_metrics() -> BTreeSet<String> {
    switchyard::telemetry::METRICS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Exported names plus the series Prometheus derives from histograms.
fn allowed_series(exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut allowed = exported.clone();
    for n in exported {
        if n.ends_with("_seconds") {
            for suffix in ["_bucket", "_sum", "_count"] {
                allowed.insert(format!("{n}{suffix}"));
            }
        }
    }
    allowed
}

fn dashboard() -> serde_json::Value {
    let path = deploy().join("grafana/dashboards/switchyard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    out
}

fn compose() -> Value {
    yaml(&deploy().join("compose.yaml"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "compose.yaml has no service {name}");
    s
}

fn strings_of(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    yaml_strings(v, &mut out);
    out
}

/// The value after `flag` in a command list.
fn arg_after(command: &Value, flag: &str) -> Option<String> {
    let items = command.as_sequence()?;
    let at = items.iter().position(|a| a.as_str() == Some(flag))?;
    items.get(at + 1)?.as_str().map(str::to_string)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files: Vec<PathBuf> = walk(&deploy(), &|dir| {
        // Helm templates are Go templates ({{ }}), not YAML until rendered.
        dir.file_name().is_some_and(|n| n == "templates")
            && dir.parent().is_some_and(|p| p.join("Chart.yaml").is_file())
    })
    .into_iter()
    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    .collect();
    for must in [
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/switchyard.yaml",
        "helm/switchyard/Chart.yaml",
        "helm/switchyard/values.yaml",
    ] {
        assert!(
            files.contains(&deploy().join(must)),
            "deploy/{must} is missing"
        );
    }
    let mut documents = 0;
    for f in &files {
        let docs = yaml_documents(f);
        assert!(!docs.is_empty(), "{}: no YAML document", f.display());
        documents += docs.len();
    }
    eprintln!("{} YAML files, {documents} documents parsed", files.len());

    // The dashboard is JSON and has panels with queries.
    let d = dashboard();
    assert_eq!(d["uid"], "switchyard");
    assert!(dashboard_exprs(&d).len() >= 10, "too few dashboard queries");
}

#[test]
fn dashboard_and_prometheus_use_only_exported_metrics() {
    let exported = exported_metrics();
    let allowed = allowed_series(&exported);

    let d = dashboard();
    let mut dash_strings = Vec::new();
    json_strings(&d, &mut dash_strings);
    let mut used_in_dashboard = BTreeSet::new();
    for s in &dash_strings {
        used_in_dashboard.extend(metric_tokens(s));
    }
    let mut prom_used = BTreeMap::new();
    for f in ["prometheus/prometheus.yml", "prometheus/alerts.yml"] {
        let mut strings = Vec::new();
        for doc in yaml_documents(&deploy().join(f)) {
            yaml_strings(&doc, &mut strings);
        }
        let mut used = BTreeSet::new();
        for s in &strings {
            used.extend(metric_tokens(s));
        }
        prom_used.insert(f, used);
    }

    let mut unknown = Vec::new();
    for (where_, used) in
        std::iter::once(("grafana/dashboards/switchyard.json", &used_in_dashboard))
            .chain(prom_used.iter().map(|(f, u)| (*f, u)))
    {
        for m in used {
            if !allowed.contains(m) {
                unknown.push(format!("deploy/{where_}: {m}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not exported by switchyard run (telemetry/mod.rs has {exported:?}):\n{}",
        unknown.join("\n")
    );

    // And the dashboard shows every exported metric.
    let shown: BTreeSet<String> = used_in_dashboard
        .iter()
        .map(|m| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(m)
                .to_string()
        })
        .collect();
    let missing: Vec<_> = exported.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows none of {missing:?}"
    );

    // Histogram panels query the buckets.
    for e in dashboard_exprs(&d) {
        if e.contains("histogram_quantile") {
            assert!(
                e.contains("_bucket"),
                "histogram_quantile without buckets: {e}"
            );
            assert!(
                e.contains("le"),
                "histogram_quantile not grouped by le: {e}"
            );
        }
    }
}

#[test]
fn grafana_provisioning_matches_compose_mounts() {
    let c = compose();
    let grafana = service(&c, "grafana");
    let mounts = strings_of(&grafana["volumes"]);
    let dashboards_mount = mounts
        .iter()
        .find(|m| m.starts_with("./grafana/dashboards:"))
        .expect("grafana mounts ./grafana/dashboards");
    let target = dashboards_mount.split(':').nth(1).unwrap();
    let provider = yaml(&deploy().join("grafana/provisioning/dashboards/switchyard.yaml"));
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some(target),
        "the dashboard provider reads where compose mounts the dashboards"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./grafana/provisioning:/etc/grafana/provisioning"))
    );
    let ds = yaml(&deploy().join("grafana/provisioning/datasources/prometheus.yaml"));
    let url = ds["datasources"][0]["url"].as_str().unwrap();
    assert!(service(&c, "prometheus").is_mapping());
    assert!(url.starts_with("http://prometheus:9090"), "{url}");
    // Panels use the dashboard's datasource variable, which picks a Prometheus source.
    let d = dashboard();
    for p in d["panels"].as_array().unwrap() {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
    }
}

#[test]
fn compose_ports_agree_across_services_and_prometheus() {
    let c = compose();
    let sy = service(&c, "switchyard");
    let cmd = &sy["command"];
    let strings = strings_of(cmd);
    assert_eq!(strings.first().map(String::as_str), Some("switchyard"));
    assert_eq!(strings.get(1).map(String::as_str), Some("run"));
    let metrics = arg_after(cmd, "--metrics-addr").expect("--metrics-addr");
    let admin = arg_after(cmd, "--admin-addr").expect("--admin-addr");
    assert_eq!(port_of(&metrics), METRICS_PORT, "{metrics}");
    assert_eq!(port_of(&admin), ADMIN_PORT, "{admin}");
    assert!(metrics.starts_with("0.0.0.0:") && admin.starts_with("0.0.0.0:"));
    // Published to this machine only, with a token the operator must set.
    assert!(
        strings_of(&sy["ports"]).contains(&format!("127.0.0.1:{ADMIN_PORT}:{ADMIN_PORT}")),
        "the admin port is published on loopback only"
    );
    assert!(
        sy["environment"]["SWITCHYARD_ADMIN_TOKEN"]
            .as_str()
            .is_some_and(|t| t.starts_with("${SWITCHYARD_ADMIN_TOKEN:?")),
        "compose requires an admin token"
    );

    // Published on the same container ports.
    let published: Vec<u16> = strings_of(&sy["ports"])
        .iter()
        .map(|p| port_of(p.split('/').next().unwrap()))
        .collect();
    for port in [METRICS_PORT, ADMIN_PORT] {
        assert!(published.contains(&port), "switchyard publishes {port}");
    }
    // The health check asks the metrics port.
    let health = strings_of(&sy["healthcheck"]["test"]).join(" ");
    assert!(health.contains(&format!("/{METRICS_PORT}")), "{health}");
    assert!(health.contains("/readyz"), "{health}");

    // Prometheus scrapes it there.
    let prom = yaml(&deploy().join("prometheus/prometheus.yml"));
    let job = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "switchyard")
        .expect("a switchyard scrape job");
    let targets = strings_of(&job["static_configs"]);
    assert!(
        targets.contains(&format!("switchyard:{METRICS_PORT}")),
        "{targets:?}"
    );
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    // Compose mounts that file and the alert rules Prometheus loads.
    let mounts = strings_of(&service(&c, "prometheus")["volumes"]);
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./prometheus/prometheus.yml:"))
    );
    for rule_file in strings_of(&prom["rule_files"]) {
        assert!(
            mounts
                .iter()
                .any(|m| m.ends_with(&format!(":{rule_file}:ro"))
                    || m.ends_with(&format!(":{rule_file}"))),
            "{rule_file} is not mounted into prometheus"
        );
    }

    // Helm uses the same ports.
    let values = yaml(&deploy().join("helm/switchyard/values.yaml"));
    assert_eq!(
        values["metrics"]["port"].as_u64(),
        Some(u64::from(METRICS_PORT))
    );
    assert_eq!(
        values["admin"]["port"].as_u64(),
        Some(u64::from(ADMIN_PORT))
    );
}

#[test]
fn compose_runs_the_pipeline_with_its_topics_providers_and_database() {
    let c = compose();
    let sy = service(&c, "switchyard");
    let dir = arg_after(&sy["command"], "--pipeline").expect("--pipeline");
    let name = dir
        .strip_prefix("/app/pipelines/")
        .expect("a shipped pipeline");
    let pipeline = Pipeline::load(&repo_root().join("pipelines").join(name)).unwrap();
    let brokers = arg_after(&sy["command"], "--brokers").expect("--brokers");
    assert_eq!(brokers, "kafka:9092");

    // kafka-init creates every topic the pipeline needs.
    let init = service(&c, "kafka-init");
    let topics: BTreeSet<&str> = init["environment"]["TOPICS"]
        .as_str()
        .expect("kafka-init TOPICS")
        .split_whitespace()
        .collect();
    for t in pipeline.all_topics() {
        assert!(
            topics.contains(t.as_str()),
            "kafka-init does not create {t}"
        );
    }
    let kafka = service(&c, "kafka");
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    assert!(advertised.contains(&format!("//{brokers}")), "{advertised}");
    assert_eq!(
        sy["depends_on"]["kafka-init"]["condition"],
        "service_completed_successfully"
    );

    // Every provider the pipeline calls is pointed at the llm-sim service.
    let sim = service(&c, "llm-sim");
    let sim_port = arg_after(&sim["command"], "--port").expect("llm-sim --port");
    assert_eq!(
        arg_after(&sim["command"], "--bind").as_deref(),
        Some("0.0.0.0")
    );
    let env = &sy["environment"];
    for name in pipeline.providers.keys() {
        let var = format!(
            "SWITCHYARD_PROVIDER_{}_URL",
            name.to_uppercase().replace('-', "_")
        );
        let url = env[var.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("compose sets no {var}"));
        assert!(
            url.starts_with(&format!("http://llm-sim:{sim_port}/{name}/")),
            "{var}={url}"
        );
    }

    // The ledger goes to the compose PostgreSQL.
    let db = env["DATABASE_URL"].as_str().expect("DATABASE_URL");
    let pg = &service(&c, "postgres")["environment"];
    let user = pg["POSTGRES_USER"].as_str().unwrap();
    let database = pg["POSTGRES_DB"].as_str().unwrap();
    assert!(db.starts_with(&format!("postgres://{user}:")), "{db}");
    assert!(db.ends_with(&format!("@postgres:5432/{database}")), "{db}");
    assert!(
        strings_of(&service(&c, "postgres")["image"])[0].starts_with("postgres:15"),
        "PostgreSQL 15"
    );

    // The produce helper loads onto the same pipeline and brokers.
    let produce = service(&c, "produce");
    assert_eq!(
        arg_after(&produce["command"], "--pipeline"),
        Some(dir.clone())
    );
    assert_eq!(arg_after(&produce["command"], "--brokers"), Some(brokers));
}

#[test]
fn helm_values_match_the_pipeline_they_ship() {
    let chart = deploy().join("helm/switchyard");
    let values = yaml(&chart.join("values.yaml"));
    let chart_meta = yaml(&chart.join("Chart.yaml"));
    assert_eq!(chart_meta["apiVersion"], "v2");
    assert_eq!(chart_meta["name"], "switchyard");

    let name = values["pipeline"]["name"].as_str().unwrap();
    let pipeline = Pipeline::load(&chart.join("files/pipelines").join(name)).unwrap();
    assert_eq!(
        pipeline.name, name,
        "pipeline.name must be the pipeline's own name"
    );

    let stages = values["stages"].as_sequence().expect("stages");
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let expected: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names, expected,
        "one values.stages entry per pipeline stage, in order"
    );
    for (s, stage) in stages.iter().zip(&pipeline.stages) {
        assert_eq!(
            s["topic"].as_str(),
            Some(stage.input_topic.as_str()),
            "stage {}: KEDA must watch the topic the stage reads",
            stage.name
        );
        let min = s["minReplicas"].as_u64().unwrap();
        let max = s["maxReplicas"].as_u64().unwrap();
        assert!(min <= max && max >= 1, "stage {}: {min}..{max}", stage.name);
        assert!(s["lagThreshold"].as_u64().unwrap() > 0);
    }
    assert_eq!(values["groupPrefix"], "switchyard");

    // Keys: every env:NAME reference in the chart's providers.yaml has a Secret mapping.
    let providers = yaml(&chart.join("files/pipelines/providers.yaml"));
    let mut needed = BTreeSet::new();
    if let Some(m) = providers["providers"].as_mapping() {
        for (pname, p) in m {
            for s in strings_of(p) {
                if let Some(var) = s.strip_prefix("env:") {
                    needed.insert((pname.as_str().unwrap().to_string(), var.to_string()));
                }
            }
        }
    }
    for (pname, var) in needed {
        let mapped = values["providers"][pname.as_str()]["keys"]
            .as_sequence()
            .is_some_and(|keys| keys.iter().any(|k| k["env"].as_str() == Some(var.as_str())));
        assert!(
            mapped,
            "providers.{pname}.keys in values.yaml has no entry for env {var}"
        );
    }
    // Provider URL overrides name providers that exist.
    if let Some(m) = values["providers"].as_mapping() {
        for (pname, _) in m {
            let pname = pname.as_str().unwrap();
            assert!(
                providers["providers"][pname].is_mapping(),
                "values.providers.{pname} is not in providers.yaml"
            );
        }
    }
}

#[test]
fn helm_files_are_copies_of_the_repository_pipeline() {
    let copies = deploy().join("helm/switchyard/files/pipelines");
    let source = repo_root().join("pipelines");
    let copied = walk(&copies, &|_| false);
    assert!(!copied.is_empty());
    for f in &copied {
        let rel = f.strip_prefix(&copies).unwrap();
        let original = source.join(rel);
        assert!(
            std::fs::read(&original).ok() == std::fs::read(f).ok(),
            "deploy/helm/switchyard/files/pipelines/{} differs from pipelines/{}; run deploy/helm/switchyard/sync-files.sh",
            rel.display(),
            rel.display()
        );
    }
    // And nothing the pipeline has (but its eval data) is left out.
    let values = yaml(&deploy().join("helm/switchyard/values.yaml"));
    let name = values["pipeline"]["name"].as_str().unwrap();
    let pdir = source.join(name);
    for f in walk(&pdir, &|d| d.file_name().is_some_and(|n| n == "eval")) {
        let rel = f.strip_prefix(&source).unwrap();
        assert!(
            copies.join(rel).is_file(),
            "pipelines/{} is not in the chart; run deploy/helm/switchyard/sync-files.sh",
            rel.display()
        );
    }
    // A ConfigMap holds at most 1 MiB: the pipeline folder in one, the local tier's training
    // CSVs in another.
    let size = |csv: bool| -> u64 {
        copied
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "csv") == csv)
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    assert!(
        size(false) < 900 * 1024,
        "chart pipeline files are {} bytes",
        size(false)
    );
    assert!(
        size(true) < 1000 * 1024,
        "chart training files are {} bytes",
        size(true)
    );
}

#[test]
fn dockerfile_builds_with_the_ci_packages_and_runs_unprivileged() {
    let docker = read(&deploy().join("Dockerfile"));
    let ci = read(&repo_root().join("scripts/test.sh"));
    for pkg in BUILD_PACKAGES {
        assert!(
            ci.contains(pkg),
            "scripts/test.sh no longer installs {pkg}; update BUILD_PACKAGES"
        );
        assert!(docker.contains(pkg), "the Dockerfile's builder lacks {pkg}");
    }
    for needle in [
        "target/release/switchyard",
        "target/release/llm-sim",
        "COPY --chown=root:root pipelines/",
        "COPY --chown=root:root schemas/",
        "libssl3",
        "ca-certificates",
        "USER 10001",
        "--locked",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle}");
    }
    // The build context filter keeps target/ (gigabytes) out.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "**/target"));
}

#[test]
fn metric_token_scanner() {
    let t = metric_tokens(
        "sum(rate(switchyard_jobs_total{x=\"switchyard\"}[5m])) / switchyard:jobs:rate5m + a_switchyard_x",
    );
    assert_eq!(t.into_iter().collect::<Vec<_>>(), ["switchyard_jobs_total"]);
}
