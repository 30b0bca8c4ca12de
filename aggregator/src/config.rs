//! The aggregator's command line (each flag with an environment-variable equivalent) and
//! the plain configuration it builds for the library: [`WindowConfig`] (windowing, views,
//! CMCD sessions, business codes), [`ConsumerConfig`], the ClickHouse [`StoreConfig`]s and
//! cluster target. Invalid values are [`ConfigError`]s naming the flag.

use crate::consumer::ConsumerConfig;
use crate::context::Dimensions;
use crate::kafka_check::KafkaAccess;
use crate::store::{parse_shards, ShardSpecError, StoreConfig};
use crate::window::{check_window_secs, WindowConfig, WindowSecsError};
use clap::{Args, Parser, Subcommand};
use qoe_schemas::cluster::{ClusterError, ClusterTarget};
use qoe_schemas::errors::{BusinessCodes, BusinessCodesError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A flag whose value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    WindowSecs(#[from] WindowSecsError),
    #[error("--dimensions: unknown dimension {0:?} (stream_type, platform, stream_id)")]
    UnknownDimension(String),
    #[error("--business-error-codes: {0}")]
    BusinessCodes(BusinessCodesError),
    #[error("--business-error-codes-file {path}: {error}")]
    BusinessCodesFile { path: PathBuf, error: String },
    #[error("more than {} business error codes configured", BusinessCodes::MAX)]
    TooManyBusinessCodes,
    #[error("--clickhouse-shards: {0}")]
    Shards(#[from] ShardSpecError),
    #[error("--clickhouse-cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Computes event-time windowed QoE metrics from Kafka into ClickHouse.
#[derive(Parser, Debug)]
#[command(name = "aggregator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Print the statements instead of applying them (no server needed): those of every
        /// migration for a current single server, or with --clickhouse-cluster their cluster
        /// form.
        #[arg(long)]
        print: bool,
    },
    /// Check that Kafka and ClickHouse are reachable, then exit.
    Check {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; instances in one group share the partitions.
    #[arg(long, env = "QOE_CONSUMER_GROUP", default_value = "qoe-aggregator")]
    pub group: String,
    /// Window length in seconds (tumbling, event time). Must divide 60 (windows roll up into
    /// minutes and hours) and must not change while data flows.
    #[arg(long, env = "QOE_WINDOW_SECS", default_value_t = 10)]
    pub window_secs: u32,
    /// Allowed lateness in seconds: events for windows that ended longer ago are late.
    #[arg(long, env = "QOE_ALLOWED_LATENESS_SECS", default_value_t = 30)]
    pub allowed_lateness_secs: u32,
    /// CMCD sessions: a report this many seconds after the session's previous one opens a new
    /// view (live players report at least every 10-30 s).
    #[arg(long, env = "QOE_CMCD_SESSION_TIMEOUT_SECS", default_value_t = 120)]
    pub cmcd_session_timeout_secs: u32,
    /// Most CMCD sessions held per partition (the least recently heard is dropped beyond it).
    #[arg(long, env = "QOE_CMCD_MAX_SESSIONS", default_value_t = 200_000)]
    pub cmcd_max_sessions: usize,
    /// A live beacon view silent for this many seconds (of event time, behind the watermark)
    /// has ended: its summary gets end reason `timeout`, and its duplicates are no longer
    /// tracked. Live players report at least every 10-30 s.
    #[arg(long, env = "QOE_VIEW_TIMEOUT_SECS", default_value_t = 120)]
    pub view_timeout_secs: u32,
    /// The same for VOD views (a paused VOD player may stay silent for longer).
    #[arg(long, env = "QOE_VOD_VIEW_TIMEOUT_SECS", default_value_t = 600)]
    pub vod_view_timeout_secs: u32,
    /// Most beacon views held per partition; beyond it the least recently heard eighth is
    /// dropped (counted in qoe_aggregator_views_evicted_total). About 100-150 bytes per view.
    #[arg(long, env = "QOE_MAX_VIEWS_PER_PARTITION", default_value_t = 500_000)]
    pub max_views_per_partition: usize,
    /// Error codes that are business errors (entitlement, geo-block, concurrent-stream limit,
    /// ...), comma-separated, matched without regard to case: counted apart in the errors by
    /// code, and neither start nor playback failures (so out of the experience score).
    #[arg(
        long,
        env = "QOE_BUSINESS_ERROR_CODES",
        value_name = "CODES",
        default_value = ""
    )]
    pub business_error_codes: String,
    /// A file of business error codes, one per line or comma-separated (`#` comments),
    /// added to --business-error-codes.
    #[arg(long, env = "QOE_BUSINESS_ERROR_CODES_FILE", value_name = "PATH")]
    pub business_error_codes_file: Option<std::path::PathBuf>,
    /// How often a partition's checkpoint carries its state (views, CMCD sessions). A restart
    /// re-reads at most this much of the partition; larger values store less.
    #[arg(long, env = "QOE_SNAPSHOT_INTERVAL_SECS", default_value_t = 30)]
    pub snapshot_interval_secs: u64,
    /// Optional grouping dimensions besides region and CDN (comma-separated subset of
    /// stream_type, platform, stream_id).
    #[arg(
        long,
        env = "QOE_DIMENSIONS",
        value_delimiter = ',',
        default_value = "stream_type,platform,stream_id"
    )]
    pub dimensions: Vec<String>,
    /// How often each partition's batch is written.
    #[arg(long, env = "QOE_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    pub flush_interval_ms: u64,
    /// A partition's batch is written early once it has this many rows.
    #[arg(long, env = "QOE_MAX_BATCH_ROWS", default_value_t = 100_000)]
    pub max_batch_rows: usize,
    /// Where a partition without checkpoint starts.
    #[arg(long, env = "QOE_START_FROM", value_parser = ["earliest", "latest"], default_value = "earliest")]
    pub start_from: String,
    /// Do not apply ClickHouse migrations at start-up.
    #[arg(long, env = "QOE_NO_MIGRATE")]
    pub no_migrate: bool,
    /// When checkpoints lie beyond the end of their partitions (the topic was recreated, or a
    /// broker lost its data), delete them and start the topic over from the beginning, instead
    /// of refusing to start.
    #[arg(long, env = "QOE_RESET_STALE_CHECKPOINTS")]
    pub reset_stale_checkpoints: bool,
    /// Address of the health, readiness and metrics endpoints.
    #[arg(long, env = "QOE_AGGREGATOR_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "QOE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: qoe_telemetry::LogFormat,
}

/// Where the topic is: brokers, topic, client options (`run` and `check`).
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic the collector publishes to and the aggregator consumes.
    #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
    pub topic: String,
    /// Extra librdkafka properties, `key=value` (repeatable, or `;`-separated in the
    /// environment), for brokers that need TLS or SASL (security.protocol=SASL_SSL,
    /// sasl.mechanism=SCRAM-SHA-512, sasl.username=..., sasl.password=...). Applied last.
    /// (Values are never printed: they can hold credentials.)
    #[arg(long = "kafka-option", env = "QOE_KAFKA_OPTIONS", value_delimiter = ';', value_parser = qoe_telemetry::process::parse_key_value, hide_env_values = true)]
    pub kafka_options: Vec<(String, String)>,
}

impl KafkaArgs {
    pub fn access(&self) -> KafkaAccess {
        KafkaAccess {
            brokers: self.kafka_brokers.clone(),
            options: self.kafka_options.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "QOE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// Database holding the QoE tables (created if missing).
    #[arg(long, env = "QOE_CLICKHOUSE_DATABASE", default_value = "qoe")]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "QOE_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    /// ClickHouse password.
    #[arg(
        long,
        env = "QOE_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Name of the ClickHouse cluster (its `remote_servers` entry) to migrate on; tables are
    /// replicated and sharded (schemas/CLUSTER.md).
    #[arg(long, alias = "cluster", env = "QOE_CLICKHOUSE_CLUSTER")]
    pub clickhouse_cluster: Option<String>,
    /// Write to a cluster instead of --clickhouse-url: shards separated by `;`, the HTTP URLs
    /// of a shard's replicas by `,` (e.g. `scripts/cluster.sh urls`). Kafka partition p goes
    /// to shard p % shards, to a replica of it with failover to the others.
    #[arg(long, env = "QOE_CLICKHOUSE_SHARDS", requires = "clickhouse_cluster")]
    pub clickhouse_shards: Option<String>,
}

impl ClickHouseArgs {
    pub fn config(&self) -> StoreConfig {
        self.config_at(&self.clickhouse_url)
    }

    pub fn config_at(&self, url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_owned(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }

    /// The shards of --clickhouse-shards, if given.
    pub fn shards(&self) -> Result<Option<Vec<Vec<String>>>, ConfigError> {
        Ok(self
            .clickhouse_shards
            .as_deref()
            .map(parse_shards)
            .transpose()?)
    }

    /// The cluster target, if --clickhouse-cluster is given.
    pub fn cluster(&self) -> Result<Option<ClusterTarget>, ConfigError> {
        Ok(self
            .clickhouse_cluster
            .as_deref()
            .map(|c| ClusterTarget::new(c, &self.clickhouse_database))
            .transpose()?)
    }

    /// The servers migrations may go through, in order of preference: those of
    /// --clickhouse-shards, or --clickhouse-url.
    pub fn seeds(&self) -> Result<Vec<StoreConfig>, ConfigError> {
        Ok(match self.shards()? {
            Some(shards) => shards.iter().flatten().map(|u| self.config_at(u)).collect(),
            None => vec![self.config()],
        })
    }
}

impl RunArgs {
    /// Windowing, views, CMCD sessions and business codes as the flags say (reads
    /// --business-error-codes-file).
    pub fn window_config(&self) -> Result<WindowConfig, ConfigError> {
        check_window_secs(self.window_secs)?;
        Ok(WindowConfig {
            window_ms: i64::from(self.window_secs) * 1000,
            allowed_lateness_ms: i64::from(self.allowed_lateness_secs) * 1000,
            dimensions: dimensions(&self.dimensions)?,
            sessions: crate::cmcd::SessionConfig {
                timeout_ms: i64::from(self.cmcd_session_timeout_secs.max(1)) * 1000,
                max_sessions: self.cmcd_max_sessions.max(1),
            },
            views: crate::views::ViewConfig {
                live_timeout_ms: i64::from(self.view_timeout_secs.max(1)) * 1000,
                vod_timeout_ms: i64::from(self.vod_view_timeout_secs.max(1)) * 1000,
                max_views: self.max_views_per_partition.max(1),
            },
            business: Arc::new(self.business_codes()?),
        })
    }

    /// The consumer's configuration, with `window` from [`Self::window_config`].
    pub fn consumer_config(&self, window: WindowConfig) -> ConsumerConfig {
        ConsumerConfig {
            kafka: self.kafka.access(),
            group: self.group.clone(),
            topic: self.kafka.topic.clone(),
            window,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            snapshot_interval: Duration::from_secs(self.snapshot_interval_secs),
            max_batch_rows: self.max_batch_rows,
            start_from_latest: self.start_from == "latest",
        }
    }

    /// The business error codes of `--business-error-codes` and
    /// `--business-error-codes-file`.
    fn business_codes(&self) -> Result<BusinessCodes, ConfigError> {
        let mut codes =
            BusinessCodes::parse(&self.business_error_codes).map_err(ConfigError::BusinessCodes)?;
        if let Some(path) = &self.business_error_codes_file {
            let file_error = |error: String| ConfigError::BusinessCodesFile {
                path: path.clone(),
                error,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            codes.extend(BusinessCodes::parse(&text).map_err(|e| file_error(e.to_string()))?);
        }
        if codes.len() > BusinessCodes::MAX {
            return Err(ConfigError::TooManyBusinessCodes);
        }
        Ok(codes)
    }
}

/// The grouping dimensions of `--dimensions` (region and CDN always are; naming them is
/// allowed).
fn dimensions(names: &[String]) -> Result<Dimensions, ConfigError> {
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
            other => return Err(ConfigError::UnknownDimension(other.to_owned())),
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = ["aggregator", "run"].iter().chain(flags);
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults_make_the_documented_configuration() {
        let args = run_args(&[]);
        let w = args.window_config().expect("defaults are valid");
        assert_eq!((w.window_ms, w.allowed_lateness_ms), (10_000, 30_000));
        assert_eq!(w.dimensions, Dimensions::default());
        assert_eq!(w.sessions.timeout_ms, 120_000);
        assert_eq!(w.views.vod_timeout_ms, 600_000);
        assert!(w.business.is_empty());
        let c = args.consumer_config(w);
        assert_eq!(c.flush_interval, Duration::from_secs(1));
        assert_eq!(c.snapshot_interval, Duration::from_secs(30));
        assert!(!c.start_from_latest);
    }

    #[test]
    fn flags_set_what_they_name() {
        let args = run_args(&[
            "--window-secs",
            "5",
            "--dimensions",
            "platform,region",
            "--business-error-codes",
            "GEO_BLOCKED,entitlement",
            "--start-from",
            "latest",
            "--cmcd-session-timeout-secs",
            "0",
        ]);
        let w = args.window_config().expect("valid");
        assert_eq!(w.window_ms, 5_000);
        assert_eq!(
            w.dimensions,
            Dimensions {
                stream_type: false,
                platform: true,
                stream_id: false
            }
        );
        assert!(w.business.contains(Some("geo_blocked")));
        assert_eq!(
            w.sessions.timeout_ms, 1_000,
            "a zero timeout is raised to 1 s"
        );
        assert!(args.consumer_config(w).start_from_latest);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = |flags: &[&str]| run_args(flags).window_config().unwrap_err().to_string();
        assert!(error(&["--window-secs", "7"]).contains("--window-secs 7"));
        assert!(error(&["--dimensions", "country"]).contains("--dimensions"));
        assert!(
            error(&["--business-error-codes-file", "/nonexistent/codes"])
                .contains("--business-error-codes-file /nonexistent/codes")
        );
        let shards = run_args(&["--clickhouse-cluster", "c", "--clickhouse-shards", ";"]);
        assert!(shards
            .clickhouse
            .shards()
            .unwrap_err()
            .to_string()
            .contains("--clickhouse-shards"));
        let cluster = run_args(&["--clickhouse-cluster", "bad name"]);
        assert!(cluster
            .clickhouse
            .cluster()
            .unwrap_err()
            .to_string()
            .contains("--clickhouse-cluster"));
    }
}
