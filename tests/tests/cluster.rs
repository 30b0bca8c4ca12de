//! The pipeline on a ClickHouse cluster (`scripts/cluster.sh`: ZooKeeper and 2 shards x 2
//! replicas of ClickHouse 18.16), read through the Distributed tables of `<database>_all`:
//! exact totals with two aggregator instances, with a replica killed (`kill -9`) and
//! ZooKeeper stopped mid-run, and with an aggregator killed while a replica of its shard is
//! down.
//!
//! The tests kill servers of the one shared cluster, so they run one at a time ([`SERIAL`]).

use qoe_schemas::QoeEvent;
use qoe_tests::truth::{expected, generate, rollup};
use qoe_tests::{
    active_views, assert_clickhouse_equals, assert_rows_eq, clickhouse_query_at, create_topic,
    heal_cluster, publish, rss_kib, simulate, spawn_aggregator, spawn_collector, sync_replicas,
    unique, use_cluster, wait_caught_up, window_rows, Outage, Service,
};
use std::collections::BTreeMap;
use std::time::Duration;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An aggregator writing to the local cluster.
fn cluster_aggregator(topic: &str, database: &str, group: &str) -> Service {
    spawn_aggregator(
        topic,
        database,
        group,
        &[
            "--clickhouse-cluster",
            "qoe",
            "--clickhouse-shards",
            &use_cluster().spec,
        ],
    )
}

/// `expression` (e.g. `count()`) over `table` per server, in the local database: proves where
/// the data went.
async fn per_server(database: &str, table: &str, expression: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for url in use_cluster().shards.iter().flatten() {
        let n = clickhouse_query_at(url, database, &format!("SELECT {expression} FROM {table}"))
            .await
            .map(|r| r[0][0].parse().unwrap_or(0))
            .unwrap_or(0);
        out.push(n);
    }
    out
}

/// Every window grain and the active views, read through the Distributed tables, equal the
/// truth of the published events, after every replica has caught up.
async fn assert_cluster_equals(database: &str, partitions: BTreeMap<i32, Vec<QoeEvent>>) {
    sync_replicas(database).await;
    let read = format!("{database}_all");
    let (rows, views) = expected(&partitions);
    assert_rows_eq(
        "10 s windows",
        &rows,
        &window_rows(&read, "qoe_window_10s").await,
    );
    assert_rows_eq(
        "1 min windows",
        &rollup(&rows, 60),
        &window_rows(&read, "qoe_window_1m").await,
    );
    assert_rows_eq(
        "1 h windows",
        &rollup(&rows, 3600),
        &window_rows(&read, "qoe_window_1h").await,
    );
    assert_rows_eq("active views", &views, &active_views(&read).await);
    // Each replica of a shard holds the same totals once it has caught up (not the same row
    // count: replicas merge their summing parts at their own pace).
    let per_server = per_server(
        database,
        "qoe_window_10s",
        "sum(events) + sum(duplicate_events)",
    )
    .await;
    assert_eq!(
        per_server[0], per_server[1],
        "shard 1 replicas agree: {per_server:?}"
    );
    assert_eq!(
        per_server[2], per_server[3],
        "shard 2 replicas agree: {per_server:?}"
    );
    assert!(
        per_server[0] > 0 && per_server[2] > 0,
        "both shards hold data: {per_server:?}"
    );
}

/// One test's topic (4 partitions) and database on the cluster, and what was published.
struct Run {
    topic: String,
    database: String,
    partitions: BTreeMap<i32, Vec<QoeEvent>>,
    next: BTreeMap<i32, i64>,
}

impl Run {
    async fn new(name: &str) -> Run {
        let topic = unique(&format!("test.cluster.{name}"));
        create_topic(&topic, 4).await.unwrap();
        Run {
            topic,
            database: unique(&format!("qoe_test_cluster_{name}")),
            partitions: BTreeMap::new(),
            next: BTreeMap::new(),
        }
    }

    /// An aggregator of its own consumer group.
    fn aggregator(&self) -> Service {
        cluster_aggregator(&self.topic, &self.database, &unique("g"))
    }

    async fn publish(&mut self, events: &[QoeEvent]) {
        for (p, (evs, n)) in publish(&self.topic, events).await {
            self.partitions.entry(p).or_default().extend(evs);
            self.next.insert(p, n);
        }
    }

    /// Until the checkpoints read through the Distributed tables reach every published offset.
    async fn wait_caught_up(&self, timeout: Duration) {
        let read = format!("{}_all", self.database);
        wait_caught_up(&read, &self.topic, &self.next, timeout).await;
    }

    async fn assert_exact(self) {
        assert_cluster_equals(&self.database, self.partitions).await;
    }
}

/// Two aggregator instances (one group) started at the same moment, so their migrations race
/// for the lock; the simulator's players through the collector; every grain, the active
/// views and one summary row per view equal the simulator's ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_on_the_cluster_equal_the_ground_truth() {
    let _serial = SERIAL.lock().await;
    heal_cluster();
    use_cluster();
    let topic = unique("test.cluster.e2e");
    let database = unique("qoe_test_cluster");
    create_topic(&topic, 4).await.unwrap();
    let (_collector, url, _) = spawn_collector(
        &topic,
        &[
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
            "--rate-per-view",
            "0",
        ],
    )
    .await;
    let group = unique("cluster");
    let _a = cluster_aggregator(&topic, &database, &group);
    let _b = cluster_aggregator(&topic, &database, &group);
    let (truth, _) = simulate(
        &url,
        &[
            "--seed",
            "17",
            "--viewers",
            "600",
            "--duration",
            "3m",
            "--speed",
            "15",
            "--ramp",
            "15s",
            "--duplicate-rate",
            "0.05",
            "--reorder-rate",
            "0.1",
            "--resend-rate",
            "0.03",
        ],
    )
    .await;
    let read = format!("{database}_all");
    assert_clickhouse_equals(&read, &topic, &truth).await;
    assert!(
        truth.acknowledged_events > 5_000,
        "a substantial run: {}",
        truth.acknowledged_events
    );
    // The partitions' checkpoints went to both shards, each to its own.
    let per_server = per_server(&database, "qoe_checkpoints", "count()").await;
    assert!(
        per_server[0] > 0 && per_server[2] > 0,
        "checkpoints on both shards: {per_server:?}"
    );
    let ledger = clickhouse_query_at(
        &use_cluster().shards[1][1],
        &database,
        "SELECT count(), uniqExact(version) FROM schema_migrations",
    )
    .await
    .unwrap();
    assert_eq!(
        ledger[0][0], ledger[0][1],
        "each migration recorded once, on every server"
    );
}

/// A replica killed with SIGKILL mid-run and started again later, then ZooKeeper stopped for a
/// few seconds: the aggregator fails over, pauses with bounded memory while ZooKeeper is
/// away, and the totals are exact; the killed replica catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_and_zookeeper_stopped_lose_nothing() {
    let _serial = SERIAL.lock().await;
    heal_cluster();
    use_cluster();
    let mut run = Run::new("down").await;
    let mut agg = run.aggregator();
    let events = generate(7, 1200, 1_763_721_600_000);
    let thirds: Vec<&[QoeEvent]> = events.chunks(events.len() / 3 + 1).collect();

    run.publish(thirds[0]).await;
    run.wait_caught_up(Duration::from_secs(120)).await;

    // Server 1 is the home replica of partition 0 (shard 1).
    let replica = Outage::cluster(1);
    run.publish(thirds[1]).await;
    run.wait_caught_up(Duration::from_secs(120)).await;
    assert!(agg.is_running(), "aggregator died with a replica down");

    let zookeeper = Outage::cluster(0);
    run.publish(thirds[2]).await;
    let pid = agg.child.id();
    let mut peak = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(agg.is_running(), "aggregator died while ZooKeeper was down");
        peak = peak.max(rss_kib(pid));
    }
    assert!(
        peak < 300 * 1024,
        "RSS reached {peak} KiB while ZooKeeper was down"
    );
    zookeeper.end();
    run.wait_caught_up(Duration::from_secs(180)).await;
    replica.end();

    run.assert_exact().await;
    assert!(
        agg.terminate(Duration::from_secs(30)),
        "graceful shutdown failed"
    );
}

/// An aggregator killed with SIGKILL mid-run while a replica of a shard it writes to is
/// down: its successor resumes from the other replica's checkpoints, and the totals are exact
/// once the replica is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_while_a_replica_is_down_is_exact_after_restart() {
    let _serial = SERIAL.lock().await;
    heal_cluster();
    use_cluster();
    let mut run = Run::new("agg").await;
    let mut agg = run.aggregator();
    let events = generate(11, 1200, 1_763_725_200_000);
    let (first, second) = events.split_at(events.len() / 2);
    run.publish(first).await;
    run.wait_caught_up(Duration::from_secs(120)).await;

    // Server 3 is the home replica of partition 1 (shard 2).
    let replica = Outage::cluster(3);
    let first_end = run.next.get(&1).copied().unwrap_or(0);
    run.publish(second).await;
    // Killed once partition 1's checkpoint on server 4 (the other replica of shard 2) is past
    // the first half: it wrote through the failover, and its successor resumes from there.
    let server4 = &use_cluster().shards[1][1];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let next = clickhouse_query_at(
            server4,
            &run.database,
            &format!(
                "SELECT max(next_offset) FROM qoe_checkpoints WHERE topic = '{}' AND partition = 1",
                run.topic
            ),
        )
        .await
        .ok()
        .and_then(|r| r.first()?.first()?.parse::<i64>().ok())
        .unwrap_or(0);
        if next > first_end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partition 1 wrote nothing past offset {first_end} through server 4 in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agg.kill9();
    // A new group, as the other kill -9 tests do: in the old one the dead member keeps its
    // partitions until the broker expires its session. The restart resumes from the
    // checkpoints in ClickHouse, not from the group.
    let mut successor = run.aggregator();
    run.wait_caught_up(Duration::from_secs(180)).await;
    replica.end();

    run.assert_exact().await;
    assert!(
        successor.terminate(Duration::from_secs(30)),
        "graceful shutdown failed"
    );
}
