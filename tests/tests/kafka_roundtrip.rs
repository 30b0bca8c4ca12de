//! The broker contract the pipeline relies on: keyed messages with headers through an
//! idempotent, compressed producer; a consumer group with manual commits that resumes
//! exactly where it committed.
//!
//! Resuming rewinds: some Kafka-protocol brokers (tansu 0.6 among them) answer a fetch that
//! starts in the middle of a record batch with the *next* batch, silently skipping the rest of
//! the current one. So a resuming consumer fetches from `committed - RESUME_REWIND` and drops
//! what is below `committed` itself, which is correct on every broker.

use qoe_aggregator::source::resume_fetch_offset;
use qoe_tests::{create_topic, kafka_brokers, unique};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// On assignment, starts each partition `RESUME_REWIND` before its committed offset and
/// remembers the committed offsets, below which messages are dropped.
#[derive(Default)]
struct ResumeContext {
    committed: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for ResumeContext {}

impl ConsumerContext for ResumeContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            consumer.unassign().expect("unassign");
            return;
        }
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .expect("committed offsets");
        let mut seen = self.committed.lock().unwrap();
        for elem in committed.elements() {
            let start = match elem.offset() {
                Offset::Offset(o) => {
                    seen.insert(elem.partition(), o);
                    Offset::Offset(resume_fetch_offset(o))
                }
                _ => Offset::Beginning,
            };
            tpl.set_partition_offset(elem.topic(), elem.partition(), start)
                .expect("set offset");
        }
        consumer.assign(tpl).expect("assign");
    }
}

fn config(group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000");
    c
}

type Received = Vec<(String, String, String, i32, i64)>;

/// Receives `n` messages at or above the committed offsets: (key, value, header, partition, offset).
async fn receive<C: ConsumerContext + 'static>(
    c: &StreamConsumer<C>,
    n: usize,
    committed: impl Fn(i32) -> i64,
) -> Received {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("timed out waiting for messages")
            .expect("consume error");
        if m.offset() < committed(m.partition()) {
            continue;
        }
        let header = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "qoe-schema"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            header,
            m.partition(),
            m.offset(),
        ));
    }
    out
}

#[tokio::test]
async fn produce_consume_commit_resume() {
    let topic = unique("test.roundtrip");
    create_topic(&topic, 3).await.unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .unwrap();

    let total = 60;
    let mut deliveries = Vec::new();
    for i in 0..total {
        let key = format!("view-{}", i % 7);
        let value = format!("event-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "qoe-schema",
            value: Some("1"),
        });
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    let mut partition_of_key = BTreeMap::new();
    for d in deliveries {
        let delivery = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        assert!(delivery.offset >= 0);
    }

    let group = unique("test.group");
    let first: StreamConsumer = config(&group).create().unwrap();
    first.subscribe(&[&topic]).unwrap();
    let got = receive(&first, 25, |_| 0).await;
    for (key, value, header, partition, _) in &got {
        assert_eq!(header, "1", "header lost on {value}");
        // Same key, same partition: a view's events stay in order in one partition.
        let p = partition_of_key.entry(key.clone()).or_insert(*partition);
        assert_eq!(p, partition, "key {key} seen on two partitions");
    }
    // Commit exactly what was received (next offset per partition), then leave the group.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, _, _, p, o) in &got {
        let e = next.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    first.commit(&tpl, CommitMode::Sync).unwrap();
    // Messages handed to the first consumer but not committed must come again.
    let committed_values: BTreeSet<String> = got
        .iter()
        .filter(|(_, _, _, p, o)| *o < next[p])
        .map(|(_, v, _, _, _)| v.clone())
        .collect();
    drop(first);

    let second: StreamConsumer<ResumeContext> = config(&group)
        .create_with_context(ResumeContext::default())
        .unwrap();
    second.subscribe(&[&topic]).unwrap();
    let rest = receive(&second, total - committed_values.len(), |p| {
        second
            .context()
            .committed
            .lock()
            .unwrap()
            .get(&p)
            .copied()
            .unwrap_or(0)
    })
    .await;
    assert_eq!(
        *second.context().committed.lock().unwrap(),
        next,
        "the group did not hand back the committed offsets"
    );
    let rest_values: BTreeSet<String> = rest.iter().map(|(_, v, _, _, _)| v.clone()).collect();
    assert!(
        committed_values.is_disjoint(&rest_values),
        "committed messages were delivered again"
    );
    let all: BTreeSet<String> = committed_values.union(&rest_values).cloned().collect();
    let expected: BTreeSet<String> = (0..total).map(|i| format!("event-{i}")).collect();
    assert_eq!(all, expected, "resume lost or invented messages");
    for (key, _, _, partition, _) in &rest {
        if let Some(p) = partition_of_key.get(key) {
            assert_eq!(p, partition);
        }
    }
    // Nothing more than the total arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(m) = tokio::time::timeout_at(deadline, second.recv()).await {
        let m = m.unwrap();
        let floor = next.get(&m.partition()).copied().unwrap_or(0);
        assert!(
            m.offset() < floor,
            "unexpected extra message at offset {}",
            m.offset()
        );
    }
}

/// Where each partition ends, as the aggregator sees it before trusting its checkpoints, is the
/// offset after the last message delivered, also after several producer batches (tansu 0.6
/// reports the first offset of the last batch + 1 as its high watermark).
#[tokio::test]
async fn partition_ends_are_exact() {
    let topic = unique("test.ends");
    create_topic(&topic, 3).await.unwrap();
    let empty = qoe_tests::partition_ends(&topic);
    assert_eq!(empty, [(0, 0), (1, 0), (2, 0)].into());
    for round in 0..3 {
        let events = qoe_tests::truth::generate(round, 200, 1_763_721_600_000);
        let delivered: std::collections::BTreeMap<i32, i64> = qoe_tests::publish(&topic, &events)
            .await
            .into_iter()
            .map(|(p, (_, next))| (p, next))
            .collect();
        let ends = qoe_tests::partition_ends(&topic);
        assert_eq!(ends, delivered, "round {round}");
    }
}
