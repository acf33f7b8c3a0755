//! Tenants: who may use which models and providers, under which data policy, with which of
//! their own keys (BYOK), and within which daily and monthly budgets.
//! Budgets are enforced by the `limit::budget` module.

use crate::config::{DataPolicy, Endpoint, ProviderKey};
use crate::money::MicroUsd;

/// A tenant, resolved from tenants.yaml.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name, as jobs give it.
    pub name: String,
    /// Models it may use (all when empty).
    pub allowed_models: Vec<String>,
    /// Providers it may use (all when empty).
    pub allowed_providers: Vec<String>,
    /// `deny`: only endpoints that do not keep prompts.
    pub data_collection: DataPolicy,
    /// Daily budget.
    pub daily: Option<MicroUsd>,
    /// Monthly budget.
    pub monthly: Option<MicroUsd>,
    /// Its own keys, by provider (BYOK), tried before shared keys.
    pub keys: Vec<(String, ProviderKey)>,
    /// Whether the provider's shared keys may be used after its own.
    pub shared_keys: bool,
}

/// What the route must respect for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantRules {
    /// Tenant name.
    pub name: String,
    /// Allowed models (all when empty).
    pub models: Vec<String>,
    /// Allowed providers (all when empty).
    pub providers: Vec<String>,
    /// Leave out endpoints that may keep prompts.
    pub deny_data_collection: bool,
    /// When shared keys are not allowed: the providers it has its own key for.
    pub keyed_providers: Option<Vec<String>>,
}

impl Tenant {
    /// The route rules for this tenant.
    pub fn rules(&self) -> TenantRules {
        TenantRules {
            name: self.name.clone(),
            models: self.allowed_models.clone(),
            providers: self.allowed_providers.clone(),
            deny_data_collection: self.data_collection == DataPolicy::Deny,
            keyed_providers: (!self.shared_keys)
                .then(|| self.keys.iter().map(|(p, _)| p.clone()).collect()),
        }
    }
}

impl TenantRules {
    /// Why this tenant may not use `endpoint`, if it may not.
    pub fn exclusion(&self, endpoint: &Endpoint) -> Option<String> {
        let t = &self.name;
        if !self.models.is_empty() && !self.models.contains(&endpoint.model) {
            return Some(format!(
                "tenant {t} does not allow model {}",
                endpoint.model
            ));
        }
        if !self.providers.is_empty() && !self.providers.contains(&endpoint.provider) {
            return Some(format!(
                "tenant {t} does not allow provider {}",
                endpoint.provider
            ));
        }
        if self.deny_data_collection && endpoint.data_collection == DataPolicy::Allow {
            return Some(format!(
                "tenant {t}'s data policy refuses endpoints that may keep prompts"
            ));
        }
        if let Some(keyed) = &self.keyed_providers
            && !keyed.contains(&endpoint.provider)
        {
            return Some(format!(
                "tenant {t} has no key of its own for {} and does not allow shared keys",
                endpoint.provider
            ));
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::money::PerMTok;

    pub(crate) fn tenant() -> Tenant {
        Tenant {
            name: "acme".into(),
            allowed_models: vec!["m1".into()],
            allowed_providers: vec![],
            data_collection: DataPolicy::Deny,
            daily: Some(MicroUsd(1_000)),
            monthly: Some(MicroUsd(5_000)),
            keys: vec![],
            shared_keys: false,
        }
    }

    pub(crate) fn endpoint(model: &str, provider: &str, policy: DataPolicy) -> Endpoint {
        Endpoint {
            model: model.into(),
            provider: provider.into(),
            model_id: model.into(),
            input: PerMTok(1_000_000),
            output: PerMTok(2_000_000),
            cached: PerMTok(0),
            json_schema: true,
            context_length: 1000,
            data_collection: policy,
            zdr: false,
            quantization: None,
            throughput: None,
            latency: None,
            parameters: vec![],
        }
    }

    #[test]
    fn allowlists_data_policy_and_keys_exclude_endpoints() {
        let rules = tenant().rules();
        assert!(
            rules
                .exclusion(&endpoint("m2", "p", DataPolicy::Deny))
                .unwrap()
                .contains("does not allow model m2")
        );
        assert!(
            rules
                .exclusion(&endpoint("m1", "p", DataPolicy::Allow))
                .unwrap()
                .contains("data policy")
        );
        assert!(
            rules
                .exclusion(&endpoint("m1", "p", DataPolicy::Deny))
                .unwrap()
                .contains("no key of its own for p")
        );
        let mut t = tenant();
        t.shared_keys = true;
        assert_eq!(
            t.rules().exclusion(&endpoint("m1", "p", DataPolicy::Deny)),
            None
        );
    }
}
