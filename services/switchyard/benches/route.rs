//! Cost of one routing decision (`route::plan`) over a 300-model catalog.
//!
//! `cargo bench -p switchyard --bench route` prints ns/decision for a typical three-model
//! route and for a worst case that falls back across all 300 models (900 endpoints), with
//! live health lookups through `Health::view` as a worker does them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard::config::{DataPolicy, Endpoint, MaxPrice, ProviderPrefs, RouteModel, Variant};
use switchyard::money::PerMTok;
use switchyard::route::health::{BreakerConfig, Health};
use switchyard::route::{Needs, plan};

fn catalog() -> Vec<RouteModel> {
    (0..300)
        .map(|m| RouteModel {
            name: format!("vendor{}/model-{m}", m % 17),
            variant: match m % 3 {
                0 => Variant::Standard,
                1 => Variant::Floor,
                _ => Variant::Nitro,
            },
            endpoints: (0..3)
                .map(|p| Endpoint {
                    model: format!("vendor{}/model-{m}", m % 17),
                    provider: format!("provider-{}", (m + p) % 12),
                    model_id: format!("model-{m}"),
                    input: PerMTok(100_000 + 7_919 * ((m * 3 + p) as u64 % 97)),
                    output: PerMTok(400_000 + 15_401 * ((m * 5 + p) as u64 % 89)),
                    cached: PerMTok(50_000),
                    json_schema: m % 4 != 0,
                    context_length: 8_000 << (m % 5),
                    data_collection: if p == 0 {
                        DataPolicy::Deny
                    } else {
                        DataPolicy::Allow
                    },
                    zdr: p == 0,
                    quantization: None,
                    throughput: Some(50.0 + ((m * 13 + p * 7) % 200) as f64),
                    latency: Some(Duration::from_millis(100 + ((m + p) % 50) as u64 * 10)),
                    parameters: vec![
                        "response_format".into(),
                        "max_tokens".into(),
                        "temperature".into(),
                    ],
                })
                .collect(),
        })
        .collect()
}

fn measure(name: &str, models: &[RouteModel], prefs: &ProviderPrefs, health: &Health) {
    let needs = Needs {
        parameters: vec!["response_format".into(), "max_tokens".into()],
        prompt_tokens: Some(1_200),
        tenant: None,
    };
    let iterations = if models.len() > 10 { 2_000 } else { 200_000 };
    // Warm up.
    for i in 0..iterations / 10 {
        let now = Instant::now();
        black_box(plan(
            models,
            prefs,
            &needs,
            &|e| health.view(&e.provider, &e.model, now),
            Some(i as u64),
        ));
    }
    let started = Instant::now();
    let mut candidates = 0;
    for i in 0..iterations {
        let now = Instant::now();
        let p = plan(
            models,
            prefs,
            &needs,
            &|e| health.view(&e.provider, &e.model, now),
            Some(i as u64),
        );
        candidates += p.candidates.len();
        black_box(p);
    }
    let ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    println!(
        "{name:<48} {ns:>12.0} ns/decision  ({} endpoints considered, {:.0} candidates kept)",
        models.iter().map(|m| m.endpoints.len()).sum::<usize>(),
        candidates as f64 / iterations as f64
    );
}

fn main() {
    let models = catalog();
    let health = Health::new(BreakerConfig::default());
    // Some health history, as a running worker has.
    for m in &models {
        for e in &m.endpoints {
            health.success(&e.provider, &e.model, Duration::from_millis(300), 120);
        }
    }
    println!(
        "routing decision cost, catalog of {} models / {} endpoints",
        models.len(),
        models.len() * 3
    );
    let default = ProviderPrefs::default();
    measure(
        "3-model route, default (price-weighted)",
        &models[..3],
        &default,
        &health,
    );
    let strict = ProviderPrefs {
        ignore: vec!["provider-3".into()],
        order: vec!["provider-5".into(), "provider-1".into()],
        max_price: Some(MaxPrice {
            input: Some(PerMTok(700_000)),
            ..MaxPrice::default()
        }),
        require_parameters: true,
        data_collection: DataPolicy::Deny,
        ..ProviderPrefs::default()
    };
    measure(
        "3-model route, order/ignore/max_price/data policy",
        &models[..3],
        &strict,
        &health,
    );
    measure(
        "300-model fallback list, default",
        &models,
        &default,
        &health,
    );
    measure(
        "300-model fallback list, with every preference",
        &models,
        &strict,
        &health,
    );
}
