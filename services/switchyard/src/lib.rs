//! Switchyard: run LLM work on Kafka event streams without tying yourself to one model vendor.
//!
//! Jobs arrive on a pipeline's intake topic. Each stage (its own consumer group) renders a
//! prompt, calls its route's models in fallback order, validates the answer against the stage's
//! output schema (with one repair re-ask), and lets the gate accept, escalate to the next
//! stage's topic, or dead-letter. Nothing is dropped: every job ends on the results topic or
//! the dead-letter topic with its reason.
//!
//! This crate is the product only; the `switchyard` command and its tools live in
//! `switchyard-cli`, the shared test harness in `switchyard-testkit`. Modules, in the order a
//! job meets them:
//!
//! - [`app`]: the composition root; wires a pipeline into running stages.
//! - [`config`]: pipeline, catalog, providers and tenants files → resolved types, with errors
//!   at exact lines.
//! - [`intake`]: Kafka only — receive, decode to a typed [`envelope::Job`], run the stage, hand
//!   the outcome to [`output`], store the offset.
//! - [`stage`]: one job through one stage: prompt, the attempt loop, validation, repair.
//! - [`gate`]: the pure verdict on a validated output; [`audit`]: audited precision of
//!   accepted answers and the thresholds `target_precision` moves.
//! - [`route`]: the pure plan of candidates, and endpoint health with circuit breakers.
//! - [`provider`]: one file per API family behind the [`provider::ProviderApi`] trait.
//! - [`limit`]: rates, concurrency and key standing; tenant budgets.
//! - [`output`]: envelopes composed from outcomes, publishing, dead-letter replay.
//! - [`ledger`]: typed records of every call and job, the store, the sink, usage.
//! - [`telemetry`] and [`ops`]: typed events and metrics; health, readiness and admin pages.
//!
//! Leaves used across the path: [`envelope`] (wire types), [`ids`], [`money`], [`secret`],
//! [`kafka`] (client settings and helpers), [`prompt`] (templates) and [`classify`] (the local
//! tier's model) — the last two are leaves rather than part of `stage` because configuration
//! loading checks templates and trains the local tier, so errors point at the file and line.

pub mod app;
pub mod audit;
/// The local tier's model (its own crate, built optimised even in test builds).
pub use switchyard_classify as classify;
pub mod config;
pub mod envelope;
pub mod gate;
pub mod ids;
pub mod intake;
pub mod kafka;
pub mod ledger;
pub mod limit;
pub mod money;
pub mod ops;
pub mod output;
pub mod prompt;
pub mod provider;
pub mod route;
pub mod secret;
pub mod stage;
pub mod stats;
pub mod telemetry;
