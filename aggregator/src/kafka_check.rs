//! How the aggregator reaches Kafka ([`KafkaAccess`]: brokers and `--kafka-option`s, for every
//! client it creates) and what the Kafka cluster says about the topic: reachability,
//! partitions, and where each partition ends (to recognise checkpoints left by an earlier
//! incarnation of the topic).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The bootstrap servers and the extra librdkafka properties (`--kafka-option`: TLS, SASL,
/// timeouts) of every Kafka client the aggregator creates. The options are applied last, so
/// they can override the aggregator's own settings; their values are never printed.
#[derive(Clone, Default)]
pub struct KafkaAccess {
    pub brokers: String,
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaAccess")
            .field("brokers", &self.brokers)
            .field("option_keys", &keys)
            .finish()
    }
}

impl KafkaAccess {
    /// Brokers without extra options.
    pub fn brokers(brokers: &str) -> KafkaAccess {
        KafkaAccess {
            brokers: brokers.to_owned(),
            options: Vec::new(),
        }
    }

    /// A client configuration: the brokers, then `settings`, then the options.
    pub fn client_config(&self, settings: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in settings {
            config.set(*k, *v);
        }
        for (k, v) in &self.options {
            config.set(k, v);
        }
        config
    }
}

/// What the Kafka cluster could not tell about a topic.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCheckError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} is not in the broker's metadata")]
    NoSuchTopic { topic: String },
    #[error("topic {topic}: {error}")]
    Topic { topic: String, error: String },
    #[error("could not read the last messages of partitions {partitions:?} of {topic}")]
    Unread { topic: String, partitions: Vec<i32> },
}

/// Number of partitions of `topic`, or an error when the broker or topic is not there.
pub fn topic_partitions(kafka: &KafkaAccess, topic: &str) -> Result<usize, KafkaCheckError> {
    let consumer: BaseConsumer = kafka.client_config(&[]).create()?;
    partitions(&consumer, topic)
}

/// The end (the next offset to be written) of every partition of `topic`.
///
/// Not just the high watermark: some Kafka-protocol brokers (tansu 0.6) report the first offset
/// of the last record batch + 1 there. So the last batch is read as well, from the offset
/// before the watermark, and the end is one past the highest offset found.
pub fn partition_ends(
    kafka: &KafkaAccess,
    topic: &str,
) -> Result<Vec<(i32, i64)>, KafkaCheckError> {
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", "qoe-partition-ends"),
            ("enable.auto.commit", "false"),
        ])
        .create()?;
    let n = partitions(&consumer, topic)?;
    let mut ends: Vec<(i32, i64)> = (0..n as i32)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            Ok((p, high))
        })
        .collect::<Result<_, KafkaError>>()?;
    let mut tpl = TopicPartitionList::new();
    for (p, high) in ends.iter().filter(|(_, h)| *h > 0) {
        tpl.add_partition_offset(topic, *p, Offset::Offset(high - 1))?;
    }
    if tpl.count() == 0 {
        return Ok(ends);
    }
    consumer.assign(&tpl)?;
    let mut pending: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until every partition answered, then a little longer for the rest of their batches.
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if let Some(end) = ends.iter_mut().find(|(p, _)| *p == msg.partition()) {
                    end.1 = end.1.max(msg.offset() + 1);
                }
                pending.remove(&msg.partition());
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        if pending.is_empty() && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    if !pending.is_empty() {
        let mut partitions: Vec<i32> = pending.into_iter().collect();
        partitions.sort_unstable();
        return Err(KafkaCheckError::Unread {
            topic: topic.to_owned(),
            partitions,
        });
    }
    Ok(ends)
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<usize, KafkaCheckError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| KafkaCheckError::NoSuchTopic {
            topic: topic.to_owned(),
        })?;
    if let Some(err) = t.error() {
        return Err(KafkaCheckError::Topic {
            topic: topic.to_owned(),
            error: format!("{err:?}"),
        });
    }
    Ok(t.partitions().len())
}

#[cfg(test)]
mod tests {
    use super::KafkaAccess;

    #[test]
    fn options_come_last_and_their_values_are_not_printed() {
        let kafka = KafkaAccess {
            brokers: "b:9093".into(),
            options: vec![
                ("session.timeout.ms".into(), "30000".into()),
                ("sasl.password".into(), "hunter2".into()),
            ],
        };
        let config = kafka.client_config(&[("session.timeout.ms", "10000"), ("group.id", "g")]);
        assert_eq!(config.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(config.get("session.timeout.ms"), Some("30000"));
        assert_eq!(config.get("group.id"), Some("g"));
        let printed = format!("{kafka:?}");
        assert!(
            printed.contains("sasl.password") && !printed.contains("hunter2"),
            "{printed}"
        );
    }
}
