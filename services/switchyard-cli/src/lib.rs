//! The `switchyard` command: its arguments ([`cli`]) and the tools that ship with it
//! ([`tools`]: demo, bench, chaos, eval, local-eval, batch, report). The product itself is the `switchyard`
//! library; pipelines run in-process through `switchyard-testkit`'s one harness.

pub mod cli;
pub mod log;
pub mod tools;
