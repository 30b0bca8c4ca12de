//! ClickHouse stopped mid-run and started again: the aggregator stays up, pauses with bounded
//! memory, retries, catches up, and the totals are exactly those of an uninterrupted run.
//!
//! Stops a ClickHouse server of its own (`PrivateServer`), so the suites that run beside it
//! keep theirs; it lives alone in its test binary, whose environment names that server.

use qoe_tests::truth::{expected, generate, rollup};
use qoe_tests::{
    assert_rows_eq, create_topic, publish, rss_kib, spawn_aggregator, unique, wait_caught_up,
    window_rows, Outage, PrivateServer,
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
}
