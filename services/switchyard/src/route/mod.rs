//! The route: which endpoints a job tries, in which order, and why the others are left out.
//!
//! Plain functions over plain data. Models are tried in the stage's order (the fallback list);
//! each model's endpoints are filtered by the provider preferences (`only`, `ignore`,
//! `data_collection`, `zdr`, `max_price`, `require_parameters`, context length) and ordered:
//! `:floor` cheapest first, `:nitro` fastest first, an explicit `sort` by price, latency or
//! throughput, or by default a price-weighted pick of the first endpoint (weights 1/price², as
//! OpenRouter balances load) with the rest by price. Providers in `order` go first. Endpoints
//! whose circuit breaker is open are pushed to the back, not dropped, so a job still has
//! somewhere to go when everything is degraded.

pub mod health;

use std::time::Duration;

use serde::Serialize;

use crate::config::{DataPolicy, Endpoint, ProviderPrefs, RouteModel, SortBy, Variant};

/// What the route knows about an endpoint's recent behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HealthView {
    /// The breaker is open: calls would be refused.
    pub open: bool,
    /// Smoothed time to answer.
    pub latency: Option<Duration>,
    /// Smoothed completion tokens per second.
    pub throughput: Option<f64>,
    /// Smoothed share of failed calls (0..1).
    pub error_rate: f64,
}

/// What one job's request needs from an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Parameters the request uses (for `require_parameters`).
    pub parameters: Vec<String>,
    /// Estimated prompt size, when known.
    pub prompt_tokens: Option<u64>,
    /// The job's tenant's rules, when tenants are configured.
    pub tenant: Option<crate::config::tenant::TenantRules>,
}

/// An endpoint in the plan, with why it stands where it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate<'a> {
    /// The endpoint.
    #[serde(serialize_with = "endpoint_id")]
    pub endpoint: &'a Endpoint,
    /// Why here.
    pub why: String,
}

/// An endpoint left out, and the rule that left it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    /// Model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// The rule.
    pub rule: String,
}

/// The ordered candidates and the exclusions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan<'a> {
    /// In the order they will be tried.
    pub candidates: Vec<Candidate<'a>>,
    /// Left out.
    pub excluded: Vec<Exclusion>,
}

fn endpoint_id<S: serde::Serializer>(e: &&Endpoint, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&e.id())
}

fn usd(p: u64) -> String {
    format!("${:.2}/M", p as f64 / 1e6)
}

/// Why `endpoint` cannot serve under `prefs` and `needs`, if it cannot.
pub fn exclusion_rule(endpoint: &Endpoint, prefs: &ProviderPrefs, needs: &Needs) -> Option<String> {
    if let Some(rule) = needs.tenant.as_ref().and_then(|t| t.exclusion(endpoint)) {
        return Some(rule);
    }
    let p = &endpoint.provider;
    if !prefs.quantizations.is_empty()
        && let Some(q) = &endpoint.quantization
        && !prefs.quantizations.contains(q)
    {
        return Some(format!("quantization {q} is not in provider.quantizations"));
    }
    if !prefs.only.is_empty() && !prefs.only.contains(p) {
        return Some(format!("provider.only does not list {p}"));
    }
    if prefs.ignore.contains(p) {
        return Some(format!("provider.ignore lists {p}"));
    }
    if !prefs.allow_fallbacks && !prefs.order.is_empty() && !prefs.order.contains(p) {
        return Some(format!(
            "allow_fallbacks is false and provider.order does not list {p}"
        ));
    }
    if prefs.data_collection == DataPolicy::Deny && endpoint.data_collection == DataPolicy::Allow {
        return Some(
            "data_collection: deny, and this endpoint may keep or train on prompts".into(),
        );
    }
    if prefs.zdr && !endpoint.zdr {
        return Some("zdr: true, and this endpoint does not offer zero data retention".into());
    }
    if let Some(max) = &prefs.max_price {
        if let Some(limit) = max.input
            && endpoint.input > limit
        {
            return Some(format!(
                "input price {} is above max_price.input {}",
                usd(endpoint.input.0),
                usd(limit.0)
            ));
        }
        if let Some(limit) = max.output
            && endpoint.output > limit
        {
            return Some(format!(
                "output price {} is above max_price.output {}",
                usd(endpoint.output.0),
                usd(limit.0)
            ));
        }
    }
    if prefs.require_parameters && !endpoint.parameters.is_empty() {
        let missing: Vec<&str> = needs
            .parameters
            .iter()
            .filter(|n| !endpoint.parameters.contains(n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "require_parameters: does not support {}",
                missing.join(", ")
            ));
        }
    }
    if let Some(tokens) = needs.prompt_tokens
        && tokens > u64::from(endpoint.context_length)
    {
        return Some(format!(
            "prompt of ~{tokens} tokens exceeds its context window of {}",
            endpoint.context_length
        ));
    }
    None
}

/// Orders the candidates for one job. `health` looks up an endpoint's recent behaviour;
/// `seed` (the job's hash) makes the price-weighted pick repeatable for a job; without one the
/// most likely order is shown (cheapest first), as `route explain` does.
pub fn plan<'a>(
    models: &'a [RouteModel],
    prefs: &ProviderPrefs,
    needs: &Needs,
    health: &dyn Fn(&Endpoint) -> HealthView,
    seed: Option<u64>,
) -> Plan<'a> {
    // One health lookup per endpoint per decision; sorting asks many times.
    let mut memo: std::collections::HashMap<usize, HealthView> = std::collections::HashMap::new();
    for e in models.iter().flat_map(|m| &m.endpoints) {
        memo.insert(e as *const Endpoint as usize, health(e));
    }
    let health = &|e: &Endpoint| {
        memo.get(&(e as *const Endpoint as usize))
            .copied()
            .unwrap_or_default()
    };
    let mut healthy = Vec::new();
    let mut degraded = Vec::new();
    let mut excluded = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let mut usable: Vec<&Endpoint> = Vec::new();
        for e in &model.endpoints {
            match exclusion_rule(e, prefs, needs) {
                Some(rule) => excluded.push(Exclusion {
                    model: e.model.clone(),
                    provider: e.provider.clone(),
                    rule,
                }),
                None => usable.push(e),
            }
        }
        let (ordered, how) = order(
            &usable,
            model.variant,
            prefs,
            health,
            seed.map(|s| s ^ (i as u64)),
        );
        let keep = if !prefs.allow_fallbacks && prefs.order.is_empty() {
            1
        } else {
            ordered.len()
        };
        for (rank, e) in ordered.into_iter().enumerate() {
            if rank >= keep {
                excluded.push(Exclusion {
                    model: e.model.clone(),
                    provider: e.provider.clone(),
                    rule: "allow_fallbacks is false: only the model's first endpoint is used"
                        .into(),
                });
                continue;
            }
            let view = health(e);
            let position = if i == 0 {
                "primary model".to_string()
            } else {
                format!("fallback model #{i}")
            };
            let why = format!("{position}; {how}");
            if view.open {
                degraded.push(Candidate {
                    endpoint: e,
                    why: format!("{why}; pushed back: circuit breaker open"),
                });
            } else {
                healthy.push(Candidate { endpoint: e, why });
            }
        }
    }
    healthy.extend(degraded);
    Plan {
        candidates: healthy,
        excluded,
    }
}

fn order<'a>(
    endpoints: &[&'a Endpoint],
    variant: Variant,
    prefs: &ProviderPrefs,
    health: &dyn Fn(&Endpoint) -> HealthView,
    seed: Option<u64>,
) -> (Vec<&'a Endpoint>, String) {
    let mut list: Vec<&Endpoint> = endpoints.to_vec();
    let by_price = |a: &&Endpoint, b: &&Endpoint| {
        a.blended_price()
            .cmp(&b.blended_price())
            .then_with(|| a.provider.cmp(&b.provider))
    };
    let latency = |e: &Endpoint| health(e).latency.or(e.latency).unwrap_or(Duration::MAX);
    let throughput = |e: &Endpoint| health(e).throughput.or(e.throughput).unwrap_or(0.0);
    let how = match (variant, prefs.sort) {
        (Variant::Floor, _) | (Variant::Standard, Some(SortBy::Price)) => {
            list.sort_by(by_price);
            if variant == Variant::Floor {
                ":floor, cheapest first"
            } else {
                "sort: price"
            }
            .to_string()
        }
        (Variant::Nitro, _) | (Variant::Standard, Some(SortBy::Throughput)) => {
            list.sort_by(|a, b| {
                throughput(b)
                    .total_cmp(&throughput(a))
                    .then_with(|| by_price(a, b))
            });
            if variant == Variant::Nitro {
                ":nitro, fastest first"
            } else {
                "sort: throughput"
            }
            .to_string()
        }
        (Variant::Standard, Some(SortBy::Latency)) => {
            list.sort_by(|a, b| latency(a).cmp(&latency(b)).then_with(|| by_price(a, b)));
            "sort: latency".to_string()
        }
        (Variant::Standard, None) => {
            list.sort_by(by_price);
            // Price-weighted first pick among endpoints whose breaker is closed.
            let weights = primary_weights(&list, health);
            let total: f64 = weights.iter().sum();
            if let Some(seed) = seed
                && total > 0.0
                && list.len() > 1
            {
                let mut x = unit(seed) * total;
                let mut pick = 0;
                for (i, w) in weights.iter().enumerate() {
                    if x < *w {
                        pick = i;
                        break;
                    }
                    x -= w;
                }
                let first = list.remove(pick);
                list.insert(0, first);
            }
            "price-weighted (1/price²), then by price".to_string()
        }
    };
    if !prefs.order.is_empty() {
        // Listed providers first, in the listed order; the rest keep their order after them.
        list.sort_by_key(|e| {
            prefs
                .order
                .iter()
                .position(|p| *p == e.provider)
                .unwrap_or(usize::MAX)
        });
        return (list, format!("provider.order first, then {how}"));
    }
    (list, how)
}

/// Weights of the default price-weighted first pick: 1/price², lowered by the error rate,
/// zero for endpoints whose breaker is open.
fn primary_weights(list: &[&Endpoint], health: &dyn Fn(&Endpoint) -> HealthView) -> Vec<f64> {
    list.iter()
        .map(|e| {
            let view = health(e);
            if view.open {
                return 0.0;
            }
            let price = (e.blended_price().max(1)) as f64;
            (1.0 - view.error_rate.clamp(0.0, 0.95)) / (price * price)
        })
        .collect()
}

/// For a model routed with the default ordering: each eligible endpoint's chance of being
/// tried first, as `route explain` shows it.
pub fn primary_shares(
    model: &RouteModel,
    prefs: &ProviderPrefs,
    needs: &Needs,
    health: &dyn Fn(&Endpoint) -> HealthView,
) -> Vec<(String, f64)> {
    if model.variant != Variant::Standard || prefs.sort.is_some() || !prefs.order.is_empty() {
        return Vec::new();
    }
    let list: Vec<&Endpoint> = model
        .endpoints
        .iter()
        .filter(|e| exclusion_rule(e, prefs, needs).is_none())
        .collect();
    let weights = primary_weights(&list, health);
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Vec::new();
    }
    list.iter()
        .zip(weights)
        .map(|(e, w)| (e.provider.clone(), w / total))
        .collect()
}

/// A number in [0, 1) from a seed (splitmix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The seed of a job's first pick: FNV-1a of its id, so a redelivered job takes the same path.
pub fn job_seed(job_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job_id.bytes().chain(std::iter::once(0xff)) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaxPrice;
    use crate::money::PerMTok;

    fn ep(model: &str, provider: &str, input: f64, output: f64, tps: f64) -> Endpoint {
        Endpoint {
            model: model.into(),
            provider: provider.into(),
            model_id: model.into(),
            input: PerMTok::from_usd(input).unwrap(),
            output: PerMTok::from_usd(output).unwrap(),
            cached: PerMTok::from_usd(input).unwrap(),
            json_schema: true,
            context_length: 8000,
            data_collection: DataPolicy::Allow,
            zdr: false,
            quantization: None,
            throughput: Some(tps),
            latency: None,
            parameters: vec!["response_format".into(), "max_tokens".into()],
        }
    }

    fn model(name: &str, variant: Variant, endpoints: Vec<Endpoint>) -> RouteModel {
        RouteModel {
            name: name.into(),
            variant,
            endpoints,
        }
    }

    /// m1 at three providers: cheap-slow `a`, mid `b`, pricey-fast `c`; m2 at `a`.
    fn models(variant: Variant) -> &'static [RouteModel] {
        Vec::leak(vec![
            model(
                "m1",
                variant,
                vec![
                    ep("m1", "c", 3.0, 9.0, 300.0),
                    ep("m1", "a", 1.0, 2.0, 50.0),
                    ep("m1", "b", 2.0, 4.0, 100.0),
                ],
            ),
            model("m2", Variant::Standard, vec![ep("m2", "a", 0.1, 0.2, 80.0)]),
        ])
    }

    fn ids(p: &Plan<'_>) -> Vec<String> {
        p.candidates.iter().map(|c| c.endpoint.id()).collect()
    }

    fn healthy(_: &Endpoint) -> HealthView {
        HealthView::default()
    }

    fn run(models: &[RouteModel], prefs: &ProviderPrefs) -> Vec<String> {
        ids(&plan(models, prefs, &Needs::default(), &healthy, Some(1)))
    }

    #[test]
    fn floor_and_sort_price_put_the_cheapest_first() {
        assert_eq!(
            run(models(Variant::Floor), &ProviderPrefs::default()),
            ["a:m1", "b:m1", "c:m1", "a:m2"]
        );
        let prefs = ProviderPrefs {
            sort: Some(SortBy::Price),
            ..ProviderPrefs::default()
        };
        assert_eq!(
            run(models(Variant::Standard), &prefs),
            ["a:m1", "b:m1", "c:m1", "a:m2"]
        );
    }

    #[test]
    fn nitro_and_sort_throughput_put_the_fastest_first() {
        assert_eq!(
            run(models(Variant::Nitro), &ProviderPrefs::default()),
            ["c:m1", "b:m1", "a:m1", "a:m2"]
        );
        let prefs = ProviderPrefs {
            sort: Some(SortBy::Throughput),
            ..ProviderPrefs::default()
        };
        assert_eq!(
            run(models(Variant::Standard), &prefs),
            ["c:m1", "b:m1", "a:m1", "a:m2"]
        );
    }

    #[test]
    fn measured_health_beats_catalog_hints() {
        // `a` is slow on paper but measured fastest.
        let health = |e: &Endpoint| HealthView {
            throughput: Some(if e.provider == "a" { 900.0 } else { 10.0 }),
            latency: Some(Duration::from_millis(if e.provider == "b" {
                5
            } else {
                500
            })),
            ..HealthView::default()
        };
        let p = plan(
            models(Variant::Nitro),
            &ProviderPrefs::default(),
            &Needs::default(),
            &health,
            Some(1),
        );
        assert_eq!(ids(&p)[0], "a:m1");
        let prefs = ProviderPrefs {
            sort: Some(SortBy::Latency),
            ..ProviderPrefs::default()
        };
        let p = plan(
            models(Variant::Standard),
            &prefs,
            &Needs::default(),
            &health,
            Some(1),
        );
        assert_eq!(ids(&p)[0], "b:m1");
    }

    #[test]
    fn default_is_price_weighted_and_favours_the_cheapest() {
        let m = models(Variant::Standard);
        let mut firsts = std::collections::BTreeMap::<String, usize>::new();
        for seed in 0..2000u64 {
            let p = plan(
                m,
                &ProviderPrefs::default(),
                &Needs::default(),
                &healthy,
                Some(seed.wrapping_mul(0x9E37_79B9)),
            );
            *firsts
                .entry(p.candidates[0].endpoint.provider.clone())
                .or_default() += 1;
            assert_eq!(p.candidates.len(), 4);
        }
        // Weights 1/3², 1/6², 1/12²: a ≈ 76%, b ≈ 19%, c ≈ 5%.
        let share = |p: &str| firsts.get(p).copied().unwrap_or(0) as f64 / 2000.0;
        assert!((0.70..0.82).contains(&share("a")), "{firsts:?}");
        assert!((0.14..0.25).contains(&share("b")), "{firsts:?}");
        assert!((0.02..0.09).contains(&share("c")), "{firsts:?}");
    }

    #[test]
    fn open_breakers_are_pushed_back_not_dropped() {
        let health = |e: &Endpoint| HealthView {
            open: e.provider == "a",
            ..HealthView::default()
        };
        let p = plan(
            models(Variant::Floor),
            &ProviderPrefs::default(),
            &Needs::default(),
            &health,
            Some(1),
        );
        assert_eq!(ids(&p), ["b:m1", "c:m1", "a:m1", "a:m2"]);
        assert!(p.candidates[2].why.contains("circuit breaker open"));
    }

    #[test]
    fn order_only_ignore() {
        let prefs = ProviderPrefs {
            order: vec!["c".into(), "b".into()],
            ..ProviderPrefs::default()
        };
        assert_eq!(
            run(models(Variant::Floor), &prefs),
            ["c:m1", "b:m1", "a:m1", "a:m2"]
        );
        let prefs = ProviderPrefs {
            only: vec!["b".into()],
            ..ProviderPrefs::default()
        };
        let p = plan(
            models(Variant::Floor),
            &prefs,
            &Needs::default(),
            &healthy,
            Some(1),
        );
        assert_eq!(ids(&p), ["b:m1"]);
        assert_eq!(p.excluded.len(), 3);
        assert!(p.excluded.iter().all(|x| x.rule.contains("provider.only")));
        let prefs = ProviderPrefs {
            ignore: vec!["a".into()],
            ..ProviderPrefs::default()
        };
        assert_eq!(run(models(Variant::Floor), &prefs), ["b:m1", "c:m1"]);
    }

    #[test]
    fn allow_fallbacks_false() {
        let prefs = ProviderPrefs {
            allow_fallbacks: false,
            order: vec!["b".into()],
            ..ProviderPrefs::default()
        };
        let p = plan(
            models(Variant::Floor),
            &prefs,
            &Needs::default(),
            &healthy,
            Some(1),
        );
        assert_eq!(ids(&p), ["b:m1"]);
        assert!(
            p.excluded
                .iter()
                .any(|x| x.rule.contains("allow_fallbacks is false"))
        );
        let prefs = ProviderPrefs {
            allow_fallbacks: false,
            ..ProviderPrefs::default()
        };
        assert_eq!(run(models(Variant::Floor), &prefs), ["a:m1", "a:m2"]);
    }

    #[test]
    fn max_price_leaves_out_pricier_endpoints() {
        let prefs = ProviderPrefs {
            max_price: Some(MaxPrice {
                input: Some(PerMTok::from_usd(2.0).unwrap()),
                output: Some(PerMTok::from_usd(3.0).unwrap()),
                ..MaxPrice::default()
            }),
            ..ProviderPrefs::default()
        };
        let p = plan(
            models(Variant::Floor),
            &prefs,
            &Needs::default(),
            &healthy,
            Some(1),
        );
        assert_eq!(ids(&p), ["a:m1", "a:m2"]);
        let rules: Vec<&str> = p.excluded.iter().map(|x| x.rule.as_str()).collect();
        assert!(
            rules.contains(&"input price $3.00/M is above max_price.input $2.00/M"),
            "{rules:?}"
        );
        assert!(
            rules.contains(&"output price $4.00/M is above max_price.output $3.00/M"),
            "{rules:?}"
        );
    }

    #[test]
    fn require_parameters_data_collection_zdr_and_context() {
        let mut m = models(Variant::Floor).to_vec();
        m[0].endpoints[0].parameters = vec!["max_tokens".into()]; // c lacks response_format
        m[0].endpoints[1].data_collection = DataPolicy::Deny; // a does not keep data
        m[0].endpoints[1].zdr = true;
        m[1].endpoints[0].context_length = 100;
        let needs = Needs {
            parameters: vec!["response_format".into()],
            prompt_tokens: Some(500),
            tenant: None,
        };
        let prefs = ProviderPrefs {
            require_parameters: true,
            ..ProviderPrefs::default()
        };
        let p = plan(&m, &prefs, &needs, &healthy, Some(1));
        assert_eq!(ids(&p), ["a:m1", "b:m1"]);
        assert!(
            p.excluded
                .iter()
                .any(|x| x.provider == "c" && x.rule.contains("response_format"))
        );
        assert!(
            p.excluded
                .iter()
                .any(|x| x.model == "m2" && x.rule.contains("context window of 100"))
        );
        let prefs = ProviderPrefs {
            data_collection: DataPolicy::Deny,
            ..ProviderPrefs::default()
        };
        assert_eq!(
            ids(&plan(&m, &prefs, &Needs::default(), &healthy, Some(1))),
            ["a:m1"]
        );
        let prefs = ProviderPrefs {
            zdr: true,
            ..ProviderPrefs::default()
        };
        assert_eq!(
            ids(&plan(&m, &prefs, &Needs::default(), &healthy, Some(1))),
            ["a:m1"]
        );
    }
}
