//! The aggregator against the real broker and ClickHouse: every metric of every window and
//! slice equals an independent computation of the spec's definitions, at the 10 s, 1 min and
//! 1 h grains; two instances in one group each own and write partitions and add up to one; a
//! successor in the same group takes a killed instance's partitions over; kill -9 at random
//! moments changes nothing.

use qoe_tests::truth::{expected, generate};
use qoe_tests::{
    assert_windows_equal, clickhouse_query, create_topic, kill9_after_a_batch, metric_sum, publish,
    spawn_aggregator, spawn_aggregator_at, unique, wait_caught_up, wait_metric,
};
use std::collections::BTreeMap;
use std::time::Duration;

const T0: i64 = 1_763_721_600_000; // a fixed past instant: event time, not wall time, drives windows

async fn check_against_truth(
    database: &str,
    partitions: &BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)>,
) {
    let ordered: BTreeMap<i32, Vec<qoe_schemas::QoeEvent>> = partitions
        .iter()
        .map(|(p, (e, _))| (*p, e.clone()))
        .collect();
    let (rows, views) = expected(&ordered);
    let late: u64 = rows.values().map(|r| r.get("late_events")).sum();
    let dups: u64 = rows.values().map(|r| r.get("duplicate_events")).sum();
    assert!(
        late > 10 && dups > 10,
        "the data set must exercise late ({late}) and duplicate ({dups}) events"
    );
    let distinct_views = ordered
        .values()
        .flatten()
        .map(|e| e.view_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_windows_equal(database, &rows, &views, distinct_views).await;
}

/// Waits until the aggregator's checkpoints cover everything `publish` reported.
async fn wait_published(
    db: &str,
    topic: &str,
    partitions: &BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)>,
    timeout_secs: u64,
) {
    let next: BTreeMap<i32, i64> = partitions.iter().map(|(p, (_, n))| (*p, *n)).collect();
    wait_caught_up(db, topic, &next, Duration::from_secs(timeout_secs)).await;
}

#[tokio::test]
async fn one_instance_matches_ground_truth() {
    let topic = unique("test.agg.truth");
    let db = unique("qoe_test_truth");
    create_topic(&topic, 4).await.unwrap();
    let events = generate(1, 400, T0);
    let partitions = publish(&topic, &events).await;
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    wait_published(&db, &topic, &partitions, 120).await;
    check_against_truth(&db, &partitions).await;
}

/// Waits until the instances at `bases` together own all `partitions` partitions and each
/// owns some; returns what each owns.
async fn wait_assignment(bases: &[&str], partitions: f64, within: Duration) -> Vec<f64> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut owned = Vec::new();
        for base in bases {
            owned.push(metric_sum(base, "qoe_aggregator_assigned_partitions").await);
        }
        if owned.iter().sum::<f64>() == partitions && owned.iter().all(|n| *n > 0.0) {
            return owned;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partitions owned per instance {owned:?} after {within:?}: want all {partitions}, some each"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_instances_in_one_group_each_write_and_add_up_to_one() {
    let topic = unique("test.agg.two");
    let db = unique("qoe_test_two");
    create_topic(&topic, 6).await.unwrap();
    let group = unique("g");
    let (_a, a) = spawn_aggregator_at(&topic, &db, &group, &[]);
    let (_b, b) = spawn_aggregator_at(&topic, &db, &group, &[]);
    let owned = wait_assignment(&[&a, &b], 6.0, Duration::from_secs(60)).await;
    let events = generate(2, 400, T0);
    let partitions = publish(&topic, &events).await;
    wait_published(&db, &topic, &partitions, 120).await;
    check_against_truth(&db, &partitions).await;
    for (name, base) in [("a", &a), ("b", &b)] {
        let batches = metric_sum(base, "qoe_aggregator_batches_written_total").await;
        assert!(
            batches > 0.0,
            "instance {name} wrote no batch (partitions owned: {owned:?})"
        );
    }
}

/// An instance killed with SIGKILL and a successor started in the same consumer group: the
/// successor (with the survivor) takes the dead one's partitions over once the broker notices
/// the missed heartbeats, within the session timeout, and the totals stay exact.
///
/// Ignored by default: the local broker (tansu 0.6.0) never evicts a SIGKILLed member, so the
/// partitions the range assignor gives it stay unconsumed (in most runs, one of four); run it
/// against a broker that enforces session timeouts with `--ignored`.
#[tokio::test]
#[ignore = "the local broker never evicts a SIGKILLed group member (README, Durability)"]
async fn successor_in_the_same_group_takes_over_a_killed_instance() {
    let topic = unique("test.agg.takeover");
    let db = unique("qoe_test_takeover");
    create_topic(&topic, 4).await.unwrap();
    let group = unique("g");
    let events = generate(5, 500, T0);
    let (first, second) = events.split_at(events.len() / 2);
    let (mut a, a_base) = spawn_aggregator_at(&topic, &db, &group, &[]);
    let (_b, b_base) = spawn_aggregator_at(&topic, &db, &group, &[]);
    wait_assignment(&[&a_base, &b_base], 4.0, Duration::from_secs(60)).await;
    let mut partitions = publish(&topic, first).await;
    wait_published(&db, &topic, &partitions, 120).await;
    a.kill9();
    let killed = std::time::Instant::now();
    let (_c, c_base) = spawn_aggregator_at(&topic, &db, &group, &[]);
    // The aggregator's session timeout is 10 s; the group rebalances after it, then each
    // survivor opens its new partitions from their checkpoints.
    wait_assignment(&[&b_base, &c_base], 4.0, Duration::from_secs(40)).await;
    eprintln!(
        "partitions taken over {:?} after the kill",
        killed.elapsed()
    );
    for (p, (evs, next)) in publish(&topic, second).await {
        let entry = partitions.entry(p).or_default();
        entry.0.extend(evs);
        entry.1 = next;
    }
    wait_published(&db, &topic, &partitions, 120).await;
    check_against_truth(&db, &partitions).await;
}

#[tokio::test]
async fn kill_dash_nine_changes_nothing() {
    let topic = unique("test.agg.kill");
    let db = unique("qoe_test_kill");
    create_topic(&topic, 4).await.unwrap();
    // Each restart joins under a fresh group id: the local broker (tansu 0.6) does not evict a
    // SIGKILLed member when its session times out, so a restarted member of the same group can
    // wait forever for the dead one's partitions. Progress lives in ClickHouse checkpoints, not
    // in the group, so the recovery path under test is the same.
    let events = generate(3, 600, T0);
    let flush = ["--flush-interval-ms", "100"];
    let (mut agg, mut base) = spawn_aggregator_at(&topic, &db, &unique("g"), &flush);
    // Publish in waves, killing each instance at a random moment after it has written a batch
    // of its wave (so every kill lands on an instance with work done and state to resume).
    let chunks: Vec<Vec<qoe_schemas::QoeEvent>> = events
        .chunks(events.len() / 6 + 1)
        .map(|c| c.to_vec())
        .collect();
    let mut partitions: BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)> = BTreeMap::new();
    for chunk in chunks {
        for (p, (evs, next)) in publish(&topic, &chunk).await {
            let entry = partitions.entry(p).or_default();
            entry.0.extend(evs);
            entry.1 = next;
        }
        kill9_after_a_batch(&mut agg, &base).await;
        (agg, base) = spawn_aggregator_at(&topic, &db, &unique("g"), &flush);
    }
    wait_published(&db, &topic, &partitions, 180).await;
    check_against_truth(&db, &partitions).await;
}

/// Checkpoints beyond the end of their partitions come from an earlier incarnation of the
/// topic: resuming from them would silently skip messages. The aggregator refuses to start,
/// and with --reset-stale-checkpoints starts the topic over and gets every total right.
#[tokio::test]
async fn stale_checkpoints_are_refused_or_reset() {
    let topic = unique("test.agg.stale");
    let db = unique("qoe_test_stale");
    create_topic(&topic, 2).await.unwrap();
    let events = generate(4, 150, T0);
    let partitions = publish(&topic, &events).await;
    let ch = [
        "--clickhouse-url",
        &qoe_tests::clickhouse_url(),
        "--clickhouse-database",
        &db,
    ];
    let migrated = std::process::Command::new(qoe_tests::binary("aggregator"))
        .arg("migrate")
        .args(ch)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    clickhouse_query(
        &db,
        &format!(
            "INSERT INTO qoe_checkpoints (topic, partition, from_offset, next_offset, state_offset, \
             max_event_time, batch_id, written_at) VALUES ('{topic}', 0, 999000, 1000000, 999000, 0, 1, now())"
        ),
    )
    .await
    .unwrap();

    let mut refused = std::process::Command::new(qoe_tests::binary("aggregator"))
        .args([
            "run",
            "--kafka-brokers",
            &qoe_tests::kafka_brokers(),
            "--topic",
            &topic,
        ])
        .args([
            "--group",
            &unique("g"),
            "--listen",
            &format!("127.0.0.1:{}", qoe_tests::free_port()),
        ])
        .args(ch)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("the aggregator kept running on stale checkpoints");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("beyond the end") && stderr.contains("--reset-stale-checkpoints"),
        "the error says what is wrong and what to do: {stderr}"
    );

    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &["--reset-stale-checkpoints"]);
    wait_published(&db, &topic, &partitions, 120).await;
    let stale = clickhouse_query(
        &db,
        "SELECT count() FROM qoe_checkpoints WHERE next_offset = 1000000",
    )
    .await
    .unwrap();
    assert_eq!(stale[0][0], "0", "the stale checkpoint is gone");
    check_against_truth(&db, &partitions).await;

    // Checkpoints at the very end of an idle topic are not stale: a plain restart resumes
    // (with the flag it would otherwise start over and count everything twice).
    assert!(agg.terminate(Duration::from_secs(30)));
    let (mut again, base) =
        spawn_aggregator_at(&topic, &db, &unique("g"), &["--reset-stale-checkpoints"]);
    // Both partitions opened from their checkpoints: the stale check is behind it.
    wait_metric(
        &base,
        "qoe_aggregator_assigned_partitions",
        2.0,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        again.is_running(),
        "a restart on valid checkpoints keeps running"
    );
    check_against_truth(&db, &partitions).await;
}

/// A window length that does not divide a minute would roll windows up into the wrong minute:
/// the aggregator refuses it at start-up, with the reason, before touching Kafka or ClickHouse.
#[test]
fn window_lengths_that_do_not_divide_a_minute_are_refused() {
    let out = std::process::Command::new(qoe_tests::binary("aggregator"))
        .args([
            "run",
            "--window-secs",
            "45",
            "--kafka-brokers",
            "127.0.0.1:1",
        ])
        .output()
        .expect("aggregator binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must divide 60"), "{stderr}");
}
