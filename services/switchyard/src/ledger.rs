//! The ledger: every LLM attempt and every job's final outcome, so teams see which models are
//! used where, by whom, why and at what cost.
//!
//! Stages publish [`LedgerRecord`]s to the pipeline's ledger topic together with the job's
//! output (both acknowledged before the offset moves). The sink ([`run_sink`]) reads that topic
//! and writes to a [`LedgerStore`]: PostgreSQL through deadpool-postgres with versioned
//! migrations (refinery), idempotent on `attempt_id` and on `(pipeline, job_id)`, or an
//! in-memory store for the demo. When the database is down the sink waits and retries the same
//! batch; its offsets only move after a write succeeds, so it catches up without losing or
//! double-counting anything, while the pipeline keeps running.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::envelope::Attempt;
use crate::kafka::KafkaSettings;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// One ledger message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerRecord {
    /// One LLM attempt.
    Attempt(LedgerAttempt),
    /// A job's final outcome.
    Job(LedgerJob),
}

/// An attempt with the job's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerAttempt {
    /// Job id.
    pub job_id: String,
    /// Tenant.
    pub tenant: String,
    /// Pipeline.
    pub pipeline: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The attempt itself.
    #[serde(flatten)]
    pub attempt: Attempt,
}

/// A job's final outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerJob {
    /// Job id (or `topic/partition/offset` for input that was not a job).
    pub job_id: String,
    /// Tenant (empty when unknown).
    pub tenant: String,
    /// Pipeline.
    pub pipeline: String,
    /// `result` or `dead_letter`.
    pub outcome: String,
    /// The stage where it ended.
    pub stage: String,
    /// Dead-letter reason, if any.
    pub reason: Option<String>,
    /// Whether it went past its first stage.
    pub escalated: bool,
    /// Every escalation's reason.
    pub escalation_reasons: Vec<String>,
    /// Whether the result was flagged for review.
    pub needs_review: bool,
    /// Total cost of its attempts.
    pub cost_micro_usd: u64,
    /// End-to-end latency, for results.
    pub latency_ms: Option<u64>,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A store failure (the database is down, say): the sink retries.
#[derive(Debug, thiserror::Error)]
#[error("ledger store: {0}")]
pub struct StoreError(pub String);

/// Where ledger records end up.
pub trait LedgerStore: Send + Sync {
    /// Writes a batch; records already written are skipped (idempotent).
    fn write<'a>(&'a self, batch: &'a [LedgerRecord]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Attempts stored and their total cost (for checks and the demo).
    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64), StoreError>>;
}

/// The demo's store, when no database is configured.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    attempts: Mutex<HashMap<String, LedgerAttempt>>,
    jobs: Mutex<HashMap<(String, String), LedgerJob>>,
}

impl LedgerStore for MemoryLedger {
    fn write<'a>(&'a self, batch: &'a [LedgerRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            for r in batch {
                match r {
                    LedgerRecord::Attempt(a) => {
                        attempts
                            .entry(a.attempt.attempt_id.clone())
                            .or_insert_with(|| a.clone());
                    }
                    LedgerRecord::Job(j) => {
                        jobs.entry((j.pipeline.clone(), j.job_id.clone()))
                            .or_insert_with(|| j.clone());
                    }
                }
            }
            Ok(())
        })
    }

    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64), StoreError>> {
        Box::pin(async move {
            let attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let cost = attempts.values().map(|a| a.attempt.cost_micro_usd.0).sum();
            Ok((attempts.len() as u64, cost))
        })
    }
}

/// The PostgreSQL ledger.
pub struct PgLedger {
    pool: deadpool_postgres::Pool,
    migrated: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgLedger")
    }
}

fn db<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

impl PgLedger {
    /// A pool for `url` (`postgres://user@host:port/db`). Connects lazily.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let config = deadpool_postgres::Config {
            url: Some(url.to_string()),
            ..Default::default()
        };
        let pool = config
            .create_pool(
                Some(deadpool_postgres::Runtime::Tokio1),
                tokio_postgres::NoTls,
            )
            // The URL may hold a password: never echo it.
            .map_err(|e| {
                StoreError(format!(
                    "DATABASE_URL is not a usable PostgreSQL URL ({})",
                    redact_pg_error(&e.to_string())
                ))
            })?;
        Ok(Self {
            pool,
            migrated: tokio::sync::OnceCell::new(),
        })
    }

    /// Migrates once, on first use (so a database that is down at start is waited for).
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.migrated
            .get_or_try_init(|| self.migrate())
            .await
            .map(|_| ())
    }

    /// Applies pending migrations (versioned, recorded in refinery_schema_history).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(db("connect"))?;
        let client: &mut tokio_postgres::Client = &mut client;
        embedded::migrations::runner()
            .run_async(client)
            .await
            .map_err(db("migrations"))?;
        Ok(())
    }

    /// A client from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(db("connect"))
    }

    /// Spend per tenant today and this month (UTC), to seed budgets at start.
    pub async fn spend(&self, now: OffsetDateTime) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.ready().await?;
        let client = self.client().await?;
        let day = now.replace_time(time::Time::MIDNIGHT);
        let month = day.replace_day(1).map_err(db("date"))?;
        let rows = client
            .query(
                "SELECT tenant, COALESCE(SUM(cost_micro_usd) FILTER (WHERE at >= $1), 0)::BIGINT, \
                 COALESCE(SUM(cost_micro_usd), 0)::BIGINT FROM ledger_attempts WHERE at >= $2 GROUP BY tenant",
                &[&day, &month],
            )
            .await
            .map_err(db("spend query"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1).max(0) as u64,
                    r.get::<_, i64>(2).max(0) as u64,
                )
            })
            .collect())
    }
}

fn redact_pg_error(text: &str) -> String {
    // deadpool/tokio-postgres config errors do not include the password, but be sure.
    text.split_whitespace()
        .map(|w| if w.contains("://") { "<url>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

const INSERT_ATTEMPT: &str = "INSERT INTO ledger_attempts (attempt_id, job_id, tenant, pipeline, stage, provider, model, key_ref, tenant_key, \
     status, class, error, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micro_usd, \
     provider_cost_micro_usd, latency_ms, repair, at) \
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21) ON CONFLICT (attempt_id) DO NOTHING";

const INSERT_JOB: &str = "INSERT INTO ledger_jobs (pipeline, job_id, tenant, outcome, stage, reason, escalated, escalation_reasons, \
     needs_review, cost_micro_usd, latency_ms, at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) \
     ON CONFLICT (pipeline, job_id) DO NOTHING";

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl LedgerStore for PgLedger {
    fn write<'a>(&'a self, batch: &'a [LedgerRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.ready().await?;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db("begin"))?;
            let attempt_stmt = tx
                .prepare_cached(INSERT_ATTEMPT)
                .await
                .map_err(db("prepare"))?;
            let job_stmt = tx.prepare_cached(INSERT_JOB).await.map_err(db("prepare"))?;
            for r in batch {
                match r {
                    LedgerRecord::Attempt(l) => {
                        let a = &l.attempt;
                        let status = a.status.map(i32::from);
                        let provider_cost = a.provider_cost_micro_usd.map(|c| i64_of(c.0));
                        tx.execute(
                            &attempt_stmt,
                            &[
                                &a.attempt_id,
                                &l.job_id,
                                &l.tenant,
                                &l.pipeline,
                                &a.stage,
                                &a.provider,
                                &a.model,
                                &a.key,
                                &a.tenant_key,
                                &status,
                                &a.class.as_str(),
                                &a.error,
                                &i64_of(a.prompt_tokens),
                                &i64_of(a.completion_tokens),
                                &i64_of(a.cached_tokens),
                                &i64_of(a.reasoning_tokens),
                                &i64_of(a.cost_micro_usd.0),
                                &provider_cost,
                                &i64_of(a.latency_ms),
                                &a.repair,
                                &l.at,
                            ],
                        )
                        .await
                        .map_err(db("insert attempt"))?;
                    }
                    LedgerRecord::Job(j) => {
                        let latency = j.latency_ms.map(i64_of);
                        tx.execute(
                            &job_stmt,
                            &[
                                &j.pipeline,
                                &j.job_id,
                                &j.tenant,
                                &j.outcome,
                                &j.stage,
                                &j.reason,
                                &j.escalated,
                                &j.escalation_reasons,
                                &j.needs_review,
                                &i64_of(j.cost_micro_usd),
                                &latency,
                                &j.at,
                            ],
                        )
                        .await
                        .map_err(db("insert job"))?;
                    }
                }
            }
            tx.commit().await.map_err(db("commit"))?;
            Ok(())
        })
    }

    fn totals(&self) -> BoxFuture<'_, Result<(u64, u64), StoreError>> {
        Box::pin(async move {
            self.ready().await?;
            let client = self.client().await?;
            let row = client
                .query_one("SELECT COUNT(*)::BIGINT, COALESCE(SUM(cost_micro_usd), 0)::BIGINT FROM ledger_attempts", &[])
                .await
                .map_err(db("totals"))?;
            Ok((
                row.get::<_, i64>(0).max(0) as u64,
                row.get::<_, i64>(1).max(0) as u64,
            ))
        })
    }
}

/// Reads the ledger topic and writes it to `store` until `shutdown`. Batches of up to 500
/// records or 200 ms; a failed write is retried (backoff up to 5 s) before offsets move.
pub async fn run_sink(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    store: &dyn LedgerStore,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut config = kafka.reader(group);
    // Offsets are committed by hand after each successful write; a long database outage must
    // not make the group evict the sink.
    config.set("max.poll.interval.ms", "86400000");
    let consumer: StreamConsumer = config.create().map_err(|e| {
        format!(
            "ledger sink: cannot create a consumer: {}",
            crate::kafka::error_text(&e)
        )
    })?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| format!("ledger sink: cannot subscribe to {topic}: {e}"))?;
    tracing::info!(topic, group, "ledger sink consuming");
    let mut batch: Vec<LedgerRecord> = Vec::new();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let deadline = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(deadline);
        let stop = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break true,
                _ = &mut deadline => break false,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        offsets.insert(m.partition(), m.offset());
                        match m.payload().map(serde_json::from_slice::<LedgerRecord>) {
                            Some(Ok(r)) => batch.push(r),
                            Some(Err(e)) => tracing::error!(partition = m.partition(), offset = m.offset(), error = %e, "ledger message is not a ledger record; skipped"),
                            None => {}
                        }
                        if batch.len() >= 500 {
                            break false;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger sink: consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        if !batch.is_empty() {
            let mut backoff = Duration::from_millis(200);
            loop {
                match store.write(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, records = batch.len(), retry_in = ?backoff, "ledger write failed; will retry (nothing is lost)");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            batch.clear();
        }
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &offsets {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(o + 1));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "ledger sink: commit failed; records may be re-read (writes are idempotent)");
            }
            offsets.clear();
        }
        if stop {
            return Ok(());
        }
    }
}

/// How `switchyard usage` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    Ok(UsageReport {
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
    out
}

/// The report as CSV (one row per group, then the totals).
pub fn usage_csv(r: &UsageReport, by: &[GroupBy]) -> String {
    let mut out = String::new();
    let dims: Vec<&str> = by.iter().map(|g| g.name()).collect();
    out.push_str(&dims.iter().map(|d| format!("{d},")).collect::<String>());
    out.push_str("calls,prompt_tokens,completion_tokens,cached_tokens,reasoning_tokens,cost_micro_usd,p50_ms,p95_ms\n");
    let row = |f: &UsageFigures, labels: Vec<String>| {
        let mut s: String = labels
            .iter()
            .map(|l| format!("{},", csv_field(l)))
            .collect();
        s.push_str(&format!(
            "{},{},{},{},{},{},{:.1},{:.1}\n",
            f.calls,
            f.prompt_tokens,
            f.completion_tokens,
            f.cached_tokens,
            f.reasoning_tokens,
            f.cost_micro_usd,
            f.p50_ms,
            f.p95_ms
        ));
        s
    };
    for g in &r.groups {
        out.push_str(&row(
            g,
            dims.iter()
                .map(|d| g.group.get(*d).cloned().unwrap_or_default())
                .collect(),
        ));
    }
    out.push_str(&row(
        &r.totals,
        dims.iter().map(|_| "TOTAL".to_string()).collect(),
    ));
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::AttemptClass;
    use crate::money::MicroUsd;

    fn record(id: &str, cost: u64) -> LedgerRecord {
        LedgerRecord::Attempt(LedgerAttempt {
            job_id: "j".into(),
            tenant: "t".into(),
            pipeline: "p".into(),
            at: OffsetDateTime::UNIX_EPOCH,
            attempt: Attempt {
                attempt_id: id.into(),
                stage: "s".into(),
                provider: "p".into(),
                model: "m".into(),
                status: Some(200),
                class: AttemptClass::Ok,
                error: None,
                latency_ms: 1,
                prompt_tokens: 1,
                completion_tokens: 1,
                cost_micro_usd: MicroUsd(cost),
                repair: false,
                key: Some("env:K".into()),
                tenant_key: false,
                cached_tokens: 0,
                reasoning_tokens: 0,
                provider_cost_micro_usd: None,
            },
        })
    }

    #[tokio::test]
    async fn memory_ledger_is_idempotent_on_attempt_id() {
        let l = MemoryLedger::default();
        l.write(&[record("a", 5), record("b", 7)]).await.unwrap();
        l.write(&[record("a", 5), record("b", 7), record("c", 1)])
            .await
            .unwrap();
        assert_eq!(l.totals().await.unwrap(), (3, 13));
    }

    #[test]
    fn records_round_trip_with_a_kind_tag() {
        let r = record("a", 5);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"kind\":\"attempt\""), "{text}");
        assert!(text.contains("\"attempt_id\":\"a\""), "flattened: {text}");
        assert_eq!(serde_json::from_str::<LedgerRecord>(&text).unwrap(), r);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
