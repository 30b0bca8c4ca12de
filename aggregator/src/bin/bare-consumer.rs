//! `bare-consumer`: the ceiling for any consumer of the topic on this machine. Reads every
//! partition from its beginning up to the end it had at start, decodes each message as a
//! [`MessageRef`] (the aggregator's own decoding, either format) and drops it, then prints
//! events/s.
//! `scripts/bench-aggregator.sh` compares the aggregator's whole path (Kafka to ClickHouse)
//! with it.

use anyhow::Context;
use clap::Parser;
use qoe_schemas::MessageRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Consume and decode a topic as fast as possible (benchmark ceiling)"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Topic to read.
    #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
    topic: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("group.id", format!("bare-consumer-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "32768")
        .create()
        .context("creating the consumer")?;
    let ends: HashMap<i32, i64> = qoe_aggregator::kafka_check::partition_ends(
        &qoe_aggregator::kafka_check::KafkaAccess::brokers(&args.kafka_brokers),
        &args.topic,
    )?
    .into_iter()
    .filter(|(_, end)| *end > 0)
    .collect();
    let total: i64 = ends.values().sum();
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut events, mut bad, mut done) = (0u64, 0u64, HashMap::new());
    while done.len() < ends.len() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not at the end after 10 minutes"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        match msg.payload().map(MessageRef::decode) {
            Some(Ok(m)) => events += m.len() as u64,
            _ => bad += 1,
        }
        if ends
            .get(&msg.partition())
            .is_some_and(|end| msg.offset() + 1 >= *end)
        {
            done.insert(msg.partition(), ());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bare consumer: {events} events decoded ({bad} undecodable) of {total} messages in {secs:.2} s = {:.0} events/s",
        events as f64 / secs
    );
    Ok(())
}
