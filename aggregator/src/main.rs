//! `aggregator` command line: `run` (the consumer) and `migrate` (apply the ClickHouse schema).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use qoe_aggregator::migrate;
use qoe_aggregator::store::{Store, StoreConfig};

/// Computes event-time windowed QoE metrics from Kafka into ClickHouse.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the ClickHouse schema migrations (idempotent), then exit.
    Migrate {
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
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
    },
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
}

impl ClickHouseArgs {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { clickhouse } => {
            let store = Store::connect(clickhouse.config(), true).await?;
            let report = migrate::run(&store)
                .await
                .with_context(|| format!("migrating {}", clickhouse.clickhouse_database))?;
            println!(
                "ClickHouse {} database {}: {} migration(s) applied, {} already applied, {} statement(s) skipped for this server version",
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
        } => {
            let store = Store::connect(clickhouse.config(), false).await?;
            println!(
                "ClickHouse {} at {}",
                store.version, clickhouse.clickhouse_url
            );
            let partitions = qoe_aggregator::kafka_check::topic_partitions(&kafka_brokers, &topic)
                .with_context(|| format!("reading metadata of {topic} from {kafka_brokers}"))?;
            println!("Kafka {kafka_brokers}: topic {topic} has {partitions} partitions");
        }
    }
    Ok(())
}
