//! End-to-end tenancy: unknown tenants, allowlists, BYOK key order and fallback, budgets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard::config::tenant::Tenant;
use switchyard::config::{DataPolicy, ProviderKey};
use switchyard::envelope::{AttemptClass, DeadLetterReason};
use switchyard::money::MicroUsd;
use switchyard::secret::{KeyRef, Secret};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{ids, job, quiet_profile};

const WAIT: Duration = Duration::from_secs(30);

fn key(env: &str, secret: &str) -> ProviderKey {
    ProviderKey {
        key_ref: KeyRef::Env(env.into()),
        secret: Secret::new(secret),
        rpm: None,
        tpm: None,
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant {
        name: name.into(),
        allowed_models: vec![],
        allowed_providers: vec![],
        data_collection: DataPolicy::Allow,
        daily: None,
        monthly: None,
        keys: vec![],
        shared_keys: true,
    }
}

fn tenant_job(id: &str, tenant: &str) -> switchyard::envelope::Intake {
    let mut j = job(id, "[sim:high_confidence] where is my card");
    j.tenant = tenant.into();
    j
}

async fn harness(tenants: Vec<Tenant>) -> Harness {
    let mut h = Harness::start(quiet_profile(), 2).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h.pipeline.stages[0].route.provider.only = vec!["simcloud".into()];
    h.pipeline.providers.get_mut("simcloud").unwrap().keys =
        vec![key("SHARED_SIMCLOUD_KEY", "sk-shared-1111")];
    let map: BTreeMap<String, Tenant> = tenants.into_iter().map(|t| (t.name.clone(), t)).collect();
    h.pipeline.tenants = Some(map);
    h.run_pipeline().await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byok_first_shared_keys_only_when_allowed_and_unknown_tenants_dead_lettered() {
    let mut acme = tenant("acme");
    acme.keys = vec![("simcloud".into(), key("ACME_SIMCLOUD_KEY", "sk-acme-2222"))];
    let globex = tenant("globex");
    let mut initech = tenant("initech");
    initech.shared_keys = false;
    let mut h = harness(vec![acme, globex, initech]).await;
    let jobs = vec![
        tenant_job("t-acme", "acme"),
        tenant_job("t-globex", "globex"),
        tenant_job("t-initech", "initech"),
        tenant_job("t-nobody", "nobody"),
    ];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let acme = &tally.results["t-acme"][0].attempts[0];
    assert_eq!(acme.key.as_deref(), Some("env:ACME_SIMCLOUD_KEY"));
    assert!(acme.tenant_key, "acme's own key goes first");
    let globex = &tally.results["t-globex"][0].attempts[0];
    assert_eq!(globex.key.as_deref(), Some("env:SHARED_SIMCLOUD_KEY"));
    assert!(!globex.tenant_key);

    let initech = &tally.dead["t-initech"][0];
    assert_eq!(initech.reason, DeadLetterReason::ProviderExhausted);
    assert!(initech.attempts.is_empty(), "no call without a usable key");
    assert!(
        initech.detail.contains("no key of its own for simcloud"),
        "{}",
        initech.detail
    );

    let nobody = &tally.dead["t-nobody"][0];
    assert_eq!(nobody.reason, DeadLetterReason::UnknownTenant);
    assert!(nobody.replayable);
    assert!(nobody.detail.contains("`nobody`"), "{}", nobody.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowlists_and_data_policy_steer_the_route() {
    let mut edge_only = tenant("edge-only");
    edge_only.allowed_providers = vec!["simedge".into()];
    let mut private = tenant("private");
    private.data_collection = DataPolicy::Deny; // the shipped catalog's endpoints all may keep data
    let mut h = Harness::start(quiet_profile(), 2).await;
    h.pipeline.stages[0].gate.escalate_if.clear();
    h.pipeline.tenants = Some(
        [edge_only, private]
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect(),
    );
    h.run_pipeline().await;
    let jobs = vec![
        tenant_job("t-edge", "edge-only"),
        tenant_job("t-private", "private"),
    ];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, WAIT).await;
    h.stop_pipeline().await;

    let r = &tally.results["t-edge"][0];
    assert!(
        r.attempts.iter().all(|a| a.provider == "simedge"),
        "{:?}",
        r.attempts
    );
    let d = &tally.dead["t-private"][0];
    assert!(d.detail.contains("data policy"), "{}", d.detail);
    assert!(d.attempts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_stops_jobs_before_any_call() {
    let mut thrifty = tenant("thrifty");
    // A job's worst case at swift-mini is a few hundred micro-dollars: room for a handful.
    thrifty.daily = Some(MicroUsd(2_000));
    let mut h = harness(vec![thrifty]).await;
    let first: Vec<_> = (0..3)
        .map(|i| tenant_job(&format!("b-first-{i}"), "thrifty"))
        .collect();
    h.produce(&first).await;
    let tally = h.collect(&ids(&first), 0, WAIT).await;
    assert_eq!(tally.results.len(), 3, "{:?}", tally.dead);
    let spent: u64 = tally.results.values().map(|r| r[0].cost_micro_usd.0).sum();

    let later: Vec<_> = (0..20)
        .map(|i| tenant_job(&format!("b-later-{i}"), "thrifty"))
        .collect();
    for j in &later {
        h.produce(std::slice::from_ref(j)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let tally = h.collect(&ids(&later), 0, WAIT).await;
    h.stop_pipeline().await;
    let refused: Vec<_> = later
        .iter()
        .filter_map(|j| tally.dead.get(j.job_id.as_str()))
        .map(|d| &d[0])
        .collect();
    assert!(
        !refused.is_empty(),
        "the budget must stop some jobs (spent {spent} µ$ before)"
    );
    for d in &refused {
        assert_eq!(d.reason, DeadLetterReason::BudgetExceeded);
        assert!(d.replayable);
        assert!(d.attempts.is_empty(), "refused before any call");
        assert!(d.detail.contains("daily budget"), "{}", d.detail);
    }
    let total: u64 = tally.results.values().map(|r| r[0].cost_micro_usd.0).sum();
    assert!(total <= 2_000, "spend {total} µ$ stays within the budget");
    assert!(
        tally
            .results
            .values()
            .all(|r| r[0].attempts.iter().all(|a| a.class == AttemptClass::Ok))
    );
}
