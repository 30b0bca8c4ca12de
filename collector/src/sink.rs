//! Where accepted events go: Kafka (the product), or nowhere (`null`, to measure what Kafka
//! costs). The Kafka sink answers only once every event of a request is acknowledged (unless
//! fire-and-forget is configured), turns a full producer queue or a delivery timeout into
//! [`PublishError`] (HTTP 503), and replaces its producer when it is stuck: after a fatal
//! error, or when deliveries keep failing although the cluster answers metadata requests (a
//! broker that lost the idempotent producer's state in a restart can reject every retry of
//! the old producer id forever). So the process recovers by itself.

use crate::names;
use clap::ValueEnum;
use qoe_schemas::{
    EventContext, EventFields, MessageEncoder, BEACON_MESSAGE_VERSION, SCHEMA_VERSION,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where accepted events go: Kafka, or nowhere (`--sink null`, for benchmarks).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SinkKind {
    Kafka,
    Null,
}

/// One Kafka message per beacon, or per event (`--kafka-message-format`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum MessageFormat {
    Beacon,
    Event,
}

/// When a request is answered: after Kafka acknowledged, or once queued (`--ack-mode`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum AckMode {
    Ack,
    FireAndForget,
}

/// The producer's compression (`--kafka-compression`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_kafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

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
    /// Encodes in the configured format and drops.
    Null(MessageFormat),
}

/// The Kafka messages of one request's events: one per event, or one for the beacon.
fn encode(format: MessageFormat, context: &EventContext, events: &[EventFields]) -> Vec<Vec<u8>> {
    match format {
        MessageFormat::Event => {
            let encoder = MessageEncoder::new(context);
            events.iter().map(|e| encoder.encode(e)).collect()
        }
        MessageFormat::Beacon if events.is_empty() => Vec::new(),
        MessageFormat::Beacon => {
            MessageEncoder::for_beacon(context).encode_beacon(events, MAX_BEACON_MESSAGE_BYTES)
        }
    }
}

/// Largest message of the per-beacon format; a bigger beacon goes as several messages. Well
/// under Kafka's default limit of 1 MB per message, whatever the broker's settings.
const MAX_BEACON_MESSAGE_BYTES: usize = 512 * 1024;

/// The producer: librdkafka's queue with a thread serving its delivery reports.
type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// Delivery state of one request's messages, shared with the delivery-report callback: one
/// counter and one wake-up per request, not per message.
struct RequestDelivery {
    /// Reports still expected, plus one held by the request until it has enqueued all it will.
    remaining: AtomicUsize,
    failure: std::sync::Mutex<Option<PublishError>>,
    done: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl RequestDelivery {
    fn new(messages: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let delivery = RequestDelivery {
            remaining: AtomicUsize::new(messages + 1),
            failure: std::sync::Mutex::new(None),
            done: std::sync::Mutex::new(Some(tx)),
        };
        (Arc::new(delivery), rx)
    }

    /// Accounts for `n` messages that are settled (delivered, failed, or never enqueued).
    fn settle(&self, n: usize, failure: Option<PublishError>) {
        if let Some(f) = failure {
            lock(&self.failure).get_or_insert(f);
        }
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            if let Some(done) = lock(&self.done).take() {
                let _ = done.send(());
            }
        }
    }
}

/// Routes each delivery report to its request, and follows the idempotent producer's state.
#[derive(Default)]
struct DeliveryContext {
    /// Whether the producer has its idempotent producer id: librdkafka holds every message
    /// until it does (up to ~1 s after start when its first attempt finds no broker
    /// connection yet). Learned from librdkafka's periodic statistics; false until the first.
    producer_id_assigned: AtomicBool,
}

/// The part of librdkafka's statistics JSON read here (`eos` is absent without idempotence).
#[derive(serde::Deserialize)]
struct ProducerStats {
    eos: Option<IdempotenceStats>,
}

#[derive(serde::Deserialize)]
struct IdempotenceStats {
    idemp_state: String,
}

impl ClientContext for DeliveryContext {
    /// Connection failures are already in librdkafka's own log line (`FAIL ...`), and the
    /// same failure arrives here more than once: logged at debug, so a broker outage is one
    /// line per attempt rather than five. Every other error is logged as an error.
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
                tracing::debug!(error = %error, reason, "librdkafka")
            }
            _ => tracing::error!(error = %error, reason, "librdkafka error"),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<ProducerStats>(statistics) {
            Ok(stats) => {
                let assigned = stats.eos.is_none_or(|eos| eos.idemp_state == "Assigned");
                self.producer_id_assigned.store(assigned, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "unreadable librdkafka statistics"),
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<RequestDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Arc<RequestDelivery>) {
        let failure = match result {
            Ok(_) => None,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)) => {
                Some(PublishError::Timeout)
            }
            Err((e, _)) => Some(PublishError::Delivery(e.clone())),
        };
        delivery.settle(1, failure);
    }
}

pub struct KafkaSink {
    config: ClientConfig,
    topic: String,
    ack_mode: AckMode,
    message_format: MessageFormat,
    delivery_timeout: Duration,
    producer: RwLock<Arc<KafkaProducer>>,
    /// Since when every delivery has failed (None while deliveries succeed).
    failing_since: std::sync::Mutex<Option<Instant>>,
    /// Replaced producers, dropped off the async runtime once no request uses them (dropping
    /// a producer blocks while it purges its queues).
    retired: std::sync::Mutex<Vec<Arc<KafkaProducer>>>,
}

/// What the sink needs to know; `Config::sink_config` builds it from the flags.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub kind: SinkKind,
    pub brokers: String,
    pub topic: String,
    pub ack_mode: AckMode,
    pub message_format: MessageFormat,
    pub compression: Compression,
    pub linger_ms: u32,
    pub batch_bytes: u32,
    pub queue_messages: u32,
    pub queue_kbytes: u32,
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties, applied last.
    pub kafka_options: Vec<(String, String)>,
}

impl Sink {
    pub fn from_config(c: &SinkConfig) -> Result<Sink, rdkafka::error::KafkaError> {
        if c.kind == SinkKind::Null {
            return Ok(Sink::Null(c.message_format));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &c.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", c.compression.as_kafka())
            .set("linger.ms", c.linger_ms.to_string())
            .set("batch.size", c.batch_bytes.to_string())
            .set("queue.buffering.max.messages", c.queue_messages.to_string())
            .set("queue.buffering.max.kbytes", c.queue_kbytes.to_string())
            .set(
                "message.timeout.ms",
                c.delivery_timeout.as_millis().to_string(),
            )
            // Consumers rewind by one batch when resuming (see the aggregator's `source`), so
            // batches must not grow beyond librdkafka's default count.
            .set("batch.num.messages", "10000")
            .set("partitioner", "murmur2_random")
            // Statistics only to learn when the idempotent producer id is assigned (readiness).
            .set("statistics.interval.ms", "200");
        for (k, v) in &c.kafka_options {
            config.set(k, v);
        }
        let producer = config.create_with_context(DeliveryContext::default())?;
        Ok(Sink::Kafka(KafkaSink {
            config,
            topic: c.topic.clone(),
            ack_mode: c.ack_mode,
            message_format: c.message_format,
            delivery_timeout: c.delivery_timeout,
            producer: RwLock::new(Arc::new(producer)),
            failing_since: std::sync::Mutex::new(None),
            retired: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Publishes the events of one request (one view), keyed by view.
    pub async fn publish(
        &self,
        context: &EventContext,
        events: &[EventFields],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        match self {
            Sink::Null(format) => {
                // Same serialization work as the Kafka path, so the comparison is fair.
                std::hint::black_box(encode(*format, context, events));
                Ok(())
            }
            Sink::Kafka(k) => k.publish(context, events, traceparent).await,
        }
    }

    /// Publishes ready-made message values with their keys (CMCD reports, keyed by session),
    /// with the same acknowledgement rule as [`Sink::publish`].
    pub async fn publish_keyed(
        &self,
        messages: &[(String, Vec<u8>)],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        match self {
            Sink::Null(_) => Ok(()),
            Sink::Kafka(k) => {
                k.publish_messages(
                    messages.len(),
                    messages
                        .iter()
                        .map(|(k, v)| (k.as_bytes(), std::borrow::Cow::Borrowed(v.as_slice()))),
                    SCHEMA_VERSION,
                    traceparent,
                )
                .await
            }
        }
    }

    /// Whether events can be published right now: Kafka reachable, the topic present, and
    /// the producer holding its idempotent producer id (so the next message is not held back).
    pub async fn ready(&self) -> bool {
        match self {
            Sink::Null(_) => true,
            Sink::Kafka(k) => k.ready().await,
        }
    }

    /// Messages queued in the producer and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        match self {
            Sink::Null(_) => 0,
            Sink::Kafka(k) => k.current().in_flight_count(),
        }
    }

    /// Periodic check: replaces a producer whose deliveries have failed for two delivery
    /// timeouts while the cluster answers metadata requests.
    pub async fn maintain(&self) {
        if let Sink::Kafka(k) = self {
            let since = *lock(&k.failing_since);
            let Some(since) = since else { return };
            if since.elapsed() >= 2 * k.delivery_timeout && k.reachable().await {
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
    fn current(&self) -> Arc<KafkaProducer> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Called after a failed request: notes the failure, and replaces the producer at once if
    /// it is fatally broken (the stuck-but-not-fatal case is handled by [`Sink::maintain`]).
    fn on_failure(&self, failed: &Arc<KafkaProducer>) {
        lock(&self.failing_since).get_or_insert_with(Instant::now);
        if let Some((code, reason)) = failed.client().fatal_error() {
            self.replace(failed, &format!("fatal error {code:?}: {reason}"));
        }
    }

    fn replace(&self, failed: &Arc<KafkaProducer>, why: &str) {
        let mut guard = match self.producer.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&guard, failed) {
            return; // another request already replaced it
        }
        match self.config.create_with_context(DeliveryContext::default()) {
            Ok(fresh) => {
                tracing::warn!(reason = %why, "replaced the Kafka producer");
                metrics::counter!(names::PRODUCER_RESTARTS).increment(1);
                let old = std::mem::replace(&mut *guard, Arc::new(fresh));
                lock(&self.retired).push(old);
                *lock(&self.failing_since) = None;
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate Kafka producer"),
        }
    }

    async fn publish(
        &self,
        context: &EventContext,
        events: &[EventFields],
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let key = context.view_id.as_bytes();
        let messages = encode(self.message_format, context, events);
        let version = match self.message_format {
            MessageFormat::Event => SCHEMA_VERSION,
            MessageFormat::Beacon => BEACON_MESSAGE_VERSION,
        };
        self.publish_messages(
            messages.len(),
            messages
                .into_iter()
                .map(|m| (key, std::borrow::Cow::Owned(m))),
            version,
            traceparent,
        )
        .await
    }

    /// Enqueues `count` messages and waits for every delivery report (unless fire-and-forget).
    async fn publish_messages<'a>(
        &self,
        count: usize,
        messages: impl Iterator<Item = (&'a [u8], std::borrow::Cow<'a, [u8]>)>,
        version: u8,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        let producer = self.current();
        let version = version.to_string();
        let started = Instant::now();
        let (delivery, delivered) = RequestDelivery::new(count);
        let mut enqueue_failure = None;
        let mut never_enqueued = 0;
        for (i, (key, payload)) in messages.enumerate() {
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
            let record = BaseRecord::with_opaque_to(&self.topic, delivery.clone())
                .key(key)
                .payload(payload.as_ref())
                .headers(headers);
            if let Err((e, _record)) = producer.send(record) {
                enqueue_failure = Some(match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        PublishError::QueueFull
                    }
                    other => PublishError::Delivery(other),
                });
                never_enqueued = count - i;
                break;
            }
        }
        // The request's own hold, and the messages that never made it into the queue.
        delivery.settle(1 + never_enqueued, None);
        if self.ack_mode == AckMode::FireAndForget {
            // Enqueued messages are delivered (or reported failed) without anyone waiting.
            return enqueue_failure.map_or(Ok(()), Err);
        }
        // Wait for every enqueued delivery even after an enqueue failure, so that the
        // request's fate is fully known before answering (the client retries the whole beacon;
        // the aggregator drops the duplicates by (view_id, seq)).
        let waited =
            tokio::time::timeout(self.delivery_timeout + Duration::from_secs(1), delivered).await;
        let result = match (enqueue_failure, waited) {
            (Some(failure), _) => Err(failure),
            (None, Ok(Ok(()))) => lock(&delivery.failure).take().map_or(Ok(()), Err),
            // Timed out, or the producer went away without reporting.
            (None, _) => Err(PublishError::Timeout),
        };
        metrics::histogram!(names::KAFKA_DELIVERY_SECONDS).record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => *lock(&self.failing_since) = None,
            Err(_) => self.on_failure(&producer),
        }
        result
    }

    async fn ready(&self) -> bool {
        let producer_id = self
            .current()
            .context()
            .producer_id_assigned
            .load(Ordering::Relaxed);
        producer_id && self.reachable().await
    }

    /// Whether the cluster answers a metadata request for the topic and has its partitions.
    async fn reachable(&self) -> bool {
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
