//! ClickHouse stopped mid-run and started again: the aggregator stays up, pauses with bounded
//! memory, retries, catches up, and the totals are exactly those of an uninterrupted run. And
//! a SIGTERM while the aggregator waits for ClickHouse to open a partition ends it at once.
//!
//! Stops a ClickHouse server of its own (`PrivateServer`), so the suites that run beside it
//! keep theirs; it lives alone in its test binary, whose environment names that server.

use qoe_tests::truth::{expected, generate, rollup};
use qoe_tests::{
    assert_rows_eq, clickhouse_url, create_topic, free_port, kafka_brokers, metric_sum, publish,
    rss_kib, spawn_aggregator, unique, wait_caught_up, wait_http_ok, window_rows, Outage,
    PrivateServer, Service,
};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn clickhouse_outage_loses_nothing() {
    let _clickhouse = PrivateServer::start("clickhouse");
    let topic = unique("test.agg.chdown");
    let db = unique("qoe_test_chdown");
    create_topic(&topic, 4).await.unwrap();
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let events = generate(4, 800, 1_763_721_600_000);
    let (first, second) = events.split_at(events.len() / 2);

    let mut partitions: BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)> =
        publish(&topic, first).await;
    let next: BTreeMap<i32, i64> = partitions.iter().map(|(p, (_, n))| (*p, *n)).collect();
    wait_caught_up(&db, &topic, &next, Duration::from_secs(120)).await;

    let outage = Outage::begin("clickhouse");
    for (p, (evs, n)) in publish(&topic, second).await {
        let entry = partitions.entry(p).or_default();
        entry.0.extend(evs);
        entry.1 = n;
    }
    let pid = agg.child.id();
    let mut peak = 0;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            agg.is_running(),
            "aggregator died while ClickHouse was down"
        );
        peak = peak.max(rss_kib(pid));
    }
    assert!(
        peak < 300 * 1024,
        "RSS reached {peak} KiB while ClickHouse was down"
    );
    outage.end();

    let next: BTreeMap<i32, i64> = partitions.iter().map(|(p, (_, n))| (*p, *n)).collect();
    wait_caught_up(&db, &topic, &next, Duration::from_secs(120)).await;
    assert!(agg.is_running());
    let ordered: BTreeMap<i32, Vec<qoe_schemas::QoeEvent>> =
        partitions.into_iter().map(|(p, (e, _))| (p, e)).collect();
    let (rows, _) = expected(&ordered);
    assert_rows_eq(
        "10 s windows",
        &rows,
        &window_rows(&db, "qoe_window_10s").await,
    );
    assert_rows_eq(
        "1 h windows",
        &rollup(&rows, 3600),
        &window_rows(&db, "qoe_window_1h").await,
    );
    assert!(
        agg.terminate(Duration::from_secs(30)),
        "graceful shutdown failed"
    );

    sigterm_while_a_partition_waits_for_clickhouse().await;
}

/// Partitions assigned while ClickHouse is down cannot be opened (their checkpoints are
/// unreadable), and the aggregator retries; a SIGTERM then ends it within its grace period.
/// The topic appears only once ClickHouse is down, so the assignment surely comes during the
/// outage (`--kafka-option` makes the aggregator look for it every half second).
async fn sigterm_while_a_partition_waits_for_clickhouse() {
    let topic = unique("test.agg.sigterm");
    let port = free_port();
    let args: Vec<String> = [
        "run",
        "--kafka-brokers",
        &kafka_brokers(),
        "--topic",
        &topic,
        "--group",
        &unique("g"),
        "--clickhouse-url",
        &clickhouse_url(),
        "--clickhouse-database",
        &unique("qoe_test_sigterm"),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kafka-option",
        "topic.metadata.refresh.interval.ms=500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agg = Service::spawn("aggregator", &args, &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(60)).await;
    let outage = Outage::begin("clickhouse");
    create_topic(&topic, 2).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if metric_sum(&base, "qoe_aggregator_partition_open_retries_total").await > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the partitions of the new topic were never assigned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let asked = std::time::Instant::now();
    assert!(
        agg.terminate(Duration::from_secs(20)),
        "no clean exit within 20 s of SIGTERM while opening a partition"
    );
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    outage.end();
}
