//! OTLP export of the GenAI spans and of the metrics, to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf). Off unless the standard variables say where:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (both), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`; `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`,
//! `OTEL_SERVICE_NAME` (default `switchyard`), `OTEL_RESOURCE_ATTRIBUTES` and
//! `OTEL_METRIC_EXPORT_INTERVAL` apply as the OpenTelemetry SDK reads them;
//! `OTEL_SDK_DISABLED=true` turns it all off.
//!
//! Requests go through Switchyard's own reqwest client, run on the tokio runtime that set
//! the exporter up (the SDK's export threads have none).

use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The exporters, once set up from the environment.
#[derive(Debug)]
pub struct Otlp {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    recorder: Mutex<Option<metrics_exporter_opentelemetry::Recorder>>,
}

static OTLP: OnceLock<Option<Otlp>> = OnceLock::new();

/// The OTLP exporters the environment asks for (set up on the first call, inside a tokio
/// runtime), or `None`.
pub fn from_env() -> Option<&'static Otlp> {
    OTLP.get_or_init(|| setup(&|name| std::env::var(name).ok()))
        .as_ref()
}

/// Flushes and stops the exporters, if any (at exit).
pub fn shutdown() {
    if let Some(Some(o)) = OTLP.get() {
        if let Some(t) = &o.tracer
            && let Err(e) = t.shutdown()
        {
            tracing::warn!(error = %e, "OTLP: flushing spans failed");
        }
        if let Some(m) = &o.meter
            && let Err(e) = m.shutdown()
        {
            tracing::warn!(error = %e, "OTLP: flushing metrics failed");
        }
    }
}

fn setup(env: &dyn Fn(&str) -> Option<String>) -> Option<Otlp> {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let traces = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    if !traces && !metrics {
        return None;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        eprintln!("OTLP export asked for, but not started: no async runtime here");
        return None;
    };
    let client = Bridge {
        http: reqwest::Client::new(),
        runtime,
    };
    let mut resource = Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("switchyard");
    }
    let resource = resource.build();
    let tracer = if traces {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            ),
            Err(e) => {
                eprintln!("OTLP span export not started: {e}");
                None
            }
        }
    } else {
        None
    };
    let (meter, recorder) = if metrics {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
        {
            Ok(exporter) => {
                let provider = SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(resource)
                    .build();
                let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "switchyard");
                let recorder = metrics_exporter_opentelemetry::Recorder::with_meter(meter);
                (Some(provider), Some(recorder))
            }
            Err(e) => {
                eprintln!("OTLP metric export not started: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    Some(Otlp {
        tracer,
        meter,
        recorder: Mutex::new(recorder),
    })
}

impl Otlp {
    /// A tracing layer that exports spans (the GenAI `chat` spans among them), when traces
    /// are exported.
    pub fn tracing_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let tracer = self.tracer.as_ref()?.tracer("switchyard");
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// The `metrics` recorder that feeds the OTLP metric exporter (taken once, by whoever
    /// installs the global recorder), when metrics are exported.
    pub fn take_recorder(&self) -> Option<metrics_exporter_opentelemetry::Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Whether metrics are exported.
    pub fn exports_metrics(&self) -> bool {
        self.meter.is_some()
    }
}

/// opentelemetry-http's client trait over our reqwest client, each request run on the tokio
/// runtime (the SDK calls it from its own threads).
#[derive(Debug, Clone)]
struct Bridge {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Bridge {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let http = self.http.clone();
        let reply = self
            .runtime
            .spawn(async move {
                let r = http.execute(request).await?;
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let (status, headers, body) = reply;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert!(setup(&|_| None).is_none());
        let disabled = |n: &str| match n {
            "OTEL_SDK_DISABLED" => Some("true".to_string()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318".to_string()),
            _ => None,
        };
        assert!(setup(&disabled).is_none());
    }
}
