//! `collector` binary: wires configuration, telemetry, the sink and the HTTP server, and owns
//! shutdown (stop accepting, finish in-flight requests, flush the producer).

use anyhow::Context;
use clap::Parser;
use qoe_collector::admin::admin_router;
use qoe_collector::client::RegionResolver;
use qoe_collector::config::Config;
use qoe_collector::http::{router, AppState, InFlight};
use qoe_collector::rate_limit::RateLimits;
use qoe_collector::server::{serve, ConnectionLimits};
use qoe_collector::sink::Sink;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long start-up waits for Kafka before serving anyway.
const STARTUP_KAFKA_WAIT: Duration = Duration::from_secs(5);

// Every request allocates many small, short-lived objects (parsed events, encoded messages,
// headers); mimalloc serves them measurably cheaper than the system allocator (BENCHMARKS.md).
// The crate's `override` feature routes librdkafka's C allocations to it as well.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    qoe_collector::memory::release_freed_memory_promptly();
    let config = Config::parse();
    let telemetry = qoe_telemetry::Telemetry::init("qoe-collector", config.log_format)?;
    qoe_collector::names::describe();

    let sink = Sink::from_config(&config.sink_config()).context("creating the Kafka producer")?;
    // Before taking traffic, learn the topic's partitions and obtain the idempotent producer
    // id: otherwise the first requests wait while the producer does both on first use (up to
    // ~1 s here). Bounded and not fatal: without Kafka the collector still starts, answers
    // 503 and recovers when the broker appears.
    let warm_up = Instant::now();
    while !sink.ready().await {
        if warm_up.elapsed() >= STARTUP_KAFKA_WAIT {
            tracing::warn!(
                brokers = %config.kafka_brokers,
                topic = %config.topic,
                waited = ?STARTUP_KAFKA_WAIT,
                "Kafka is not ready (unreachable, topic missing, or no producer id yet); beacons get 503 until it is"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let region = RegionResolver::with_country_regions(
        config.region_header.as_deref(),
        config.geoip_db.as_deref(),
        &config.geoip_regions,
    )?;
    let state = Arc::new(AppState {
        limits: config.limits(),
        sink,
        rate: RateLimits::new(config.rate_config()),
        region,
        cdn_hosts: qoe_collector::cmcd::CdnHostMap::parse(&config.cdn_hosts)?,
        max_log_lines: config.max_log_lines,
        trusted_proxies: config.trusted_proxies.clone(),
        ingest_keys: config.ingest_keys.iter().cloned().collect(),
        prometheus: Some(telemetry.prometheus()),
        readiness: std::sync::Mutex::new(None),
        in_flight: InFlight::new(config.max_in_flight_requests, config.max_in_flight_bytes),
    });

    let housekeeping = {
        let state = state.clone();
        let prometheus = telemetry.prometheus();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                state.rate.housekeeping();
                prometheus.run_upkeep();
                state.sink.maintain().await;
                let reap = state.clone();
                let _ = tokio::task::spawn_blocking(move || reap.sink.reap_retired()).await;
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        sink = ?config.sink,
        topic = %config.topic,
        brokers = %config.kafka_brokers,
        ack_mode = ?config.ack_mode,
        "collector listening"
    );
    let app = router(state.clone(), &config.http_config());
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", config.admin_listen))?;
    tracing::info!(admin = %config.admin_listen, "admin listener (/healthz, /readyz, /metrics)");
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        max_connections: config.max_connections,
        write_timeout: Duration::from_millis(config.request_timeout_ms),
    };
    let shutdown = qoe_telemetry::process::shutdown_on_signal();
    let admin_app = admin_router(state.clone());
    let admin_shutdown = shutdown.clone();
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(admin_shutdown.cancelled_owned())
            .await
    });
    serve(listener, app, limits, shutdown.cancelled_owned()).await;
    admin.abort();

    tracing::info!(
        in_flight = state.sink.in_flight(),
        "draining: flushing the producer"
    );
    housekeeping.abort();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let flush_state = state.clone();
    tokio::task::spawn_blocking(move || flush_state.sink.flush(grace)).await?;
    telemetry.shutdown();
    tracing::info!("collector stopped");
    Ok(())
}
