//! Logging setup: human-readable logs on stderr, filtered by `SWITCHYARD_LOG` (or `RUST_LOG`),
//! e.g. `SWITCHYARD_LOG=debug` or `SWITCHYARD_LOG=switchyard=debug,librdkafka=warn`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is the filter when no variable is set.
pub fn init(default: &str) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
