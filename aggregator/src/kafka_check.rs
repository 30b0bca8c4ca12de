//! What the Kafka cluster says about the topic: reachability, partitions, and where each
//! partition ends (to recognise checkpoints left by an earlier incarnation of the topic).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

/// Number of partitions of `topic`, or an error when the broker or topic is not there.
pub fn topic_partitions(brokers: &str, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    partitions(&consumer, topic)
}

/// The end (high watermark: the next offset to be written) of every partition of `topic`.
pub fn partition_ends(brokers: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let n = partitions(&consumer, topic)?;
    (0..n as i32)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            Ok((p, high))
        })
        .collect()
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<usize> {
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
