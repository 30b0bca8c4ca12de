//! Observability set-up shared by the collector and the aggregator.
//!
//! - Logs: `tracing` to stderr, human-readable or JSON (`--log-format`), filtered by `RUST_LOG`.
//! - Traces: every `tracing` span is also an OpenTelemetry span, exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Trace context travels as W3C `traceparent`, which
//!   the collector injects into Kafka message headers and the aggregator picks up again
//!   ([`traceparent`], [`extract`], [`continue_batch`]).
//! - Metrics: a Prometheus recorder for the `metrics` facade; serve [`Telemetry::render`] on
//!   `/metrics`.
//! - [`process`]: the wall clock (`now_ms`) and the shutdown token both services use.

pub mod process;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
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

/// Makes `span`, which processes a batch of messages, continue their traces: a child of the
/// first valid `traceparent`, linked to each of the others (OpenTelemetry's convention for
/// batch processing, where one span has many causes). Invalid values are ignored.
pub fn continue_batch(span: &tracing::Span, traceparents: &[String]) {
    let propagator = TraceContextPropagator::new();
    let mut contexts = traceparents.iter().filter_map(|tp| {
        let cx = propagator.extract(&PairsCarrier(&[("traceparent", tp.as_str())]));
        let valid = cx.span().span_context().is_valid();
        valid.then_some(cx)
    });
    if let Some(first) = contexts.next() {
        let _ = span.set_parent(first);
    }
    for cx in contexts {
        span.add_link(cx.span().span_context().clone());
    }
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
    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    #[test]
    fn batch_spans_are_children_of_the_first_trace_and_link_the_others() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let second = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("write_batch");
            continue_batch(&span, &[first.into(), "garbage".into(), second.into()]);
            drop(span);
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        let links: Vec<String> = span
            .links
            .iter()
            .map(|l| format!("{}-{}", l.span_context.trace_id(), l.span_context.span_id()))
            .collect();
        assert_eq!(links, ["0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"]);
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
