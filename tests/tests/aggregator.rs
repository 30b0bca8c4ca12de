//! The aggregator against the real broker and ClickHouse: every metric of every window and
//! slice equals an independent computation of the spec's definitions, at the 10 s, 1 min and
//! 1 h grains; two instances add up to one; kill -9 at random moments changes nothing.

use qoe_tests::truth::{expected, generate};
use qoe_tests::{
    assert_windows_equal, clickhouse_query, create_topic, publish, spawn_aggregator, unique,
    wait_caught_up,
};
use rand::Rng;
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

#[tokio::test]
async fn two_instances_add_up_to_one() {
    let topic = unique("test.agg.two");
    let db = unique("qoe_test_two");
    create_topic(&topic, 6).await.unwrap();
    let group = unique("g");
    let _a = spawn_aggregator(&topic, &db, &group, &[]);
    let _b = spawn_aggregator(&topic, &db, &group, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = generate(2, 400, T0);
    let partitions = publish(&topic, &events).await;
    wait_published(&db, &topic, &partitions, 120).await;
    check_against_truth(&db, &partitions).await;
    let writers = clickhouse_query(&db, "SELECT count(DISTINCT partition) FROM qoe_checkpoints")
        .await
        .unwrap();
    assert!(writers[0][0].parse::<u32>().unwrap() >= 4);
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
    let mut rng = rand::rng();
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &["--flush-interval-ms", "100"]);
    // Publish in waves while killing the aggregator at random moments.
    let chunks: Vec<Vec<qoe_schemas::QoeEvent>> = events
        .chunks(events.len() / 6 + 1)
        .map(|c| c.to_vec())
        .collect();
    let mut partitions: BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)> = BTreeMap::new();
    let mut kills = 0;
    for chunk in chunks {
        for (p, (evs, next)) in publish(&topic, &chunk).await {
            let entry = partitions.entry(p).or_default();
            entry.0.extend(evs);
            entry.1 = next;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        agg.kill9();
        kills += 1;
        agg = spawn_aggregator(&topic, &db, &unique("g"), &["--flush-interval-ms", "100"]);
    }
    assert!(kills >= 5);
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
    let mut again = spawn_aggregator(&topic, &db, &unique("g"), &["--reset-stale-checkpoints"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
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
