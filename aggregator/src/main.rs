//! `aggregator` command line: `run` (the consumer), `migrate` (apply the ClickHouse schema) and
//! `check`. The flags and the configuration they build are in `qoe_aggregator::config`; this
//! file starts the tasks and owns their shutdown.

use anyhow::Context;
use clap::Parser;
use qoe_aggregator::config::{Cli, ClickHouseArgs, Command, RunArgs};
use qoe_aggregator::consumer::{self, Shared};
use qoe_aggregator::migrate::{self, MigrationReport};
use qoe_aggregator::store::{Store, StoreConfig};
use qoe_aggregator::writer::Writer;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Applies the migrations to one server, or to the cluster when one is configured.
async fn migrate_schema(
    store: &Store,
    clickhouse: &ClickHouseArgs,
) -> anyhow::Result<MigrationReport> {
    let database = &clickhouse.clickhouse_database;
    match clickhouse.cluster()? {
        Some(target) => migrate::run_cluster(store, &target)
            .await
            .with_context(|| format!("migrating {database} on cluster {}", target.cluster)),
        None => migrate::run(store)
            .await
            .with_context(|| format!("migrating {database}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Run(args) = cli.command {
        return run(*args).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(_) => unreachable!("handled above"),
        Command::Migrate { clickhouse, print } => {
            if print {
                let statements = match clickhouse.cluster()? {
                    Some(target) => qoe_schemas::cluster::all_statements(&target)?,
                    None => migrate::single_server_statements()?,
                };
                let mut out = std::io::stdout().lock();
                for sql in statements {
                    match writeln!(out, "{sql};\n") {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                        r => r.context("writing the statements")?,
                    }
                }
                return Ok(());
            }
            let seeds = clickhouse.seeds()?;
            let store = connect_any(&seeds, true, false).await?;
            let report = migrate_schema(&store, &clickhouse).await?;
            let on = match &clickhouse.clickhouse_cluster {
                Some(c) => format!(
                    " on cluster {c} (read through {}_all)",
                    clickhouse.clickhouse_database
                ),
                None => String::new(),
            };
            println!(
                "ClickHouse {} database {}{on}: {} migration(s) applied, {} already applied, {} statement(s) skipped for this server version",
                store.version,
                clickhouse.clickhouse_database,
                report.applied.len(),
                report.already_applied.len(),
                report.skipped_statements
            );
        }
        Command::Check { clickhouse, kafka } => {
            let topic = kafka.topic.clone();
            let kafka = kafka.access();
            let store = Store::connect(clickhouse.config(), false).await?;
            println!(
                "ClickHouse {} at {}",
                store.version, clickhouse.clickhouse_url
            );
            let partitions = qoe_aggregator::kafka_check::topic_partitions(&kafka, &topic)
                .with_context(|| format!("reading metadata of {topic} from {}", kafka.brokers))?;
            println!(
                "Kafka {}: topic {topic} has {partitions} partitions",
                kafka.brokers
            );
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let telemetry = qoe_telemetry::Telemetry::init("qoe-aggregator", args.log_format)?;
    qoe_aggregator::names::describe();
    let window = args.window_config()?;
    if !window.business.is_empty() {
        tracing::info!(
            codes = window.business.len(),
            "business error codes configured"
        );
    }

    let shards = args.clickhouse.shards()?;
    let store = connect_any(&args.clickhouse.seeds()?, !args.no_migrate, true).await?;
    if !args.no_migrate {
        let report = migrate_schema(&store, &args.clickhouse).await?;
        tracing::info!(applied = ?report.applied, server = %store.version, "schema up to date");
    }
    let writer = match shards {
        None => Writer::new(store, &args.kafka.topic)?,
        Some(shards) => {
            let mut stores = Vec::new();
            for shard in &shards {
                let mut replicas = Vec::new();
                for url in shard {
                    replicas.push(Store::assume(args.clickhouse.config_at(url), store.version));
                }
                stores.push(replicas);
            }
            tracing::info!(shards = ?shards, "writing to a cluster: partition p goes to shard p % {}", shards.len());
            Writer::cluster(stores, &args.kafka.topic)?
        }
    };
    check_checkpoints(&writer, &args).await?;
    let shutdown = qoe_telemetry::process::shutdown_on_signal();
    let shared = Shared::new(
        args.consumer_config(window),
        writer,
        tokio::runtime::Handle::current(),
        shutdown.clone(),
    );
    let consumer = consumer::create_consumer(&shared)?;
    let loop_shared = shared.clone();
    let loop_shutdown = shutdown.clone();
    let worker = std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || consumer::run(loop_shared, consumer, loop_shutdown))?;

    let prometheus = telemetry.prometheus();
    let health = shared.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = health.healthy.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "not writing to ClickHouse",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let body = prometheus.render();
                async move { body }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, topic = %args.kafka.topic, group = %args.group, window_secs = args.window_secs, "aggregator running");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let pruner = shared.clone();
    let pruning = tokio::spawn(async move { pruner.prune_staging().await });

    tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown: writing pending batches and leaving the group");
        }
        _ = wait_thread_exit(&worker) => {}
    }
    shutdown.cancel();
    let joined = tokio::task::spawn_blocking(move || worker.join()).await?;
    if joined.is_err() {
        anyhow::bail!("consumer thread panicked");
    }
    server.abort();
    pruning.abort();
    telemetry.shutdown();
    Ok(())
}

/// Refuses to resume from checkpoints that lie beyond the end of their partitions: they were
/// written for an earlier incarnation of the topic (deleted and recreated, or a broker that
/// lost its data), and resuming from them would skip every message up to those offsets.
async fn check_checkpoints(writer: &Writer, args: &RunArgs) -> anyhow::Result<()> {
    let checkpoints = writer
        .checkpoint_ends()
        .await
        .context("reading checkpoints")?;
    if checkpoints.is_empty() {
        return Ok(());
    }
    let topic = args.kafka.topic.clone();
    let ends = loop {
        let (kafka, t) = (args.kafka.access(), topic.clone());
        match tokio::task::spawn_blocking(move || {
            qoe_aggregator::kafka_check::partition_ends(&kafka, &t)
        })
        .await?
        {
            Ok(ends) => break ends,
            Err(e) => {
                tracing::warn!(error = %e, topic = %topic, "cannot read partition ends yet; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let stale: Vec<String> = checkpoints
        .iter()
        .filter_map(|(p, next)| {
            let end = ends.iter().find(|(q, _)| q == p).map_or(0, |(_, e)| *e);
            (*next > end).then(|| format!("partition {p}: checkpoint {next} > end {end}"))
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    if !args.reset_stale_checkpoints {
        anyhow::bail!(
            "checkpoints in ClickHouse lie beyond the end of topic {} ({}): the topic was \
             recreated or the broker lost its data. Resuming would skip messages. Start once with \
             --reset-stale-checkpoints to start the topic over from the beginning, or use another \
             database",
            args.kafka.topic,
            stale.join(", ")
        );
    }
    tracing::warn!(topic = %args.kafka.topic, stale = ?stale, "checkpoints belong to an earlier incarnation of the topic; deleting them and starting over from the beginning");
    writer
        .delete_checkpoints()
        .await
        .context("deleting stale checkpoints")?;
    Ok(())
}

/// Connects to the first of `seeds` that answers; with `wait`, retries until one does (a
/// process may start before ClickHouse), otherwise fails with the last error.
async fn connect_any(
    seeds: &[StoreConfig],
    create_database: bool,
    wait: bool,
) -> anyhow::Result<Store> {
    loop {
        let mut last = None;
        for seed in seeds {
            match Store::connect(seed.clone(), create_database).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.context("no ClickHouse server configured")?;
        if !wait {
            return Err(e.into());
        }
        tracing::warn!(error = %e, "no ClickHouse server reachable yet; retrying in 2 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_thread_exit(worker: &std::thread::JoinHandle<()>) {
    while !worker.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
