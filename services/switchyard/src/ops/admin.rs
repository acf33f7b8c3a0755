//! The admin page: stages, escalation rate, endpoint breakers, cost today by tenant, and dead
//! letters with a reason filter and a replay button. Server-rendered from a minijinja template
//! (`admin.html`) that escapes every value; no scripts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::Ops;
use super::html::escape as esc;
use crate::envelope::JobEnd;

#[derive(Debug, Deserialize)]
pub(super) struct DlqQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
    /// Reload the page every this many seconds (2–3600).
    #[serde(default)]
    refresh: Option<u32>,
}

/// The page's template: minijinja escapes every value (the name ends in `.html`).
const TEMPLATE: &str = include_str!("admin.html");

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: std::sync::OnceLock<minijinja::Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        if let Err(e) = env.add_template("admin.html", TEMPLATE) {
            tracing::error!(error = %e, "the admin page template does not compile");
        }
        env
    })
}

pub(super) async fn page(State(ops): State<Arc<Ops>>, Query(q): Query<DlqQuery>) -> Response {
    let t = ops.admin.snapshot();
    let p = &ops.pipeline;
    let secs = ops.started.elapsed().as_secs_f64().max(1.0);
    let dash = || "—".to_string();

    let assigned = ops.readiness.assigned();
    let count =
        |stage: &str, end: JobEnd| t.jobs.get(&(stage.to_string(), end)).copied().unwrap_or(0);
    let stages: Vec<minijinja::Value> = p
        .stages
        .iter()
        .map(|s| {
            let (r, e, d) = (
                count(&s.name, JobEnd::Result),
                count(&s.name, JobEnd::Escalated),
                count(&s.name, JobEnd::DeadLetter),
            );
            minijinja::context! {
                name => s.name.as_str(),
                topic => s.input_topic,
                partitions => assigned.get(s.name.as_str()).copied().unwrap_or(0),
                results => r,
                escalated => e,
                dead => d,
                rate => format!("{:.1}", (r + e + d) as f64 / secs),
            }
        })
        .collect();
    let first = p.stages.first().map(|first| {
        let (r, e, d) = (
            count(&first.name, JobEnd::Result),
            count(&first.name, JobEnd::Escalated),
            count(&first.name, JobEnd::DeadLetter),
        );
        let total = (r + e + d).max(1);
        minijinja::context! {
            name => first.name.as_str(),
            rate => format!("{:.1}", e as f64 * 100.0 / total as f64),
            jobs => r + e + d,
        }
    });

    let book = ops.audits.get();
    let gates: Vec<minijinja::Value> = p
        .stages
        .iter()
        .map(|s| {
            let g = &s.gate;
            let f = book.map(|b| b.figures(&s.name)).unwrap_or_default();
            let (lo, hi) = f.interval();
            minijinja::context! {
                name => s.name.as_str(),
                threshold => f.threshold.or(g.min_confidence).map_or_else(dash, |t| format!("{t:.3}")),
                moved => f.threshold.is_some(),
                target => g.target_precision.map_or_else(dash, |t| format!("{t:.3}")),
                audit_rate => g.audit.map_or_else(dash, |r| format!("{:.1}%", r * 100.0)),
                audited => f.audited,
                precision => f.precision().map_or_else(dash, |p| format!("{p:.3}")),
                interval => if f.audited > 0 { format!("{lo:.3} – {hi:.3}") } else { dash() },
            }
        })
        .collect();

    let endpoints: Vec<minijinja::Value> = ops
        .breakers()
        .iter()
        .map(|r| {
            minijinja::context! {
                endpoint => r.endpoint,
                breaker => r.breaker,
                calls => r.calls,
                failures => r.failures,
                failed_share => format!("{:.3}", r.failures as f64 / r.calls.max(1) as f64),
                error_rate => format!("{:.2}", r.error_rate),
                latency => r.latency_ms.map_or("-".into(), |l| format!("{l:.0}")),
            }
        })
        .collect();
    let costs: Vec<minijinja::Value> = t
        .cost_today
        .iter()
        .map(|(tenant, micro)| {
            minijinja::context! {
                tenant => if tenant.is_empty() { "(none)" } else { tenant.as_str() },
                usd => format!("{:.6}", *micro as f64 / 1e6),
            }
        })
        .collect();

    // Dead letters: bounded whatever the topics hold (the newest 200 matching, slimmed).
    let given = |v: &Option<String>| v.clone().filter(|r| !r.is_empty());
    let filter = crate::output::replay::Filter {
        reason: given(&q.reason),
        tenant: given(&q.tenant),
        job_id: given(&q.job_id),
        since: None,
        limit: None,
    };
    let keep = crate::output::replay::Keep {
        filter: &filter,
        at_most: 200,
        slim: true,
    };
    let (dead, dlq_error) = match crate::output::replay::read_picture_bounded(
        &ops.kafka,
        p,
        Duration::from_millis(700),
        keep,
    )
    .await
    {
        Err(e) => (Vec::new(), Some(e.to_string())),
        Ok(picture) => {
            let mut rows = crate::output::replay::list(&picture, &filter);
            rows.reverse();
            rows.truncate(200);
            for r in &mut rows {
                r.detail = r.detail.chars().take(160).collect();
            }
            (rows, None)
        }
    };

    let refresh = q.refresh.map(|r| r.clamp(2, 3600));
    let context = minijinja::context! {
        name => p.name,
        description => p.description,
        uptime => format!("{secs:.0}"),
        refresh,
        stages,
        first,
        gates,
        endpoints,
        costs,
        filter => minijinja::context! {
            reason => q.reason.as_deref().unwrap_or(""),
            tenant => q.tenant.as_deref().unwrap_or(""),
            job_id => q.job_id.as_deref().unwrap_or(""),
        },
        dead,
        dlq_error,
    };
    match templates()
        .get_template("admin.html")
        .and_then(|t| t.render(context))
    {
        Ok(page) => Html(page).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the admin page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the admin page did not render; see the log",
            )
                .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReplayForm {
    job_id: String,
    /// The job's tenant: two tenants may both have a job 42.
    tenant: String,
}

pub(super) async fn replay(
    State(ops): State<Arc<Ops>>,
    axum::Form(form): axum::Form<ReplayForm>,
) -> Response {
    // Only this job's dead letters are kept (a replay needs their originals).
    let this_job = crate::output::replay::Filter {
        tenant: Some(form.tenant.clone()),
        job_id: Some(form.job_id.clone()),
        ..Default::default()
    };
    let keep = crate::output::replay::Keep {
        filter: &this_job,
        at_most: 100,
        slim: false,
    };
    let picture = match crate::output::replay::read_picture_bounded(
        &ops.kafka,
        &ops.pipeline,
        Duration::from_millis(700),
        keep,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_GATEWAY, esc(&e.to_string())).into_response(),
    };
    let (decisions, messages) =
        crate::output::replay::plan_replay(&picture, &ops.pipeline, &this_job, 3);
    let sent = match crate::output::replay::send(&ops.kafka, messages).await {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_GATEWAY, esc(&e.to_string())).into_response(),
    };
    let what = decisions
        .first()
        .map_or("no such dead letter".to_string(), |d| d.action.clone());
    tracing::info!(job_id = %form.job_id, tenant = %form.tenant, sent, action = %what, "admin: replay");
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>replay</title></head><body><p id=\"replayed\">{}: {} ({} sent)</p><p><a href=\"/\">back</a></p></body></html>",
        esc(&form.job_id),
        esc(&what),
        sent
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_on_the_page_is_escaped() {
        let evil = "<script>alert(1)</script>\"'";
        let context = minijinja::context! {
            name => evil,
            stages => vec![minijinja::context! { name => evil, topic => evil }],
            dead => vec![minijinja::context! { job_id => evil, tenant => evil, detail => evil, replayable => true }],
            filter => minijinja::context! { reason => evil },
        };
        let page = templates()
            .get_template("admin.html")
            .unwrap()
            .render(context)
            .unwrap();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{page}"
        );
        assert!(page.contains("data-job=\"&lt;script"), "{page}");
    }
}
