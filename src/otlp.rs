//! Exporting the library's spans over OTLP (feature `opentelemetry`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Error;

/// Keeps the exporter running; flushes and shuts it down when dropped.
///
/// The flush goes through the exporter's gRPC connection, which runs on the tokio runtime that
/// [`init_otlp`] was called in: drop the guard while that runtime still runs (the end of an
/// `async fn main` under `#[tokio::main]` is fine). On a current-thread runtime, drop it off the
/// runtime's thread (`tokio::task::spawn_blocking(move || drop(guard))`): dropped on that thread,
/// the flush waits for a connection that cannot make progress, times out after 5 s, and the
/// spans not yet sent are lost.
#[derive(Debug)]
pub struct OtlpGuard {
    provider: SdkTracerProvider,
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("shutting down the OTLP exporter: {err}");
        }
    }
}

/// Installs a global `tracing` subscriber that exports spans to the OTLP/gRPC collector at
/// `endpoint` (for example `http://localhost:4317`) as service `service_name`, and logs to
/// stderr per `RUST_LOG`. Every saga's spans join the trace the saga started in, whichever
/// process runs them. Keep the guard alive for as long as the process runs (see [`OtlpGuard`]
/// for where to drop it).
///
/// `RUST_LOG` filters the exported spans too: a filter that leaves out `saga_core=info` exports
/// none of the library's spans.
///
/// # Errors
/// [`Error::Configuration`] when the exporter cannot be built or a global subscriber is
/// already installed.
pub fn init_otlp(endpoint: &str, service_name: &str) -> Result<OtlpGuard, Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| Error::Configuration(format!("OTLP exporter for {endpoint}: {err}")))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("saga");
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info")
        }))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init()
        .map_err(|err| {
            Error::Configuration(format!(
                "a global tracing subscriber is already installed ({err}); add the OpenTelemetry layer to yours instead"
            ))
        })?;
    Ok(OtlpGuard { provider })
}
