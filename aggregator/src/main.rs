//! `aggregator` command line: `run` (the consumer) and `migrate` (apply the ClickHouse schema).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use qoe_aggregator::consumer::{self, ConsumerConfig, Shared};
use qoe_aggregator::kafka_check::KafkaAccess;
use qoe_aggregator::migrate::{self, MigrationReport};
use qoe_aggregator::store::{parse_shards, Store, StoreConfig};
use qoe_aggregator::window::{Dimensions, WindowConfig};
use qoe_aggregator::writer::Writer;
use qoe_schemas::cluster::ClusterTarget;
use qoe_schemas::errors::BusinessCodes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Computes event-time windowed QoE metrics from Kafka into ClickHouse.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume events and write windowed QoE metrics until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Apply the ClickHouse schema migrations (idempotent), then exit.
    ///
    /// With --clickhouse-cluster the same migrations are applied to a cluster (ON CLUSTER,
    /// replicated engines) through --clickhouse-url (or the first server of
    /// --clickhouse-shards), and `<database>_all` receives the Distributed tables that
    /// dashboards read. Every server of the cluster must be up.
    Migrate {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        /// Print the statements for --clickhouse-cluster instead of applying them (no server
        /// needed).
        #[arg(long, requires = "clickhouse_cluster")]
        print: bool,
    },
    /// Check that Kafka and ClickHouse are reachable, then exit.
    Check {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        /// Kafka bootstrap servers.
        #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        kafka_brokers: String,
        /// Topic the collector publishes to.
        #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
        topic: String,
        /// Extra librdkafka properties, `key=value` (repeatable, or `;`-separated in the
        /// environment), for brokers that need TLS or SASL (security.protocol=SASL_SSL,
        /// sasl.mechanism=SCRAM-SHA-512, sasl.username=..., sasl.password=...). Applied last.
        /// (Values are never printed: they can hold credentials.)
        #[arg(long = "kafka-option", env = "QOE_KAFKA_OPTIONS", value_delimiter = ';', value_parser = qoe_telemetry::process::parse_key_value, hide_env_values = true)]
        kafka_options: Vec<(String, String)>,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
    /// Kafka bootstrap servers.
    #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Topic to consume.
    #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
    topic: String,
    /// Extra librdkafka properties, `key=value` (repeatable, or `;`-separated in the
    /// environment), for brokers that need TLS or SASL (security.protocol=SASL_SSL,
    /// sasl.mechanism=SCRAM-SHA-512, sasl.username=..., sasl.password=...). Applied last.
    /// (Values are never printed: they can hold credentials.)
    #[arg(long = "kafka-option", env = "QOE_KAFKA_OPTIONS", value_delimiter = ';', value_parser = qoe_telemetry::process::parse_key_value, hide_env_values = true)]
    kafka_options: Vec<(String, String)>,
    /// Consumer group; instances in one group share the partitions.
    #[arg(long, env = "QOE_CONSUMER_GROUP", default_value = "qoe-aggregator")]
    group: String,
    /// Window length in seconds (tumbling, event time). Must divide 60 (windows roll up into
    /// minutes and hours) and must not change while data flows.
    #[arg(long, env = "QOE_WINDOW_SECS", default_value_t = 10)]
    window_secs: u32,
    /// Allowed lateness in seconds: events for windows that ended longer ago are late.
    #[arg(long, env = "QOE_ALLOWED_LATENESS_SECS", default_value_t = 30)]
    allowed_lateness_secs: u32,
    /// CMCD sessions: a report this many seconds after the session's previous one opens a new
    /// view (live players report at least every 10-30 s).
    #[arg(long, env = "QOE_CMCD_SESSION_TIMEOUT_SECS", default_value_t = 120)]
    cmcd_session_timeout_secs: u32,
    /// Most CMCD sessions held per partition (the least recently heard is dropped beyond it).
    #[arg(long, env = "QOE_CMCD_MAX_SESSIONS", default_value_t = 200_000)]
    cmcd_max_sessions: usize,
    /// A live beacon view silent for this many seconds (of event time, behind the watermark)
    /// has ended: its summary gets end reason `timeout`, and its duplicates are no longer
    /// tracked. Live players report at least every 10-30 s.
    #[arg(long, env = "QOE_VIEW_TIMEOUT_SECS", default_value_t = 120)]
    view_timeout_secs: u32,
    /// The same for VOD views (a paused VOD player may stay silent for longer).
    #[arg(long, env = "QOE_VOD_VIEW_TIMEOUT_SECS", default_value_t = 600)]
    vod_view_timeout_secs: u32,
    /// Most beacon views held per partition; beyond it the least recently heard eighth is
    /// dropped (counted in qoe_aggregator_views_evicted_total). About 100-150 bytes per view.
    #[arg(long, env = "QOE_MAX_VIEWS_PER_PARTITION", default_value_t = 500_000)]
    max_views_per_partition: usize,
    /// Error codes that are business errors (entitlement, geo-block, concurrent-stream limit,
    /// ...), comma-separated, matched without regard to case: counted apart in the errors by
    /// code, and neither start nor playback failures (so out of the experience score).
    #[arg(
        long,
        env = "QOE_BUSINESS_ERROR_CODES",
        value_name = "CODES",
        default_value = ""
    )]
    business_error_codes: String,
    /// A file of business error codes, one per line or comma-separated (`#` comments),
    /// added to --business-error-codes.
    #[arg(long, env = "QOE_BUSINESS_ERROR_CODES_FILE", value_name = "PATH")]
    business_error_codes_file: Option<std::path::PathBuf>,
    /// How often a partition's checkpoint carries its state (views, CMCD sessions). A restart
    /// re-reads at most this much of the partition; larger values store less.
    #[arg(long, env = "QOE_SNAPSHOT_INTERVAL_SECS", default_value_t = 30)]
    snapshot_interval_secs: u64,
    /// Optional grouping dimensions besides region and CDN (comma-separated subset of
    /// stream_type, platform, stream_id).
    #[arg(
        long,
        env = "QOE_DIMENSIONS",
        value_delimiter = ',',
        default_value = "stream_type,platform,stream_id"
    )]
    dimensions: Vec<String>,
    /// How often each partition's batch is written.
    #[arg(long, env = "QOE_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    flush_interval_ms: u64,
    /// A partition's batch is written early once it has this many rows.
    #[arg(long, env = "QOE_MAX_BATCH_ROWS", default_value_t = 100_000)]
    max_batch_rows: usize,
    /// Where a partition without checkpoint starts.
    #[arg(long, env = "QOE_START_FROM", value_parser = ["earliest", "latest"], default_value = "earliest")]
    start_from: String,
    /// Do not apply ClickHouse migrations at start-up.
    #[arg(long, env = "QOE_NO_MIGRATE")]
    no_migrate: bool,
    /// When checkpoints lie beyond the end of their partitions (the topic was recreated, or a
    /// broker lost its data), delete them and start the topic over from the beginning, instead
    /// of refusing to start.
    #[arg(long, env = "QOE_RESET_STALE_CHECKPOINTS")]
    reset_stale_checkpoints: bool,
    /// Address of the health, readiness and metrics endpoints.
    #[arg(long, env = "QOE_AGGREGATOR_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "QOE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: qoe_telemetry::LogFormat,
}

impl RunArgs {
    fn kafka(&self) -> KafkaAccess {
        KafkaAccess {
            brokers: self.kafka_brokers.clone(),
            options: self.kafka_options.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct ClickHouseArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "QOE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
    /// Database holding the QoE tables (created if missing).
    #[arg(long, env = "QOE_CLICKHOUSE_DATABASE", default_value = "qoe")]
    clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "QOE_CLICKHOUSE_USER", default_value = "default")]
    clickhouse_user: String,
    /// ClickHouse password.
    #[arg(
        long,
        env = "QOE_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    clickhouse_password: String,
    /// Name of the ClickHouse cluster (its `remote_servers` entry) to migrate on; tables are
    /// replicated and sharded (schemas/CLUSTER.md).
    #[arg(long, alias = "cluster", env = "QOE_CLICKHOUSE_CLUSTER")]
    clickhouse_cluster: Option<String>,
    /// Write to a cluster instead of --clickhouse-url: shards separated by `;`, the HTTP URLs
    /// of a shard's replicas by `,` (e.g. `scripts/cluster.sh urls`). Kafka partition p goes
    /// to shard p % shards, to a replica of it with failover to the others.
    #[arg(long, env = "QOE_CLICKHOUSE_SHARDS", requires = "clickhouse_cluster")]
    clickhouse_shards: Option<String>,
}

impl ClickHouseArgs {
    fn config(&self) -> StoreConfig {
        self.config_at(&self.clickhouse_url)
    }

    fn config_at(&self, url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_owned(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }

    /// The shards of --clickhouse-shards, if given.
    fn shards(&self) -> anyhow::Result<Option<Vec<Vec<String>>>> {
        self.clickhouse_shards
            .as_deref()
            .map(|s| parse_shards(s).context("--clickhouse-shards"))
            .transpose()
    }

    /// The cluster target, if --clickhouse-cluster is given.
    fn cluster(&self) -> anyhow::Result<Option<ClusterTarget>> {
        self.clickhouse_cluster
            .as_deref()
            .map(|c| ClusterTarget::new(c, &self.clickhouse_database).map_err(anyhow::Error::from))
            .transpose()
    }

    /// The servers migrations may go through, in order of preference: those of
    /// --clickhouse-shards, or --clickhouse-url.
    fn seeds(&self) -> anyhow::Result<Vec<StoreConfig>> {
        Ok(match self.shards()? {
            Some(shards) => shards.iter().flatten().map(|u| self.config_at(u)).collect(),
            None => vec![self.config()],
        })
    }
}

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
                let target = clickhouse
                    .cluster()?
                    .context("--print needs --clickhouse-cluster")?;
                for sql in qoe_schemas::cluster::all_statements(&target)? {
                    println!("{sql};\n");
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
        Command::Check {
            clickhouse,
            kafka_brokers,
            topic,
            kafka_options,
        } => {
            let kafka = KafkaAccess {
                brokers: kafka_brokers,
                options: kafka_options,
            };
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

/// The business error codes of `--business-error-codes` and `--business-error-codes-file`.
fn business_codes(args: &RunArgs) -> anyhow::Result<BusinessCodes> {
    let mut codes =
        BusinessCodes::parse(&args.business_error_codes).context("--business-error-codes")?;
    if let Some(path) = &args.business_error_codes_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --business-error-codes-file {}", path.display()))?;
        let file = BusinessCodes::parse(&text)
            .with_context(|| format!("--business-error-codes-file {}", path.display()))?;
        codes.extend(file);
    }
    if codes.len() > BusinessCodes::MAX {
        anyhow::bail!(
            "more than {} business error codes configured",
            BusinessCodes::MAX
        );
    }
    Ok(codes)
}

fn dimensions(names: &[String]) -> anyhow::Result<Dimensions> {
    let mut d = Dimensions {
        stream_type: false,
        platform: false,
        stream_id: false,
    };
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match n {
            "stream_type" => d.stream_type = true,
            "platform" => d.platform = true,
            "stream_id" => d.stream_id = true,
            "region" | "cdn" => {}
            other => {
                anyhow::bail!("unknown dimension {other:?} (stream_type, platform, stream_id)")
            }
        }
    }
    Ok(d)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let telemetry = qoe_telemetry::Telemetry::init("qoe-aggregator", args.log_format)?;
    qoe_aggregator::names::describe();
    qoe_aggregator::window::check_window_secs(args.window_secs)?;
    let window = WindowConfig {
        window_ms: i64::from(args.window_secs) * 1000,
        allowed_lateness_ms: i64::from(args.allowed_lateness_secs) * 1000,
        dimensions: dimensions(&args.dimensions)?,
        sessions: qoe_aggregator::cmcd::SessionConfig {
            timeout_ms: i64::from(args.cmcd_session_timeout_secs.max(1)) * 1000,
            max_sessions: args.cmcd_max_sessions.max(1),
        },
        views: qoe_aggregator::views::ViewConfig {
            live_timeout_ms: i64::from(args.view_timeout_secs.max(1)) * 1000,
            vod_timeout_ms: i64::from(args.vod_view_timeout_secs.max(1)) * 1000,
            max_views: args.max_views_per_partition.max(1),
        },
        business: std::sync::Arc::new(business_codes(&args)?),
    };
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
        None => Writer::new(store, &args.topic)?,
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
            Writer::cluster(stores, &args.topic)?
        }
    };
    check_checkpoints(&writer, &args).await?;
    let shutdown = qoe_telemetry::process::shutdown_on_signal();
    let shared = Shared::new(
        ConsumerConfig {
            kafka: args.kafka(),
            group: args.group.clone(),
            topic: args.topic.clone(),
            window,
            flush_interval: Duration::from_millis(args.flush_interval_ms),
            snapshot_interval: Duration::from_secs(args.snapshot_interval_secs),
            max_batch_rows: args.max_batch_rows,
            start_from_latest: args.start_from == "latest",
        },
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
    tracing::info!(listen = %args.listen, topic = %args.topic, group = %args.group, window_secs = args.window_secs, "aggregator running");
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
    let topic = args.topic.clone();
    let ends = loop {
        let (kafka, t) = (args.kafka(), topic.clone());
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
            args.topic,
            stale.join(", ")
        );
    }
    tracing::warn!(topic = %args.topic, stale = ?stale, "checkpoints belong to an earlier incarnation of the topic; deleting them and starting over from the beginning");
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
