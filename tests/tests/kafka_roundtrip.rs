//! The broker contract the pipeline relies on: keyed messages with headers through an
//! idempotent, compressed producer; a consumer group with manual commits that resumes
//! exactly where it committed.
//!
//! Resuming rewinds: some Kafka-protocol brokers (tansu 0.6 among them) answer a fetch that
//! starts in the middle of a record batch with the *next* batch, silently skipping the rest of
//! the current one. The second consumer here resumes by the aggregator's own rules
//! (`qoe_aggregator::source`: the resume plan of a checkpoint at the committed offset, and the
//! routing of each fetched message), so the rewind and the drop below the resume point are the
//! code that runs in production, and the test shows both happen.

use qoe_aggregator::checkpoint::Checkpoint;
use qoe_aggregator::source::{resume_plan, route, FetchFrom, ResumePlan, Route};
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

/// On assignment, plans each partition as the aggregator would resume from a checkpoint at
/// its committed offset, and starts fetching where that plan says.
#[derive(Default)]
struct ResumeContext {
    plans: Mutex<BTreeMap<i32, ResumePlan>>,
}

fn checkpoint_at(offset: i64) -> Checkpoint {
    Checkpoint {
        from_offset: offset,
        next_offset: offset,
        state_offset: offset,
        max_event_time: 0,
        snapshot_offset: offset,
        state: String::new(),
    }
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
        let mut plans = self.plans.lock().unwrap();
        for elem in committed.elements() {
            let checkpoint = match elem.offset() {
                Offset::Offset(o) => Some(checkpoint_at(o)),
                _ => None,
            };
            let plan = resume_plan(checkpoint.as_ref(), false);
            plans.insert(elem.partition(), plan);
            let start = match plan.fetch {
                FetchFrom::Offset(o) => Offset::Offset(o),
                FetchFrom::Beginning => Offset::Beginning,
                FetchFrom::End => Offset::End,
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

/// Receives `n` messages that `keep` accepts: (key, value, header, partition, offset); also
/// returns how many it dropped.
async fn receive<C: ConsumerContext + 'static>(
    c: &StreamConsumer<C>,
    n: usize,
    keep: impl Fn(i32, i64) -> bool,
) -> (Received, usize) {
    let mut out = Vec::new();
    let mut dropped = 0;
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("timed out waiting for messages")
            .expect("consume error");
        if !keep(m.partition(), m.offset()) {
            dropped += 1;
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
    (out, dropped)
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
    // Same key, same partition (a view's events stay in order in one partition), and each
    // partition's offsets are 0, 1, 2, ... in the order of sending: the idempotent producer
    // neither lost, duplicated nor reordered anything.
    let mut partition_of_key = BTreeMap::new();
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let delivery = d.await.unwrap().map_err(|(e, _)| e).unwrap();
        let p = partition_of_key
            .entry(format!("view-{}", i % 7))
            .or_insert(delivery.partition);
        assert_eq!(
            *p, delivery.partition,
            "message {i}: a key on two partitions"
        );
        offsets
            .entry(delivery.partition)
            .or_default()
            .push(delivery.offset);
    }
    for (p, got) in &offsets {
        let want: Vec<i64> = (0..got.len() as i64).collect();
        assert_eq!(got, &want, "offsets of partition {p}");
    }

    let group = unique("test.group");
    let first: StreamConsumer = config(&group).create().unwrap();
    first.subscribe(&[&topic]).unwrap();
    let (got, _) = receive(&first, 25, |_, _| true).await;
    for (key, value, header, partition, _) in &got {
        assert_eq!(header, "1", "header lost on {value}");
        assert_eq!(
            &partition_of_key[key], partition,
            "{value} read from another partition"
        );
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
    let committed_values: BTreeSet<String> = got.iter().map(|(_, v, _, _, _)| v.clone()).collect();
    drop(first);

    let second: StreamConsumer<ResumeContext> = config(&group)
        .create_with_context(ResumeContext::default())
        .unwrap();
    second.subscribe(&[&topic]).unwrap();
    let (rest, dropped) = receive(&second, total - committed_values.len(), |p, offset| {
        let plans = second.context().plans.lock().unwrap();
        let plan = plans.get(&p).copied().unwrap_or(resume_plan(None, false));
        route(offset, &plan, plan.restore_until) == Route::Apply
    })
    .await;
    let resumed_at: BTreeMap<i32, i64> = second
        .context()
        .plans
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, plan)| plan.restore_until > 0)
        .map(|(p, plan)| (*p, plan.restore_until))
        .collect();
    assert_eq!(
        resumed_at, next,
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
    // Nothing more than the total arrives; what still comes is the rewind's refetch below
    // the committed offsets.
    let mut dropped = dropped;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(m) = tokio::time::timeout_at(deadline, second.recv()).await {
        let m = m.unwrap();
        let floor = next.get(&m.partition()).copied().unwrap_or(0);
        assert!(
            m.offset() < floor,
            "unexpected extra message at offset {}",
            m.offset()
        );
        dropped += 1;
    }
    // The rewind fetched again everything the first consumer had committed (the fetch started
    // before the resume point), and the routing dropped exactly that.
    assert_eq!(
        dropped,
        committed_values.len(),
        "messages below the committed offsets fetched again and dropped"
    );
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
