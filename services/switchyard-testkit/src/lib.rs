//! What `switchyard demo`, `switchyard eval` and the end-to-end tests share: the embedded
//! Kafka-protocol broker ([`broker`]), the one in-process pipeline [`Harness`], the [`Tally`]
//! of what came back, and (for tests only) fixtures that panic on failure.

pub mod broker;
pub mod fixtures;
pub mod harness;
pub mod tally;

pub use harness::Harness;
pub use tally::Tally;
