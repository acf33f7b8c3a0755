//! Where ledger records end up: PostgreSQL (deadpool-postgres, refinery migrations, idempotent
//! inserts) or memory (the demo and tests).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::{LedgerAttempt, LedgerAudit, LedgerJob, LedgerRecord, LedgerThresholdMove};

mod embedded {
    refinery::embed_migrations!("migrations");
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
    audits: Mutex<HashMap<(String, String, String), LedgerAudit>>,
    moves: Mutex<Vec<LedgerThresholdMove>>,
}

impl MemoryLedger {
    /// The audits recorded so far.
    pub fn audits(&self) -> Vec<LedgerAudit> {
        let audits = self.audits.lock().unwrap_or_else(|p| p.into_inner());
        audits.values().cloned().collect()
    }

    /// The threshold moves recorded so far, oldest first.
    pub fn threshold_moves(&self) -> Vec<LedgerThresholdMove> {
        self.moves.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many attempts and audits are recorded (without copying them).
    pub fn counts(&self) -> (usize, usize) {
        let attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let audits = self.audits.lock().unwrap_or_else(|p| p.into_inner()).len();
        (attempts, audits)
    }

    /// The attempts recorded so far.
    pub fn attempts(&self) -> Vec<LedgerAttempt> {
        let attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts.values().cloned().collect()
    }
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
                        jobs.entry((
                            j.pipeline.clone(),
                            format!("{}:{}:{}", j.tenant, j.job_id, j.redrive_count),
                        ))
                        .or_insert_with(|| j.clone());
                    }
                    LedgerRecord::Audit(a) => {
                        let mut audits = self.audits.lock().unwrap_or_else(|p| p.into_inner());
                        audits
                            .entry((
                                a.pipeline.clone(),
                                a.job_id.to_string(),
                                a.stage.to_string(),
                            ))
                            .or_insert_with(|| a.clone());
                    }
                    LedgerRecord::ThresholdMove(m) => {
                        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
                        if !moves.contains(m) {
                            moves.push(m.clone());
                        }
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
    /// Where the database is (`user@host:port/db`), never the password: for error texts.
    target: String,
}

/// `user@host:port/db` of a PostgreSQL URL, without its password.
fn pg_target(url: &str) -> String {
    let Ok(c) = url.parse::<tokio_postgres::Config>() else {
        return "the server in DATABASE_URL".into();
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
            tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
        })
        .collect();
    format!(
        "{}@{}/{}",
        c.get_user().unwrap_or("(default user)"),
        if hosts.is_empty() {
            "localhost:5432".to_string()
        } else {
            hosts.join(",")
        },
        c.get_dbname().unwrap_or("(default database)")
    )
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgLedger")
    }
}

pub(super) fn db<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
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
            target: pg_target(url),
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
        let mut client = self.pool.get().await.map_err(|e| self.unreachable(e))?;
        let client: &mut tokio_postgres::Client = &mut client;
        embedded::migrations::runner()
            .run_async(client)
            .await
            .map_err(db("migrations"))?;
        Ok(())
    }

    /// A client from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!(
            "cannot connect to PostgreSQL at {}: {}; is it running there, and is DATABASE_URL right?",
            self.target,
            redact_pg_error(&e.to_string())
        ))
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

const INSERT_AUDIT: &str = "INSERT INTO ledger_audits (pipeline, job_id, stage, tenant, auditor, decision, auditor_decision, agreed, \
     confidence, at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (pipeline, tenant, job_id, stage) DO NOTHING";

const INSERT_MOVE: &str = "INSERT INTO ledger_threshold_moves (pipeline, stage, at, from_threshold, to_threshold, target, audits, \
     agreed, lower, upper) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (pipeline, stage, at) DO NOTHING";

const INSERT_JOB: &str = "INSERT INTO ledger_jobs (pipeline, job_id, tenant, outcome, stage, reason, escalated, escalation_reasons, \
     needs_review, cost_micro_usd, latency_ms, at, redrive_count) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) \
     ON CONFLICT (pipeline, tenant, job_id, redrive_count) DO NOTHING";

/// Why a batch was not written.
enum WriteError {
    /// The database is down or busy: retry the batch later.
    Unavailable(StoreError),
    /// The database refused something in the batch (bad data, SQLSTATE class 22 or 23):
    /// retrying the same batch can never succeed.
    Refused(String),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Unavailable(e)
    }
}

fn refused(what: &str) -> impl Fn(tokio_postgres::Error) -> WriteError + '_ {
    move |e| {
        let data = e
            .as_db_error()
            .is_some_and(|d| matches!(&d.code().code()[..2], "22" | "23"));
        if data {
            WriteError::Refused(format!("{what}: {e}"))
        } else {
            WriteError::Unavailable(StoreError(format!("{what}: {e}")))
        }
    }
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgLedger {
    /// Writes `batch` in one transaction.
    async fn write_batch(&self, batch: &[LedgerRecord]) -> Result<(), WriteError> {
        {
            self.ready().await?;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(refused("begin"))?;
            let attempt_stmt = tx
                .prepare_cached(INSERT_ATTEMPT)
                .await
                .map_err(refused("prepare"))?;
            let job_stmt = tx
                .prepare_cached(INSERT_JOB)
                .await
                .map_err(refused("prepare"))?;
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
                                &l.job_id.as_str(),
                                &l.tenant.as_str(),
                                &l.pipeline,
                                &a.stage.as_str(),
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
                        .map_err(refused("insert attempt"))?;
                    }
                    LedgerRecord::Job(j) => {
                        let latency = j.latency_ms.map(i64_of);
                        let reason = j.reason.map(|r| r.as_str());
                        let escalation_reasons: Vec<&str> =
                            j.escalation_reasons.iter().map(|r| r.as_str()).collect();
                        tx.execute(
                            &job_stmt,
                            &[
                                &j.pipeline,
                                &j.job_id.as_str(),
                                &j.tenant.as_str(),
                                &j.outcome.as_str(),
                                &j.stage.as_str(),
                                &reason,
                                &j.escalated,
                                &escalation_reasons,
                                &j.needs_review,
                                &i64_of(j.cost_micro_usd),
                                &latency,
                                &j.at,
                                &i32::try_from(j.redrive_count).unwrap_or(i32::MAX),
                            ],
                        )
                        .await
                        .map_err(refused("insert job"))?;
                    }
                    LedgerRecord::Audit(a) => {
                        tx.execute(
                            INSERT_AUDIT,
                            &[
                                &a.pipeline,
                                &a.job_id.as_str(),
                                &a.stage.as_str(),
                                &a.tenant.as_str(),
                                &a.auditor.as_str(),
                                &a.decision.to_string(),
                                &a.auditor_decision.to_string(),
                                &a.agreed,
                                &a.confidence,
                                &a.at,
                            ],
                        )
                        .await
                        .map_err(refused("insert audit"))?;
                    }
                    LedgerRecord::ThresholdMove(m) => {
                        let c = &m.change;
                        tx.execute(
                            INSERT_MOVE,
                            &[
                                &m.pipeline,
                                &c.stage,
                                &m.at,
                                &c.from,
                                &c.to,
                                &c.target,
                                &i64_of(c.audits),
                                &i64_of(c.agreed),
                                &c.lower,
                                &c.upper,
                            ],
                        )
                        .await
                        .map_err(refused("insert threshold move"))?;
                    }
                }
            }
            tx.commit().await.map_err(refused("commit"))?;
            Ok(())
        }
    }

    /// Keeps a record PostgreSQL refuses, as JSON text with the reason, so it never blocks the
    /// records behind it and stays visible (`ledger_quarantine`, counted by `usage`).
    async fn quarantine(&self, record: &LedgerRecord, why: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        // serde_json escapes control characters (a NUL becomes \u0000), which TEXT accepts.
        let text = serde_json::to_string(record).unwrap_or_default();
        let why = why.replace('\0', "");
        tracing::error!(error = %why, "the database refused a ledger record; kept in ledger_quarantine");
        client
            .execute(
                // A replayed ledger topic brings the same record again: kept once.
                "INSERT INTO ledger_quarantine (record, error) SELECT $1, $2 \
                 WHERE NOT EXISTS (SELECT 1 FROM ledger_quarantine WHERE record = $1)",
                &[&text, &why],
            )
            .await
            .map_err(db("quarantine"))?;
        Ok(())
    }
}

impl LedgerStore for PgLedger {
    fn write<'a>(&'a self, batch: &'a [LedgerRecord]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self.write_batch(batch).await {
                Ok(()) => Ok(()),
                Err(WriteError::Unavailable(e)) => Err(e),
                // Something in the batch is refused: write the records one by one, and keep
                // the refused ones aside instead of retrying the whole batch for ever.
                Err(WriteError::Refused(_)) => {
                    for r in batch {
                        match self.write_batch(std::slice::from_ref(r)).await {
                            Ok(()) => {}
                            Err(WriteError::Unavailable(e)) => return Err(e),
                            Err(WriteError::Refused(why)) => self.quarantine(r, &why).await?,
                        }
                    }
                    Ok(())
                }
            }
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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_unreachable_database_is_named_without_its_password() {
        assert_eq!(
            pg_target("postgres://bob:s3cret@db.example:6543/ledger"),
            "bob@db.example:6543/ledger"
        );
        let store = PgLedger::new("postgres://bob:s3cret@127.0.0.1:1/ledger").unwrap();
        let e = store.client().await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    use super::*;
    use crate::ledger::tests::record;

    #[tokio::test]
    async fn memory_ledger_is_idempotent_on_attempt_id() {
        let l = MemoryLedger::default();
        l.write(&[record("a", 5), record("b", 7)]).await.unwrap();
        l.write(&[record("a", 5), record("b", 7), record("c", 1)])
            .await
            .unwrap();
        assert_eq!(l.totals().await.unwrap(), (3, 13));
    }
}
