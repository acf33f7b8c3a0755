//! Logs: human-readable on stderr by default or JSON lines (`--log-format json`), filtered by
//! `SWITCHYARD_LOG` (or `RUST_LOG`), e.g. `SWITCHYARD_LOG=debug`.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    #[default]
    Human,
    /// One JSON object per line, with span fields (for log pipelines).
    Json,
}

/// Installs the global subscriber; `default` is the filter when no variable is set.
pub fn init(default: &str) {
    init_with(default, LogFormat::Human);
}

/// Installs the global subscriber in the given format.
pub fn init_with(default: &str, format: LogFormat) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
