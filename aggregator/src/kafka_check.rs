//! Reachability check of the Kafka cluster and the topic.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

/// Number of partitions of `topic`, or an error when the broker or topic is not there.
pub fn topic_partitions(brokers: &str, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow::anyhow!("topic {topic} not in metadata"))?;
    if let Some(err) = t.error() {
        anyhow::bail!("topic {topic}: {err:?}");
    }
    Ok(t.partitions().len())
}
