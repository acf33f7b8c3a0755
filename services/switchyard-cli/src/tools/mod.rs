//! Tools that ship with the command: the demo, the benchmark against a peer, the chaos drill,
//! evaluation on labelled data, batch document processing and the management report.

pub mod batch;
pub mod bench;
pub mod chaos;
pub mod demo;
pub mod eval;
pub mod local_eval;
#[cfg(feature = "report")]
pub mod report;
