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

/// Installs the global subscriber in the given format. With `OTEL_EXPORTER_OTLP_*` set, spans
/// (the GenAI `chat` spans of every provider call among them) are also exported over OTLP, at
/// info level whatever the log filter says.
pub fn init_with(default: &str, format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let lines = match format {
        LogFormat::Human => lines.boxed(),
        LogFormat::Json => lines.json().with_current_span(true).boxed(),
    };
    let spans = switchyard::telemetry::otlp::from_env()
        .and_then(|o| o.tracing_layer())
        .map(|l| {
            l.with_filter(
                tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
            )
        });
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init();
}
