//! Observability set-up shared by the collector and the aggregator.
//!
//! - Logs: `tracing` to stderr, human-readable or JSON (`--log-format`), filtered by `RUST_LOG`.
//! - Traces: every `tracing` span is also an OpenTelemetry span, exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Trace context travels as W3C `traceparent`, which
//!   the collector injects into Kafka message headers and the aggregator extracts again
//!   ([`inject`], [`extract`]).
//! - Metrics: a Prometheus recorder for the `metrics` facade; serve [`Telemetry::render`] on
//!   `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Handles kept alive for the process lifetime; [`Telemetry::shutdown`] flushes traces.
pub struct Telemetry {
    provider: SdkTracerProvider,
    prometheus: PrometheusHandle,
}

impl Telemetry {
    /// Installs logging, tracing and the metrics recorder. Call once, early in `main`.
    pub fn init(service: &'static str, format: LogFormat) -> anyhow::Result<Telemetry> {
        let mut builder = SdkTracerProvider::builder().with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        );
        let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty());
        if otlp.is_some() {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer(service);
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

        // RUST_LOG filters what is logged, not what is traced: request spans must exist (and
        // carry trace ids into Kafka) even when logging is quiet.
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let registry = tracing_subscriber::registry().with(otel_layer);
        match format {
            LogFormat::Text => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .try_init()?,
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .try_init()?,
        }
        if let Some(endpoint) = otlp {
            tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        }

        let prometheus = PrometheusBuilder::new().install_recorder()?;
        Ok(Telemetry {
            provider,
            prometheus,
        })
    }

    /// Prometheus text exposition of every metric recorded so far.
    pub fn render(&self) -> String {
        self.prometheus.render()
    }

    /// A handle that renders metrics, for HTTP handlers.
    pub fn prometheus(&self) -> PrometheusHandle {
        self.prometheus.clone()
    }

    /// Flushes pending spans; call on shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "trace provider shutdown");
        }
    }
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct PairsCarrier<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for PairsCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The W3C `traceparent` of `span`, if it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut MapCarrier(&mut map));
    map.remove("traceparent")
}

/// Makes `span` a child of the trace context found in `headers` (e.g. `traceparent`), if any.
pub fn extract(span: &tracing::Span, headers: &[(&str, &str)]) {
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
    {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&PairsCarrier(headers));
    let _ = span.set_parent(cx);
}

/// The trace id part of a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn trace_ids() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
