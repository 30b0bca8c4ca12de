//! Group membership: partitions assigned to and revoked from this instance (eager protocol;
//! start offsets come from ClickHouse checkpoints, not from Kafka), the consumer's creation
//! and librdkafka's statistics (consumer lag).

use super::partitions::{lock, Shared};
use crate::names;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
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
    let c = &shared.config;
    let config = c.kafka.client_config(&[
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
    ]);
    let consumer: BaseConsumer<AggregatorContext> =
        config.create_with_context(AggregatorContext {
            shared: shared.clone(),
        })?;
    consumer.subscribe(&[&c.topic])?;
    Ok(consumer)
}
