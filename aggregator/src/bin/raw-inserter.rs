//! `raw-inserter`: the alternative to the aggregator that teams build first, for
//! `scripts/bench-aggregator.sh raw-clickhouse`. Reads every partition of the topic from its
//! beginning up to the end it had at start and inserts the messages, unchanged, as rows of a
//! raw events table (`INSERT ... FORMAT JSONEachRow`, unknown fields skipped), in batches of
//! `--batch-rows` as a good ClickHouse client would; materialized views on that table compute
//! the windows (`scripts/bench-raw-events.sql`). Prints events/s.
//!
//! Each message is checked to be a QoE event before it is sent, so a malformed message cannot
//! fail a whole batch; the aggregator's own decoding is used for that. Messages of the
//! per-beacon format become one row per event.

use anyhow::Context;
use clap::Parser;
use qoe_schemas::MessageRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Insert a topic's QoE events unchanged into a ClickHouse table (benchmark alternative)"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Topic to read.
    #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
    topic: String,
    /// ClickHouse HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Database holding the `raw_events` table.
    #[arg(long)]
    clickhouse_database: String,
    /// Rows per INSERT.
    #[arg(long, default_value_t = 100_000)]
    batch_rows: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/?database={}&input_format_skip_unknown_fields=1&query={}",
        args.clickhouse_url.trim_end_matches('/'),
        args.clickhouse_database,
        "INSERT%20INTO%20raw_events%20FORMAT%20JSONEachRow"
    );
    let insert = |body: Vec<u8>| -> anyhow::Result<()> {
        runtime.block_on(async {
            let response = http.post(&url).body(body).send().await?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                anyhow::bail!("ClickHouse refused the insert ({status}): {}", text.trim());
            }
            Ok(())
        })
    };

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("group.id", format!("raw-inserter-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "32768")
        .create()
        .context("creating the consumer")?;
    let ends: Vec<(i32, i64)> = qoe_aggregator::kafka_check::partition_ends(
        &qoe_aggregator::kafka_check::KafkaAccess::brokers(&args.kafka_brokers),
        &args.topic,
    )?
    .into_iter()
    .filter(|(_, end)| *end > 0)
    .collect();
    let total: i64 = ends.iter().map(|(_, end)| end).sum();
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &ends {
        tpl.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let started = Instant::now();
    let (mut inserted, mut bad, mut rows) = (0u64, 0u64, 0usize);
    let mut body = Vec::with_capacity(args.batch_rows * 400);
    let mut done = HashSet::new();
    while done.len() < ends.len() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not at the end after 10 minutes"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        match msg.payload().map(|p| (p, MessageRef::decode(p))) {
            // One event per message: the message is the row.
            Some((p, Ok(MessageRef::Event(_)))) => {
                body.extend_from_slice(p);
                body.push(b'\n');
                rows += 1;
            }
            // One beacon per message: a row per event, as the per-event format would carry.
            Some((p, Ok(MessageRef::Beacon(_)))) => {
                for e in qoe_schemas::message::decode_events(p)? {
                    body.extend_from_slice(&e.encode());
                    body.push(b'\n');
                    rows += 1;
                }
            }
            _ => bad += 1,
        }
        if rows >= args.batch_rows {
            insert(std::mem::take(&mut body))?;
            inserted += rows as u64;
            rows = 0;
        }
        if ends
            .iter()
            .any(|(p, end)| *p == msg.partition() && msg.offset() + 1 >= *end)
        {
            done.insert(msg.partition());
        }
    }
    if rows > 0 {
        insert(body)?;
        inserted += rows as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw inserter: {inserted} events inserted ({bad} undecodable) of {total} messages in {secs:.2} s = {:.0} events/s",
        inserted as f64 / secs
    );
    Ok(())
}
