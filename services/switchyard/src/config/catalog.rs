//! The model catalog as a user sees it: `switchyard models` (list, filter, sort) and
//! `switchyard catalog import` (OpenRouter's `/api/v1/models` JSON → `catalog.yaml`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::config::{
    CatalogFile, ConfigError, DataPolicy, EndpointFile, ModelFile, PriceFile, parse_yaml,
};
use crate::money::PerMTok;

/// One endpoint row of `switchyard models`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRow {
    /// Catalog name.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Context window.
    pub context_length: u32,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// USD per million prompt tokens.
    pub input_usd_per_m: f64,
    /// USD per million completion tokens.
    pub output_usd_per_m: f64,
    /// Throughput hint.
    pub throughput: Option<f64>,
    /// Latency hint in ms.
    pub latency_ms: Option<u64>,
    /// Data policy.
    pub data_collection: DataPolicy,
    /// Zero data retention.
    pub zdr: bool,
}

/// How to sort `switchyard models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSort {
    /// Cheapest (input + output) first.
    Price,
    /// Lowest latency hint first.
    Latency,
    /// Highest throughput hint first.
    Throughput,
    /// Largest context first.
    Context,
}

/// Reads a catalog file.
pub fn load(path: &Path) -> Result<CatalogFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
    })?;
    parse_yaml(path, &text)
}

/// The catalog's endpoints, filtered and sorted.
pub fn rows(
    catalog: &CatalogFile,
    sort: ModelSort,
    capability: Option<&str>,
    max_price: Option<f64>,
) -> Vec<ModelRow> {
    let mut rows: Vec<ModelRow> = catalog
        .models
        .iter()
        .filter(|(_, m)| capability.is_none_or(|c| m.capabilities.iter().any(|x| x == c)))
        .flat_map(|(name, m)| {
            m.endpoints.iter().map(move |e| ModelRow {
                model: name.clone(),
                provider: e.provider.clone(),
                context_length: m.context_length,
                capabilities: m.capabilities.clone(),
                input_usd_per_m: e.price.input.as_usd(),
                output_usd_per_m: e.price.output.as_usd(),
                throughput: e.throughput,
                latency_ms: e.latency.map(|d| d.as_millis() as u64),
                data_collection: e.data_collection,
                zdr: e.zdr,
            })
        })
        .filter(|r| max_price.is_none_or(|p| r.input_usd_per_m <= p && r.output_usd_per_m <= p))
        .collect();
    let price = |r: &ModelRow| r.input_usd_per_m + r.output_usd_per_m;
    match sort {
        ModelSort::Price => rows.sort_by(|a, b| price(a).total_cmp(&price(b))),
        ModelSort::Latency => rows.sort_by_key(|r| r.latency_ms.unwrap_or(u64::MAX)),
        ModelSort::Throughput => rows.sort_by(|a, b| {
            b.throughput
                .unwrap_or(0.0)
                .total_cmp(&a.throughput.unwrap_or(0.0))
        }),
        ModelSort::Context => rows.sort_by_key(|r| std::cmp::Reverse(r.context_length)),
    }
    rows
}

/// The rows as an aligned table.
pub fn table(rows: &[ModelRow]) -> String {
    let mut out = format!(
        "{:<40} {:<12} {:>9} {:>10} {:>10} {:>8}  {}\n",
        "MODEL", "PROVIDER", "CONTEXT", "IN $/M", "OUT $/M", "TOK/S", "CAPABILITIES"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<40} {:<12} {:>9} {:>10.3} {:>10.3} {:>8}  {}\n",
            r.model,
            r.provider,
            r.context_length,
            r.input_usd_per_m,
            r.output_usd_per_m,
            r.throughput.map_or("-".to_string(), |t| format!("{t:.0}")),
            r.capabilities.join(",")
        ));
    }
    out
}

/// An OpenRouter models listing that could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(String);

/// Converts OpenRouter's `/api/v1/models` JSON into a catalog whose endpoints are at
/// `provider` (the OpenRouter provider entry in providers.yaml). Prices there are US dollars
/// per token, as strings; the catalog keeps dollars per million tokens.
pub fn import_openrouter(json: &str, provider: &str) -> Result<CatalogFile, ImportError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ImportError(format!("not JSON: {e}")))?;
    let data = v.get("data").and_then(Value::as_array).ok_or_else(|| {
        ImportError("expected an object with a `data` array (OpenRouter's /api/v1/models)".into())
    })?;
    let mut models = BTreeMap::new();
    for (i, m) in data.iter().enumerate() {
        let id = m
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ImportError(format!("data[{i}] has no `id`")))?;
        let price = |field: &str| -> Result<Option<PerMTok>, ImportError> {
            match m.pointer(&format!("/pricing/{field}")) {
                None | Some(Value::Null) => Ok(None),
                Some(p) => {
                    let per_token: f64 = match p {
                        Value::String(s) => s.parse().map_err(|_| {
                            ImportError(format!("{id}: pricing.{field} `{s}` is not a number"))
                        })?,
                        Value::Number(n) => n.as_f64().unwrap_or(0.0),
                        other => {
                            return Err(ImportError(format!("{id}: pricing.{field} is {other}")));
                        }
                    };
                    // OpenRouter marks variable-price routers with -1: leave them out.
                    Ok(PerMTok::from_usd(per_token * 1e6))
                }
            }
        };
        let (Some(input), Some(output)) = (price("prompt")?, price("completion")?) else {
            tracing::info!(model = id, "skipped: no usable prompt/completion price");
            continue;
        };
        let params: Vec<String> = m
            .get("supported_parameters")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut capabilities = Vec::new();
        if params.iter().any(|p| p == "structured_outputs") {
            capabilities.push("json_schema".to_string());
        }
        for (param, cap) in [("tools", "tools"), ("logprobs", "logprobs")] {
            if params.iter().any(|p| p == param) {
                capabilities.push(cap.to_string());
            }
        }
        let context_length = m
            .get("context_length")
            .and_then(Value::as_u64)
            .or_else(|| {
                m.pointer("/top_provider/context_length")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(4096) as u32;
        models.insert(
            id.to_string(),
            ModelFile {
                context_length,
                capabilities,
                parameters: params,
                endpoints: vec![EndpointFile {
                    provider: provider.to_string(),
                    model_id: None,
                    price: PriceFile {
                        input,
                        output,
                        cached: price("input_cache_read")?,
                    },
                    data_collection: DataPolicy::Allow,
                    zdr: false,
                    quantization: None,
                    throughput: None,
                    latency: None,
                    parameters: None,
                }],
            },
        );
    }
    Ok(CatalogFile { models })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{"data": [
      {"id": "openai/gpt-4o-mini", "name": "OpenAI: GPT-4o-mini", "context_length": 128000,
       "pricing": {"prompt": "0.00000015", "completion": "0.0000006", "input_cache_read": "0.000000075"},
       "supported_parameters": ["max_tokens", "temperature", "response_format", "structured_outputs", "tools", "logprobs"]},
      {"id": "anthropic/claude-3.5-haiku", "context_length": 200000,
       "pricing": {"prompt": "0.0000008", "completion": "0.000004"},
       "supported_parameters": ["max_tokens", "temperature", "tools"]},
      {"id": "openrouter/auto", "context_length": 2000000, "pricing": {"prompt": "-1", "completion": "-1"}}
    ]}"#;

    #[test]
    fn openrouter_listing_converts_with_exact_prices_and_round_trips() {
        let c = import_openrouter(FIXTURE, "openrouter").unwrap();
        assert_eq!(c.models.len(), 2, "the variable-price router is left out");
        let mini = &c.models["openai/gpt-4o-mini"];
        assert_eq!(mini.context_length, 128000);
        assert_eq!(mini.capabilities, ["json_schema", "tools", "logprobs"]);
        assert_eq!(mini.endpoints[0].price.input, PerMTok(150_000));
        assert_eq!(mini.endpoints[0].price.output, PerMTok(600_000));
        assert_eq!(mini.endpoints[0].price.cached, Some(PerMTok(75_000)));
        let haiku = &c.models["anthropic/claude-3.5-haiku"];
        assert!(!haiku.capabilities.contains(&"json_schema".to_string()));
        // The YAML written is the YAML read.
        let yaml = serde_norway::to_string(&c).unwrap();
        let back: CatalogFile = parse_yaml(Path::new("x.yaml"), &yaml).unwrap();
        assert_eq!(
            back.models["openai/gpt-4o-mini"].endpoints[0].price.output,
            PerMTok(600_000)
        );
    }

    #[test]
    fn rows_filter_and_sort() {
        let c = import_openrouter(FIXTURE, "openrouter").unwrap();
        let r = rows(&c, ModelSort::Price, None, None);
        assert_eq!(r[0].model, "openai/gpt-4o-mini");
        let r = rows(&c, ModelSort::Context, None, None);
        assert_eq!(r[0].model, "anthropic/claude-3.5-haiku");
        assert_eq!(
            rows(&c, ModelSort::Price, Some("json_schema"), None).len(),
            1
        );
        assert_eq!(rows(&c, ModelSort::Price, None, Some(1.0)).len(), 1);
        assert!(
            import_openrouter("{\"models\": []}", "x")
                .unwrap_err()
                .to_string()
                .contains("`data` array")
        );
    }
}
