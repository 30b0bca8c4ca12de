//! Kafka down: the collector answers 503 with Retry-After within its delivery timeout, stays
//! up, and recovers by itself when the broker is back. Nothing acknowledged is missing.
//!
//! These tests stop or kill a broker of their own (`PrivateServer`), so the suites that run
//! beside them keep theirs; they live alone in this test binary, whose environment names that
//! broker. The local broker keeps data in memory, so the outage test checks against the topic
//! only what was acknowledged after the restart. The crash test needs a broker that keeps what
//! it acknowledged across a SIGKILL; none that builds here does yet (README, "Durability"), so
//! it is ignored by default: `QOE_KAFKA_STORAGE=sqlite cargo test -p qoe-tests --test
//! collector_broker_outage -- --ignored` runs it alone.

use qoe_tests::{
    clickhouse_query, create_topic, free_port, kafka_brokers, partition_ends, read_topic,
    spawn_aggregator, spawn_collector, unique, wait_caught_up, wait_http_ok, Outage, PrivateServer,
    Service,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qoe_telemetry::process::now_ms;

#[tokio::test]
async fn broker_outage_gives_503_then_recovers() {
    let _broker = PrivateServer::start("kafka");
    let topic = unique("test.outage");
    create_topic(&topic, 2).await.unwrap();
    let port = free_port();
    let admin_port = free_port();
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin_port}"),
        "--kafka-brokers",
        &kafka_brokers(),
        "--topic",
        &topic,
        "--kafka-delivery-timeout-ms",
        "2000",
        "--rate-per-ip",
        "0",
        "--rate-events-per-ip",
        "0",
        "--rate-per-view",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut collector = Service::spawn("collector", &args, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(20)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let post = |i: u32| {
        let body = json!({
            "sent_at": now_ms(),
            "view": {"view_id": format!("outage-{i}"), "stream_id": "s", "stream_type": "live",
                     "cdn": "c", "platform": "web"},
            "events": [{"seq": 0, "type": "view_start", "ts": now_ms()}]
        });
        http.post(format!("{base}/v1/beacons")).json(&body).send()
    };

    assert_eq!(post(0).await.unwrap().status(), 204);

    let outage = Outage::begin("kafka");
    let mut saw_503 = false;
    for i in 1..6 {
        let started = Instant::now();
        let r = post(i).await.unwrap();
        let took = started.elapsed();
        if r.status() == 503 {
            saw_503 = true;
            let retry: Option<u64> = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            assert!(
                retry.is_some_and(|s| (1..=3).contains(&s)),
                "503 needs a Retry-After of 1-3 s (jittered), got {retry:?}"
            );
            assert!(took < Duration::from_secs(5), "503 took {took:?}");
        } else {
            panic!("broker down but got {}", r.status());
        }
    }
    assert!(saw_503);
    assert!(
        collector.is_running(),
        "collector died while Kafka was down"
    );
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    outage.end();
    create_topic(&topic, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut acked_after_restart = BTreeSet::new();
    let mut i = 100;
    while acked_after_restart.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "collector did not recover after the broker came back"
        );
        let r = post(i).await.unwrap();
        if r.status() == 204 {
            acked_after_restart.insert(format!("outage-{i}"));
        } else {
            assert_eq!(r.status(), 503, "only 503 while recovering");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        i += 1;
    }
    assert!(collector.is_running());
    // Ready again: the topic answers and the (possibly replaced) producer has its id.
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "/readyz still {status} after delivery recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_kafka: BTreeSet<String> = read_topic(&topic, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    let missing: Vec<_> = acked_after_restart.difference(&in_kafka).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?}"
    );
    assert!(
        collector.terminate(Duration::from_secs(30)),
        "graceful shutdown failed"
    );
}

/// Beacons of one view each (`view_start`, then an exit before start), posted by concurrent clients that
/// retry a 503 (after its Retry-After) or a refused connection until the beacon is
/// acknowledged, as the web SDK does. The broker is killed with SIGKILL once some beacons are
/// acknowledged and started again once some were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker that keeps acknowledged messages across SIGKILL (README, Durability)"]
async fn broker_killed_under_load_loses_nothing_acknowledged() {
    let _broker = PrivateServer::start("kafka");
    const CLIENTS: usize = 8;
    const BEACONS_PER_CLIENT: usize = 60;
    let topic = unique("test.crash");
    let db = unique("qoe_test_crash");
    create_topic(&topic, 3).await.unwrap();
    let _aggregator = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let (mut collector, base, _admin) = spawn_collector(
        &topic,
        &[
            "--kafka-delivery-timeout-ms",
            "2000",
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
            "--rate-per-view",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // (view id, acknowledged at) of every acknowledged beacon, and the 503s seen.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let refused: Arc<Mutex<u64>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, acked, refused) =
            (http.clone(), base.clone(), acked.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..BEACONS_PER_CLIENT {
                let view = format!("crash-{c}-{i}");
                let t = now_ms();
                let body = json!({
                    "sent_at": t,
                    "view": {"view_id": view, "stream_id": "s", "stream_type": "live",
                             "cdn": "c", "platform": "web"},
                    "events": [{"seq": 0, "type": "view_start", "ts": t},
                               {"seq": 1, "type": "view_end", "ts": t + 1,
                                "reason": "exit", "started": false}]
                });
                loop {
                    match http
                        .post(format!("{base}/v1/beacons"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 204 => {
                            acked.lock().unwrap().push((view.clone(), Instant::now()));
                            break;
                        }
                        Ok(r) => {
                            assert_eq!(r.status(), 503, "only 503 while the broker is down");
                            *refused.lock().unwrap() += 1;
                            let wait: u64 = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(1);
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                        Err(e) => panic!("the collector must answer while the broker is down: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let wait_until = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let a = acked.clone();
    wait_until(
        "100 beacons acknowledged",
        Box::new(move || a.lock().unwrap().len() >= 100),
    )
    .await;
    let crash = Outage::kafka_crash();
    let killed_at = Instant::now();
    let r = refused.clone();
    wait_until(
        "a beacon refused with 503 while the broker is dead",
        Box::new(move || *r.lock().unwrap() > 0),
    )
    .await;
    crash.end();
    for client in clients {
        client.await.expect("a client failed");
    }
    assert!(collector.is_running(), "the collector died with the broker");
    let acked = acked.lock().unwrap().clone();
    let before_kill: BTreeSet<&str> = acked
        .iter()
        .filter(|(_, at)| *at < killed_at)
        .map(|(v, _)| v.as_str())
        .collect();
    let total = CLIENTS * BEACONS_PER_CLIENT;
    assert_eq!(acked.len(), total, "every beacon acknowledged in the end");
    assert!(before_kill.len() >= 100);

    let ends = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || partition_ends(&topic)
    })
    .await
    .unwrap();
    wait_caught_up(&db, &topic, &ends, Duration::from_secs(120)).await;
    let counted = clickhouse_query(&db, "SELECT view_id FROM qoe_views")
        .await
        .unwrap();
    let views: BTreeSet<&str> = counted.iter().map(|r| r[0].as_str()).collect();
    let lost: Vec<_> = before_kill.iter().filter(|v| !views.contains(*v)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the kill, not counted: {lost:?}"
    );
    assert_eq!(views.len(), total, "every beacon's view counted");
    let windows = clickhouse_query(&db, "SELECT sum(attempts), sum(events) FROM qoe_window_10s")
        .await
        .unwrap();
    assert_eq!(
        windows[0],
        vec![total.to_string(), (2 * total).to_string()],
        "attempts and events counted exactly once (re-sent beacons are duplicates)"
    );
    eprintln!(
        "{} beacons, {} acknowledged before the kill, {} refused with 503 during the crash",
        total,
        before_kill.len(),
        refused.lock().unwrap()
    );
    assert!(collector.terminate(Duration::from_secs(30)));
}
