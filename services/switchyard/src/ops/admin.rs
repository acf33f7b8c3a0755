//! The admin page: stages, escalation rate, endpoint breakers, cost today by tenant, and dead
//! letters with a reason filter and a replay button. Server-rendered, no scripts; every value is
//! HTML-escaped.

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

pub(super) async fn page(State(ops): State<Arc<Ops>>, Query(q): Query<DlqQuery>) -> Html<String> {
    let t = ops.admin.snapshot();
    let p = &ops.pipeline;
    let secs = ops.started.elapsed().as_secs_f64().max(1.0);
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>Switchyard admin</title>{REFRESH}<style>body{font-family:system-ui,sans-serif;margin:2rem;color:#1a202c}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border-bottom:1px solid #e2e8f0;padding:.3rem .7rem;text-align:left}th{background:#f7fafc}.num{text-align:right;font-variant-numeric:tabular-nums}.open{color:#c53030;font-weight:600}.closed{color:#2f855a}button{cursor:pointer}</style></head><body>");
    let refresh = q.refresh.map(|r| r.clamp(2, 3600));
    h = h.replace(
        "{REFRESH}",
        &refresh.map_or(String::new(), |r| {
            format!("<meta http-equiv=\"refresh\" content=\"{r}\">")
        }),
    );
    let auto = match refresh {
        Some(r) => format!("reloading every {r} s · <a href=\"/\">stop</a>"),
        None => "<a href=\"/?refresh=10\" id=\"auto-refresh\">reload every 10 s</a>".into(),
    };
    h.push_str(&format!(
        "<h1>Switchyard — {}</h1><p>{} · up {:.0} s · <a href=\"/\">refresh</a> · {auto}</p>",
        esc(&p.name),
        esc(&p.description),
        secs
    ));

    // Stages.
    h.push_str("<h2>Stages</h2><table id=\"stages\"><tr><th>stage</th><th>topic</th><th class=\"num\">partitions</th><th class=\"num\">results</th><th class=\"num\">escalated</th><th class=\"num\">dead letters</th><th class=\"num\">jobs/s</th></tr>");
    let assigned = ops.readiness.assigned();
    let count =
        |stage: &str, end: JobEnd| t.jobs.get(&(stage.to_string(), end)).copied().unwrap_or(0);
    for s in &p.stages {
        let (r, e, d) = (
            count(&s.name, JobEnd::Result),
            count(&s.name, JobEnd::Escalated),
            count(&s.name, JobEnd::DeadLetter),
        );
        h.push_str(&format!(
            "<tr data-stage=\"{0}\"><td>{0}</td><td>{1}</td><td class=\"num\">{2}</td><td class=\"num jobs-result\">{3}</td><td class=\"num\">{4}</td><td class=\"num\">{5}</td><td class=\"num\">{6:.1}</td></tr>",
            esc(&s.name),
            esc(&s.input_topic),
            assigned.get(s.name.as_str()).copied().unwrap_or(0),
            r,
            e,
            d,
            (r + e + d) as f64 / secs
        ));
    }
    h.push_str("</table>");
    if let Some(first) = p.stages.first() {
        let (r, e, d) = (
            count(&first.name, JobEnd::Result),
            count(&first.name, JobEnd::Escalated),
            count(&first.name, JobEnd::DeadLetter),
        );
        let total = (r + e + d).max(1);
        h.push_str(&format!(
            "<p>Escalation rate at <b>{}</b>: <span id=\"escalation-rate\">{:.1}%</span> of {} jobs.</p>",
            esc(&first.name),
            e as f64 * 100.0 / total as f64,
            r + e + d
        ));
    }

    // Gates: thresholds and audited precision.
    h.push_str("<h2>Gates</h2><table id=\"gates\"><tr><th>stage</th><th class=\"num\">threshold</th><th class=\"num\">target precision</th><th class=\"num\">audit rate</th><th class=\"num\">audited</th><th class=\"num\">audited precision</th><th>95% interval</th></tr>");
    let book = ops.audits.get();
    for s in &p.stages {
        let g = &s.gate;
        let f = book.map(|b| b.figures(&s.name)).unwrap_or_default();
        let threshold = f.threshold.or(g.min_confidence);
        let (lo, hi) = f.interval();
        let dash = || "—".to_string();
        h.push_str(&format!(
            "<tr data-stage=\"{0}\"><td>{0}</td><td class=\"num\">{1}{2}</td><td class=\"num\">{3}</td><td class=\"num\">{4}</td><td class=\"num\">{5}</td><td class=\"num audited-precision\">{6}</td><td>{7}</td></tr>",
            esc(&s.name),
            threshold.map_or_else(dash, |t| format!("{t:.3}")),
            if f.threshold.is_some() { " (moved by audits)" } else { "" },
            g.target_precision.map_or_else(dash, |t| format!("{t:.3}")),
            g.audit.map_or_else(dash, |r| format!("{:.1}%", r * 100.0)),
            f.audited,
            f.precision().map_or_else(dash, |p| format!("{p:.3}")),
            if f.audited > 0 { format!("{lo:.3} – {hi:.3}") } else { dash() },
        ));
    }
    h.push_str("</table>");

    // Providers.
    h.push_str("<h2>Providers</h2><table id=\"providers\"><tr><th>endpoint</th><th>breaker</th><th class=\"num\">calls</th><th class=\"num\">failures</th><th class=\"num\">failed share</th><th class=\"num\" title=\"exponential moving average, each call weighing 0.2 (so mostly the last ~10 calls): what the breaker acts on\">recent error rate (moving average, ~last 10 calls)</th><th class=\"num\">latency ms</th></tr>");
    for r in ops.breakers() {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.2}</td><td class=\"num\">{}</td></tr>",
            esc(&r.endpoint),
            if r.breaker == "closed" { "closed" } else { "open" },
            esc(&r.breaker),
            r.calls,
            r.failures,
            r.failures as f64 / r.calls.max(1) as f64,
            r.error_rate,
            r.latency_ms.map_or("-".into(), |l| format!("{l:.0}"))
        ));
    }
    h.push_str("</table>");

    // Cost today.
    h.push_str("<h2>Cost today by tenant (UTC)</h2><table id=\"cost\"><tr><th>tenant</th><th class=\"num\">USD</th></tr>");
    for (tenant, micro) in &t.cost_today {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{:.6}</td></tr>",
            esc(if tenant.is_empty() { "(none)" } else { tenant }),
            *micro as f64 / 1e6
        ));
    }
    h.push_str("</table>");

    // Dead letters.
    let given = |v: &Option<String>| v.clone().filter(|r| !r.is_empty());
    let filter = crate::output::replay::Filter {
        reason: given(&q.reason),
        tenant: given(&q.tenant),
        job_id: given(&q.job_id),
        since: None,
        limit: None,
    };
    h.push_str(&format!(
        "<h2>Dead letters</h2><form method=\"get\" action=\"/\">reason <input name=\"reason\" id=\"reason\" value=\"{}\"> tenant <input name=\"tenant\" id=\"tenant\" value=\"{}\"> job <input name=\"job_id\" id=\"job_id\" value=\"{}\"> <button type=\"submit\">filter</button></form>",
        esc(q.reason.as_deref().unwrap_or("")),
        esc(q.tenant.as_deref().unwrap_or("")),
        esc(q.job_id.as_deref().unwrap_or(""))
    ));
    // Bounded whatever the topics hold: the newest 200 matching dead letters, slimmed.
    let keep = crate::output::replay::Keep {
        filter: &filter,
        at_most: 200,
        slim: true,
    };
    match crate::output::replay::read_picture_bounded(
        &ops.kafka,
        p,
        Duration::from_millis(700),
        keep,
    )
    .await
    {
        Err(e) => h.push_str(&format!(
            "<p>cannot read the dead-letter topic: {}</p>",
            esc(&e.to_string())
        )),
        Ok(picture) => {
            let rows = crate::output::replay::list(&picture, &filter);
            h.push_str(&format!(
                "<table id=\"dlq\"><tr><th>failed at</th><th>job</th><th>tenant</th><th>stage</th><th>reason</th><th class=\"num\">redrives</th><th>detail</th><th></th></tr><caption>{} dead letters (the newest, at most 200)</caption>",
                rows.len()
            ));
            for r in rows.iter().rev().take(200) {
                let action = if r.resolved {
                    "done".to_string()
                } else if r.replayable {
                    format!(
                        "<form method=\"post\" action=\"/dlq/replay\"><input type=\"hidden\" name=\"tenant\" value=\"{1}\"><input type=\"hidden\" name=\"job_id\" value=\"{0}\"><button class=\"replay\" data-job=\"{0}\" type=\"submit\">replay</button></form>",
                        esc(&r.job_id),
                        esc(&r.tenant)
                    )
                } else {
                    "not replayable".to_string()
                };
                let detail: String = r.detail.chars().take(160).collect();
                h.push_str(&format!(
                    "<tr data-job=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"reason\">{}</td><td class=\"num redrives\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&r.job_id),
                    esc(&r.failed_at),
                    esc(&r.job_id),
                    esc(&r.tenant),
                    esc(&r.stage),
                    esc(&r.reason),
                    r.redrive_count,
                    esc(&detail),
                    action
                ));
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</body></html>");
    Html(h)
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
