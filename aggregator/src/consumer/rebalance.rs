//! Group membership: partitions assigned to and revoked from this instance (eager protocol;
//! start offsets come from ClickHouse checkpoints, not from Kafka), the consumer's creation
//! and librdkafka's statistics (consumer lag).

use super::partitions::{lock, ConsumerConfig, Shared};
use crate::names;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use std::sync::Arc;

/// Rebalance handling: eager protocol; offsets come from ClickHouse checkpoints.
pub struct AggregatorContext {
    shared: Arc<Shared>,
}

impl ClientContext for AggregatorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry the consumer lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(names::CONSUMER_LAG, "partition" => id.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut slots = lock(&self.shared.slots);
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                for p in partitions {
                    let Some((slot, offset)) = self.shared.open_partition(p) else {
                        // Shutting down: take nothing, the loop ends without having read.
                        slots.clear();
                        let _ = consumer.assign(&TopicPartitionList::new());
                        return;
                    };
                    slots.insert(p, slot);
                    if let Err(e) = tpl.set_partition_offset(&self.shared.config.topic, p, offset) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                }
                tracing::info!(partitions = ?slots.keys().collect::<Vec<_>>(), "partitions assigned");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut slots = lock(&self.shared.slots);
                for elem in tpl.elements() {
                    if let Some(mut slot) = slots.remove(&elem.partition()) {
                        // Best effort: the next owner replays from the checkpoint anyway.
                        let flushed = self.shared.write_now(elem.partition(), &mut slot);
                        if let Err(e) = flushed {
                            tracing::warn!(partition = elem.partition(), error = %e, "revoked partition's batch not written; its next owner replays it");
                        }
                    }
                }
                tracing::info!("partitions revoked");
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                lock(&self.shared.slots).clear();
            }
        }
    }
}

pub fn create_consumer(
    shared: &Arc<Shared>,
) -> Result<BaseConsumer<AggregatorContext>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer<AggregatorContext> = consumer_config(&shared.config)
        .create_with_context(AggregatorContext {
            shared: shared.clone(),
        })?;
    consumer.subscribe(&[&shared.config.topic])?;
    Ok(consumer)
}

/// The consumer's settings. Offsets are never committed to Kafka, automatically or otherwise:
/// where a partition resumes is its ClickHouse checkpoint, written with the batch it covers.
/// The operator's `--kafka-option`s come last and win.
fn consumer_config(c: &ConsumerConfig) -> ClientConfig {
    c.kafka.client_config(&[
        ("group.id", &c.group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("partition.assignment.strategy", "range"),
        (
            "auto.offset.reset",
            if c.start_from_latest {
                "latest"
            } else {
                "earliest"
            },
        ),
        ("session.timeout.ms", "10000"),
        ("queued.max.messages.kbytes", "32768"),
        ("statistics.interval.ms", "5000"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka_check::KafkaAccess;
    use crate::window::WindowConfig;
    use std::time::Duration;

    fn config(start_from_latest: bool, options: &[(&str, &str)]) -> ConsumerConfig {
        ConsumerConfig {
            kafka: KafkaAccess {
                brokers: "127.0.0.1:9092".into(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            group: "qoe-aggregator".into(),
            topic: "qoe.events".into(),
            window: WindowConfig::default(),
            flush_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(60),
            max_batch_rows: 1000,
            start_from_latest,
        }
    }

    #[test]
    fn offsets_are_never_committed_to_kafka() {
        let c = consumer_config(&config(false, &[]));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("qoe-aggregator"));
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn a_partition_without_checkpoint_starts_where_asked() {
        let earliest = consumer_config(&config(false, &[]));
        assert_eq!(earliest.get("auto.offset.reset"), Some("earliest"));
        let latest = consumer_config(&config(true, &[]));
        assert_eq!(latest.get("auto.offset.reset"), Some("latest"));
    }

    #[test]
    fn the_operators_kafka_options_win() {
        let c = consumer_config(&config(
            false,
            &[
                ("session.timeout.ms", "45000"),
                ("security.protocol", "ssl"),
            ],
        ));
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
    }
}
