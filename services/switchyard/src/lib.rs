//! Switchyard: run LLM work on Kafka event streams without tying yourself to one model vendor.
//!
//! Jobs arrive on a pipeline's intake topic. Each stage (its own consumer group) renders a
//! prompt, calls its route's models in fallback order, validates the answer against the stage's
//! output schema (with one repair re-ask), and lets the gate accept, escalate to the next
//! stage's topic, or dead-letter. Nothing is dropped: every job ends on the results topic or
//! the dead-letter topic with its reason.

pub mod batch;
pub mod bench;
pub mod broker;
pub mod catalog;
pub mod chaos;
pub mod classify;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod envelope;
pub mod eval;
pub mod gate;
pub mod health;
pub mod intake;
pub mod kafka;
pub mod ledger;
pub mod limit;
pub mod money;
pub mod ops;
pub mod output;
pub mod produce;
pub mod prompt;
pub mod provider;
pub mod report;
pub mod route;
pub mod runner;
pub mod secret;
pub mod stage;
pub mod telemetry;
pub mod tenant;
