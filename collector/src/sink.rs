//! Where accepted events go: Kafka (the product), or nowhere (`null`, to measure what Kafka
//! costs). The Kafka sink answers only once every event of a request is acknowledged (unless
//! fire-and-forget is configured), turns a full producer queue or a delivery timeout into
//! [`PublishError`] (HTTP 503), and replaces its producer when it is stuck: after a fatal
//! error, or when deliveries keep failing although the cluster answers metadata requests (a
//! broker that lost the idempotent producer's state in a restart can reject every retry of
//! the old producer id forever). So the process recovers by itself.

use crate::config::{AckMode, Config, SinkKind};
use qoe_schemas::{QoeEvent, SCHEMA_VERSION};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("Kafka did not acknowledge in time")]
    Timeout,
    #[error("Kafka delivery failed: {0}")]
    Delivery(KafkaError),
}

pub enum Sink {
    Kafka(KafkaSink),
    Null,
}

pub struct KafkaSink {
    config: ClientConfig,
    topic: String,
    ack_mode: AckMode,
    delivery_timeout: Duration,
    producer: RwLock<Arc<FutureProducer>>,
    /// Since when every delivery has failed (None while deliveries succeed).
    failing_since: std::sync::Mutex<Option<Instant>>,
    /// Replaced producers, dropped off the async runtime once no request uses them (dropping
    /// a producer blocks while it purges its queues).
    retired: std::sync::Mutex<Vec<Arc<FutureProducer>>>,
}

impl Sink {
    pub fn from_config(c: &Config) -> anyhow::Result<Sink> {
        if c.sink == SinkKind::Null {
            return Ok(Sink::Null);
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &c.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", c.kafka_compression.as_kafka())
            .set("linger.ms", c.kafka_linger_ms.to_string())
            .set("batch.size", c.kafka_batch_bytes.to_string())
            .set(
                "queue.buffering.max.messages",
                c.kafka_queue_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                c.kafka_queue_kbytes.to_string(),
            )
            .set(
                "message.timeout.ms",
                c.kafka_delivery_timeout_ms.to_string(),
            )
            // Consumers rewind by one batch when resuming (see the aggregator's `source`), so
            // batches must not grow beyond librdkafka's default count.
            .set("batch.num.messages", "10000")
            .set("partitioner", "murmur2_random");
        for (k, v) in &c.kafka_options {
            config.set(k, v);
        }
        let producer = config.create()?;
        Ok(Sink::Kafka(KafkaSink {
            config,
            topic: c.topic.clone(),
            ack_mode: c.ack_mode,
            delivery_timeout: Duration::from_millis(c.kafka_delivery_timeout_ms),
            producer: RwLock::new(Arc::new(producer)),
            failing_since: std::sync::Mutex::new(None),
            retired: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Publishes the events of one request, keyed by view.
    pub async fn publish(
        &self,
        events: &[QoeEvent],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        match self {
            Sink::Null => {
                // Same serialization work as the Kafka path, so the comparison is fair.
                for e in events {
                    std::hint::black_box(e.encode());
                }
                Ok(())
            }
            Sink::Kafka(k) => k.publish(events, traceparent).await,
        }
    }

    /// Whether events can be published right now (Kafka reachable, topic present).
    pub async fn ready(&self) -> bool {
        match self {
            Sink::Null => true,
            Sink::Kafka(k) => k.ready().await,
        }
    }

    /// Messages queued in the producer and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        match self {
            Sink::Null => 0,
            Sink::Kafka(k) => k.current().in_flight_count(),
        }
    }

    /// Periodic check: replaces a producer whose deliveries have failed for two delivery
    /// timeouts while the cluster answers metadata requests.
    pub async fn maintain(&self) {
        if let Sink::Kafka(k) = self {
            let since = *lock(&k.failing_since);
            let Some(since) = since else { return };
            if since.elapsed() >= 2 * k.delivery_timeout && k.ready().await {
                let current = k.current();
                let why = format!(
                    "deliveries failing for {:?} while the cluster is reachable",
                    since.elapsed()
                );
                k.replace(&current, &why);
            }
        }
    }

    /// Drops replaced producers nobody uses any more. Blocking: call from a blocking thread.
    pub fn reap_retired(&self) {
        if let Sink::Kafka(k) = self {
            let idle: Vec<_> = {
                let mut retired = lock(&k.retired);
                let (idle, busy) = retired.drain(..).partition(|p| Arc::strong_count(p) == 1);
                *retired = busy;
                idle
            };
            drop(idle);
        }
    }

    /// Waits (bounded) until queued messages are delivered; used on shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Sink::Kafka(k) = self {
            if let Err(e) = k.current().flush(timeout) {
                tracing::error!(error = %e, in_flight = self.in_flight(), "producer flush incomplete at shutdown");
            }
        }
    }
}

impl KafkaSink {
    fn current(&self) -> Arc<FutureProducer> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Called after a failed request: notes the failure, and replaces the producer at once if
    /// it is fatally broken (the stuck-but-not-fatal case is handled by [`Sink::maintain`]).
    fn on_failure(&self, failed: &Arc<FutureProducer>) {
        lock(&self.failing_since).get_or_insert_with(Instant::now);
        if let Some((code, reason)) = failed.client().fatal_error() {
            self.replace(failed, &format!("fatal error {code:?}: {reason}"));
        }
    }

    fn replace(&self, failed: &Arc<FutureProducer>, why: &str) {
        let mut guard = match self.producer.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&guard, failed) {
            return; // another request already replaced it
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(reason = %why, "replaced the Kafka producer");
                metrics::counter!("qoe_collector_producer_restarts_total").increment(1);
                let old = std::mem::replace(&mut *guard, Arc::new(fresh));
                lock(&self.retired).push(old);
                *lock(&self.failing_since) = None;
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate Kafka producer"),
        }
    }

    async fn publish(
        &self,
        events: &[QoeEvent],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let producer = self.current();
        let version = SCHEMA_VERSION.to_string();
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(events.len());
        let mut outcome = Ok(());
        for event in events {
            let payload = event.encode();
            let mut headers = OwnedHeaders::new_with_capacity(2).insert(Header {
                key: "qoe-schema",
                value: Some(version.as_str()),
            });
            if let Some(tp) = traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(tp),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .key(event.view_id.as_bytes())
                .payload(&payload)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    outcome = Err(PublishError::QueueFull);
                    break;
                }
                Err((e, _)) => {
                    outcome = Err(PublishError::Delivery(e));
                    break;
                }
            }
        }
        if self.ack_mode == AckMode::FireAndForget {
            // Dropping a delivery future does not cancel the message.
            return outcome;
        }
        // Await every enqueued delivery even after an enqueue failure, so that the request's
        // fate is fully known before answering (the client retries the whole beacon; the
        // aggregator drops the duplicates by (view_id, seq)).
        let wait = tokio::time::timeout(self.delivery_timeout + Duration::from_secs(1), async {
            let mut result = Ok(());
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        if result.is_ok() {
                            result = Err(match e {
                                KafkaError::MessageProduction(
                                    RDKafkaErrorCode::MessageTimedOut,
                                ) => PublishError::Timeout,
                                other => PublishError::Delivery(other),
                            });
                        }
                    }
                    Err(_canceled) => {
                        if result.is_ok() {
                            result = Err(PublishError::Timeout);
                        }
                    }
                }
            }
            result
        })
        .await
        .unwrap_or(Err(PublishError::Timeout));
        metrics::histogram!("qoe_collector_kafka_delivery_seconds")
            .record(started.elapsed().as_secs_f64());
        let result = outcome.and(wait);
        match &result {
            Ok(()) => *lock(&self.failing_since) = None,
            Err(_) => self.on_failure(&producer),
        }
        result
    }

    async fn ready(&self) -> bool {
        let producer = self.current();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
