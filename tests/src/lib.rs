//! Shared helpers of the end-to-end tests: where the stack is, unique names per test,
//! topic and database set-up. The stack itself is started by `scripts/stack.sh start`
//! (`make test` does it); tests fail with a clear message when it is not running.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn kafka_brokers() -> String {
    std::env::var("QOE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("QOE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A name no other test run uses: `prefix_<millis>_<random>`.
pub fn unique(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}_{millis}_{:06}", rand::random::<u32>() % 1_000_000)
}

/// Creates a topic for one test (isolation by name, not by restarting the broker).
pub async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&topic], &opts).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach Kafka at {} ({e}); start the stack with scripts/stack.sh start",
            kafka_brokers()
        )
    })?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}
