//! The simulator's profile: which models exist, how fast and how reliable each one is, which
//! faults each simulated provider injects, and the per-key rate limits it enforces.
//!
//! Profiles are YAML files (`llm-sim --profile FILE`); `Profile::default_profile()` is the one
//! shipped in `profiles/default.yaml` and used by `switchyard demo`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The profile shipped with the simulator.
pub const DEFAULT_PROFILE_YAML: &str = include_str!("../profiles/default.yaml");

/// A whole simulator configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Seed for every random choice; answers are a function of seed, model and messages.
    #[serde(default)]
    pub seed: u64,
    /// Multiplies every simulated latency: 0 answers at once, 0.1 is ten times faster.
    #[serde(default = "one")]
    pub latency_scale: f64,
    /// How long a request given the `timeout` fault hangs before it gets a 504.
    #[serde(default = "default_hang", with = "humantime_serde")]
    pub timeout_hang: Duration,
    /// Models by name, as the `model` field of a request names them.
    pub models: BTreeMap<String, ModelProfile>,
    /// Per-provider behaviour, selected by the path prefix `/{provider}/v1/...`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderProfile>,
    /// Per-key limits, by the bearer token the client sends.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyProfile>,
    /// Requests-per-minute limit for keys not listed in `keys` (none when absent).
    #[serde(default)]
    pub default_key_rpm: Option<u32>,
    /// Whether `[sim:…]` directives in prompts steer the simulator (tests); off, a ticket's
    /// text cannot force a fault, a confidence or an answer.
    #[serde(default = "yes")]
    pub directives: bool,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

fn default_hang() -> Duration {
    Duration::from_secs(60)
}

/// How one simulated model behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProfile {
    /// `cheap` or `strong`; informational, the numbers below decide behaviour.
    #[serde(default)]
    pub tier: Tier,
    /// Time to first token.
    #[serde(default)]
    pub latency: LatencyProfile,
    /// Output speed; completion tokens / tokens_per_s is added to the latency.
    #[serde(default = "default_tps")]
    pub tokens_per_s: f64,
    /// The distribution of self-reported confidence (a `confidence` property in the schema).
    #[serde(default)]
    pub confidence: ConfidenceProfile,
    /// Share of answers that are right when the caller passes the gold label (oracle mode).
    #[serde(default = "default_accuracy")]
    pub accuracy: f64,
    /// Honest miscalibration: the self-reported `confidence` is pushed this share of the way
    /// from the model's real probability of being right towards 1 (0: calibrated; 0.8: a
    /// model that says 0.95 when it is right 75% of the time). Token logprobs stay honest.
    #[serde(default)]
    pub overconfidence: f64,
    /// Out-of-scope queries answered with a confident wrong intent: when the gold answer
    /// (oracle mode) is `oos_label` for a field, this share of answers gives some other value
    /// of that field instead, sure of it (confidence 0.90–0.99, in the reported field and in
    /// the token logprobs alike: the model believes it).
    #[serde(default)]
    pub oos_confusion: f64,
    /// The gold value that marks an out-of-scope query.
    #[serde(default = "default_oos_label")]
    pub oos_label: String,
    /// Fault rates for this model, whichever provider serves it.
    #[serde(default)]
    pub faults: FaultRates,
    /// Context window in tokens (≈ 4 characters each); longer prompts get HTTP 400.
    #[serde(default)]
    pub context_length: Option<u64>,
}

fn default_tps() -> f64 {
    200.0
}

fn default_accuracy() -> f64 {
    0.8
}

fn default_oos_label() -> String {
    "none".into()
}

/// Model tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Small, fast, less sure of itself.
    #[default]
    Cheap,
    /// Large, slower, more often right.
    Strong,
}

/// Lognormal time to first token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyProfile {
    /// Median.
    #[serde(with = "humantime_serde")]
    pub p50: Duration,
    /// Shape of the lognormal (standard deviation of the log); 0 is a constant latency.
    #[serde(default)]
    pub sigma: f64,
}

impl Default for LatencyProfile {
    fn default() -> Self {
        Self {
            p50: Duration::from_millis(200),
            sigma: 0.3,
        }
    }
}

/// Normal distribution of confidence, clamped to [0.01, 0.99].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidenceProfile {
    /// Mean confidence.
    pub mean: f64,
    /// Standard deviation.
    pub spread: f64,
}

impl Default for ConfidenceProfile {
    fn default() -> Self {
        Self {
            mean: 0.85,
            spread: 0.1,
        }
    }
}

/// Probabilities (0..1) of each fault per request. They are drawn once per request in this
/// order, so their sum should stay at or below 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRates {
    /// HTTP 500.
    #[serde(default)]
    pub server_error: f64,
    /// HTTP 503 (overloaded / outage).
    #[serde(default)]
    pub unavailable: f64,
    /// The request hangs for `timeout_hang`, then 504.
    #[serde(default)]
    pub timeout: f64,
    /// HTTP 200 whose body is an error object and has no choices.
    #[serde(default)]
    pub in_band_error: f64,
    /// The answer's content is not valid JSON.
    #[serde(default)]
    pub malformed_json: f64,
    /// The answer is JSON that breaks the requested schema.
    #[serde(default)]
    pub schema_violation: f64,
}

impl FaultRates {
    /// Adds another set of rates to this one (provider faults on top of model faults).
    pub fn plus(&self, other: &FaultRates) -> FaultRates {
        FaultRates {
            server_error: self.server_error + other.server_error,
            unavailable: self.unavailable + other.unavailable,
            timeout: self.timeout + other.timeout,
            in_band_error: self.in_band_error + other.in_band_error,
            malformed_json: self.malformed_json + other.malformed_json,
            schema_violation: self.schema_violation + other.schema_violation,
        }
    }
}

/// Behaviour of one simulated provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderProfile {
    /// Faults added to every model this provider serves.
    #[serde(default)]
    pub faults: FaultRates,
    /// Models this provider serves (all when empty); others get 404.
    #[serde(default)]
    pub models: Vec<String>,
    /// Multiplies this provider's latencies (a slow provider).
    #[serde(default = "one")]
    pub latency_multiplier: f64,
}

impl Default for ProviderProfile {
    fn default() -> Self {
        Self {
            faults: FaultRates::default(),
            models: Vec::new(),
            latency_multiplier: 1.0,
        }
    }
}

/// A key the simulator knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProfile {
    /// Requests per minute this key may make; more get 429 with Retry-After.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// A revoked key: every request gets 401.
    #[serde(default)]
    pub revoked: bool,
    /// A key without credit: every request gets 402.
    #[serde(default)]
    pub out_of_credit: bool,
}

/// An error loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
}

impl Profile {
    /// Makes every model overconfident by `amount` (see [`ModelProfile::overconfidence`]).
    pub fn with_overconfidence(mut self, amount: f64) -> Self {
        for m in self.models.values_mut() {
            m.overconfidence = amount.clamp(0.0, 1.0);
        }
        self
    }

    /// Makes every model answer out-of-scope queries with a confident wrong intent this share
    /// of the time (see [`ModelProfile::oos_confusion`]).
    pub fn with_oos_confusion(mut self, amount: f64) -> Self {
        for m in self.models.values_mut() {
            m.oos_confusion = amount.clamp(0.0, 1.0);
        }
        self
    }

    /// Parses a profile from YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ProfileError> {
        serde_norway::from_str(text).map_err(|e| ProfileError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The profile shipped in `profiles/default.yaml`.
    pub fn default_profile() -> Result<Self, ProfileError> {
        Self::from_yaml(DEFAULT_PROFILE_YAML, "profiles/default.yaml")
    }

    /// The faults for `model` when served by `provider`.
    pub fn faults_for(&self, provider: Option<&str>, model: &ModelProfile) -> FaultRates {
        match provider.and_then(|p| self.providers.get(p)) {
            Some(p) => model.faults.plus(&p.faults),
            None => model.faults.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_parses() {
        let p = Profile::default_profile().unwrap();
        assert!(p.models.len() >= 4);
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let err = Profile::from_yaml("models: {}\nsede: 3\n", "x.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sede"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }
}
