//! `switchyard usage`: calls, tokens, cost, latency, failures, escalations and dead letters
//! from the ledger in PostgreSQL, grouped as asked, as a table, JSON or CSV.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use super::store::{PgLedger, StoreError, db};

/// How `switchyard usage` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By tenant.
    Tenant,
    /// By pipeline.
    Pipeline,
    /// By stage.
    Stage,
    /// By model.
    Model,
    /// By provider.
    Provider,
    /// By UTC day.
    Day,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Day => "to_char(date_trunc('day', at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')",
            // The other dimensions are columns of the same name.
            other => other.name(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant",
            GroupBy::Pipeline => "pipeline",
            GroupBy::Stage => "stage",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Day => "day",
        }
    }
}

/// Figures for one group (or the totals).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageFigures {
    /// Group values, by dimension name (empty for totals).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub group: BTreeMap<String, String>,
    /// LLM attempts.
    pub calls: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost, exact.
    pub cost_micro_usd: u64,
    /// Cost in dollars.
    pub cost_usd: f64,
    /// Attempts that failed, by class.
    pub failures_by_class: BTreeMap<String, u64>,
    /// Median attempt latency.
    pub p50_ms: f64,
    /// 95th percentile attempt latency.
    pub p95_ms: f64,
}

/// The whole `switchyard usage` answer.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageReport {
    /// Since when (RFC 3339), if limited.
    pub since: Option<String>,
    /// Everything in the window.
    pub totals: UsageFigures,
    /// Jobs that ended in the window.
    pub jobs: u64,
    /// Share of those jobs that were escalated.
    pub escalation_rate: f64,
    /// Escalations by reason.
    pub escalation_reasons: BTreeMap<String, u64>,
    /// Jobs dead-lettered, by reason.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Cost per finished job, in micro-dollars.
    pub cost_per_job_micro_usd: u64,
    /// Per group, when `--by` was given.
    pub groups: Vec<UsageFigures>,
    /// Audited precision of each audited stage (gate.audit) in the window.
    pub audits: Vec<AuditedStage>,
    /// Ledger records the database refused in the window, kept in `ledger_quarantine`.
    pub quarantined: u64,
}

/// One stage's audits: how often the next stage agreed with what it accepted.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditedStage {
    /// Pipeline.
    pub pipeline: String,
    /// The audited stage.
    pub stage: String,
    /// Audits with an answer to compare.
    pub audited: u64,
    /// Of those, agreements.
    pub agreed: u64,
    /// Agreement rate: the audited precision.
    pub precision: f64,
    /// Its 95% Wilson interval, low end.
    pub lower: f64,
    /// Its 95% Wilson interval, high end.
    pub upper: f64,
    /// The threshold the latest move set, when `target_precision` moved it.
    pub threshold: Option<f64>,
    /// Threshold moves in the window.
    pub threshold_moves: u64,
}

impl AuditedStage {
    /// The figures of `agreed` agreements in `audited` audits of `stage`, with no moves yet.
    pub fn new(pipeline: String, stage: String, audited: u64, agreed: u64) -> AuditedStage {
        let (lower, upper) = crate::audit::wilson(agreed, audited);
        AuditedStage {
            pipeline,
            stage,
            audited,
            agreed,
            precision: if audited == 0 {
                0.0
            } else {
                agreed as f64 / audited as f64
            },
            lower,
            upper,
            threshold: None,
            threshold_moves: 0,
        }
    }
}

/// Runs the usage queries.
pub async fn usage(
    ledger: &PgLedger,
    since: Option<OffsetDateTime>,
    by: &[GroupBy],
) -> Result<UsageReport, StoreError> {
    ledger.ready().await?;
    let client = ledger.client().await?;
    let epoch = OffsetDateTime::UNIX_EPOCH;
    let from = since.unwrap_or(epoch);
    let figures = "COUNT(*)::BIGINT, COALESCE(SUM(prompt_tokens),0)::BIGINT, COALESCE(SUM(completion_tokens),0)::BIGINT, \
                   COALESCE(SUM(cached_tokens),0)::BIGINT, COALESCE(SUM(reasoning_tokens),0)::BIGINT, \
                   COALESCE(SUM(cost_micro_usd),0)::BIGINT, \
                   COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), 0)::FLOAT8, \
                   COALESCE(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms), 0)::FLOAT8";
    let read = |row: &tokio_postgres::Row, offset: usize| -> UsageFigures {
        let n = |i: usize| row.get::<_, i64>(offset + i).max(0) as u64;
        UsageFigures {
            calls: n(0),
            prompt_tokens: n(1),
            completion_tokens: n(2),
            cached_tokens: n(3),
            reasoning_tokens: n(4),
            cost_micro_usd: n(5),
            cost_usd: n(5) as f64 / 1e6,
            p50_ms: row.get::<_, f64>(offset + 6),
            p95_ms: row.get::<_, f64>(offset + 7),
            ..UsageFigures::default()
        }
    };
    let total_row = client
        .query_one(
            &format!("SELECT {figures} FROM ledger_attempts WHERE at >= $1"),
            &[&from],
        )
        .await
        .map_err(db("usage totals"))?;
    let mut totals = read(&total_row, 0);
    for row in client
        .query("SELECT class, COUNT(*)::BIGINT FROM ledger_attempts WHERE at >= $1 AND class <> 'ok' GROUP BY class", &[&from])
        .await
        .map_err(db("usage failures"))?
    {
        totals.failures_by_class.insert(row.get(0), row.get::<_, i64>(1).max(0) as u64);
    }

    let mut groups = Vec::new();
    if !by.is_empty() {
        let cols: Vec<&str> = by.iter().map(|g| g.column()).collect();
        let list = cols.join(", ");
        let sql = format!(
            "SELECT {list}, {figures} FROM ledger_attempts WHERE at >= $1 GROUP BY {list} ORDER BY 1{}",
            (2..=cols.len())
                .map(|i| format!(", {i}"))
                .collect::<String>()
        );
        for row in client
            .query(&sql, &[&from])
            .await
            .map_err(db("usage groups"))?
        {
            let mut f = read(&row, cols.len());
            for (i, g) in by.iter().enumerate() {
                f.group
                    .insert(g.name().to_string(), row.get::<_, String>(i));
            }
            groups.push(f);
        }
        let fail_sql = format!(
            "SELECT {list}, class, COUNT(*)::BIGINT FROM ledger_attempts WHERE at >= $1 AND class <> 'ok' GROUP BY {list}, class"
        );
        for row in client
            .query(&fail_sql, &[&from])
            .await
            .map_err(db("usage group failures"))?
        {
            let key: Vec<String> = (0..cols.len()).map(|i| row.get::<_, String>(i)).collect();
            if let Some(f) = groups.iter_mut().find(|f| {
                by.iter()
                    .zip(&key)
                    .all(|(g, v)| f.group.get(g.name()) == Some(v))
            }) {
                f.failures_by_class.insert(
                    row.get(cols.len()),
                    row.get::<_, i64>(cols.len() + 1).max(0) as u64,
                );
            }
        }
    }

    let jobs_row = client
        .query_one(
            "SELECT COUNT(*)::BIGINT, COUNT(*) FILTER (WHERE escalated)::BIGINT, COALESCE(SUM(cost_micro_usd),0)::BIGINT FROM ledger_jobs WHERE at >= $1",
            &[&from],
        )
        .await
        .map_err(db("usage jobs"))?;
    let jobs = jobs_row.get::<_, i64>(0).max(0) as u64;
    let escalated = jobs_row.get::<_, i64>(1).max(0) as u64;
    let job_cost = jobs_row.get::<_, i64>(2).max(0) as u64;
    let mut escalation_reasons = BTreeMap::new();
    for row in client
        .query("SELECT r, COUNT(*)::BIGINT FROM ledger_jobs, unnest(escalation_reasons) AS r WHERE at >= $1 GROUP BY r", &[&from])
        .await
        .map_err(db("usage escalations"))?
    {
        escalation_reasons.insert(row.get(0), row.get::<_, i64>(1).max(0) as u64);
    }
    let mut dead_letters_by_reason = BTreeMap::new();
    for row in client
        .query("SELECT reason, COUNT(*)::BIGINT FROM ledger_jobs WHERE at >= $1 AND outcome = 'dead_letter' GROUP BY reason", &[&from])
        .await
        .map_err(db("usage dead letters"))?
    {
        let reason: Option<String> = row.get(0);
        dead_letters_by_reason.insert(reason.unwrap_or_default(), row.get::<_, i64>(1).max(0) as u64);
    }
    let mut audits = Vec::new();
    for row in client
        .query(
            "SELECT pipeline, stage, COUNT(agreed)::BIGINT, COUNT(*) FILTER (WHERE agreed)::BIGINT \
             FROM ledger_audits WHERE at >= $1 GROUP BY pipeline, stage ORDER BY 1, 2",
            &[&from],
        )
        .await
        .map_err(db("usage audits"))?
    {
        audits.push(AuditedStage::new(
            row.get(0),
            row.get(1),
            row.get::<_, i64>(2).max(0) as u64,
            row.get::<_, i64>(3).max(0) as u64,
        ));
    }
    for row in client
        .query(
            "SELECT pipeline, stage, COUNT(*)::BIGINT, (array_agg(to_threshold ORDER BY at DESC))[1] \
             FROM ledger_threshold_moves WHERE at >= $1 GROUP BY pipeline, stage",
            &[&from],
        )
        .await
        .map_err(db("usage threshold moves"))?
    {
        let (pipeline, stage): (String, String) = (row.get(0), row.get(1));
        if let Some(a) = audits
            .iter_mut()
            .find(|a| a.pipeline == pipeline && a.stage == stage)
        {
            a.threshold_moves = row.get::<_, i64>(2).max(0) as u64;
            a.threshold = row.get(3);
        }
    }
    let quarantined = client
        .query_one(
            "SELECT COUNT(*)::BIGINT FROM ledger_quarantine WHERE at >= $1",
            &[&from],
        )
        .await
        .map_err(db("usage quarantine"))?
        .get::<_, i64>(0)
        .max(0) as u64;
    Ok(UsageReport {
        audits,
        quarantined,
        since: since.and_then(|s| {
            s.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        totals,
        jobs,
        escalation_rate: if jobs == 0 {
            0.0
        } else {
            escalated as f64 / jobs as f64
        },
        escalation_reasons,
        dead_letters_by_reason,
        cost_per_job_micro_usd: job_cost.checked_div(jobs).unwrap_or(0),
        groups,
    })
}

/// The report as a table.
pub fn usage_table(r: &UsageReport, by: &[GroupBy]) -> String {
    let mut out = String::new();
    let line = |f: &UsageFigures, label: &str| {
        format!(
            "{label:<40} {:>8} {:>12} {:>12} {:>10} {:>14} {:>9.0} {:>9.0}\n",
            f.calls,
            f.prompt_tokens,
            f.completion_tokens,
            f.cached_tokens,
            crate::money::MicroUsd(f.cost_micro_usd).to_string(),
            f.p50_ms,
            f.p95_ms
        )
    };
    out.push_str(&format!(
        "{:<40} {:>8} {:>12} {:>12} {:>10} {:>14} {:>9} {:>9}\n",
        "GROUP", "CALLS", "PROMPT TOK", "COMPL TOK", "CACHED", "COST", "P50 MS", "P95 MS"
    ));
    for g in &r.groups {
        let label: Vec<&str> = by
            .iter()
            .filter_map(|d| g.group.get(d.name()).map(String::as_str))
            .collect();
        out.push_str(&line(g, &label.join(" / ")));
    }
    out.push_str(&line(&r.totals, "TOTAL"));
    out.push_str(&format!(
        "\njobs {}  escalated {:.1}%  cost per job {}\n",
        r.jobs,
        r.escalation_rate * 100.0,
        crate::money::MicroUsd(r.cost_per_job_micro_usd)
    ));
    for (k, v) in &r.escalation_reasons {
        out.push_str(&format!("  escalation {k}: {v}\n"));
    }
    for (k, v) in &r.dead_letters_by_reason {
        out.push_str(&format!("  dead letter {k}: {v}\n"));
    }
    for (k, v) in &r.totals.failures_by_class {
        out.push_str(&format!("  failed attempts {k}: {v}\n"));
    }
    if r.quarantined > 0 {
        out.push_str(&format!(
            "  ledger records the database refused (kept in ledger_quarantine): {}\n",
            r.quarantined
        ));
    }
    if !r.audits.is_empty() {
        out.push_str("\naudited precision (the next stage re-did a sample of accepted jobs)\n");
        for a in &r.audits {
            out.push_str(&format!(
                "  {} / {}: {:.3} of {} audits agreed (95% interval {:.3}–{:.3})",
                a.pipeline, a.stage, a.precision, a.audited, a.lower, a.upper
            ));
            if let Some(t) = a.threshold {
                out.push_str(&format!(
                    "; threshold moved {} times, now {t:.3}",
                    a.threshold_moves
                ));
            }
            out.push('\n');
        }
    }
    out
}

/// The report as CSV (one row per group, then the totals).
pub fn usage_csv(r: &UsageReport, by: &[GroupBy]) -> String {
    let dims: Vec<&str> = by.iter().map(|g| g.name()).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    header.extend(
        [
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "cost_micro_usd",
            "p50_ms",
            "p95_ms",
        ]
        .map(String::from),
    );
    let mut rows = vec![header];
    let row = |f: &UsageFigures, mut labels: Vec<String>| {
        labels.extend([
            f.calls.to_string(),
            f.prompt_tokens.to_string(),
            f.completion_tokens.to_string(),
            f.cached_tokens.to_string(),
            f.reasoning_tokens.to_string(),
            f.cost_micro_usd.to_string(),
            format!("{:.1}", f.p50_ms),
            format!("{:.1}", f.p95_ms),
        ]);
        labels
    };
    for g in &r.groups {
        rows.push(row(
            g,
            dims.iter()
                .map(|d| g.group.get(*d).cloned().unwrap_or_default())
                .collect(),
        ));
    }
    rows.push(row(
        &r.totals,
        dims.iter().map(|_| "TOTAL".to_string()).collect(),
    ));
    for r in rows {
        if let Err(e) = w.write_record(&r) {
            tracing::warn!(error = %e, "usage CSV: a row could not be written");
        }
    }
    w.into_inner()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_quote_what_needs_quoting_and_end_with_the_totals() {
        let mut g = UsageFigures {
            calls: 2,
            cost_micro_usd: 150,
            ..UsageFigures::default()
        };
        g.group
            .insert("model".into(), "vendor/model, \"large\"".into());
        let report = UsageReport {
            totals: UsageFigures {
                calls: 2,
                cost_micro_usd: 150,
                ..UsageFigures::default()
            },
            groups: vec![g],
            ..UsageReport::default()
        };
        let text = usage_csv(&report, &[GroupBy::Model]);
        let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(&rows[0][0], "vendor/model, \"large\"");
        assert_eq!(&rows[0][1], "2");
        assert_eq!(&rows[1][0], "TOTAL");
    }
}
