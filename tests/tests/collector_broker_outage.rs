//! Kafka down: the collector answers 503 with Retry-After within its delivery timeout, stays
//! up, and recovers by itself when the broker is back. Nothing acknowledged is missing.
//!
//! This test stops and restarts a broker of its own (`PrivateServer`), so the suites that run
//! beside it keep theirs; it lives alone in its test binary, whose environment names that
//! broker. The local broker keeps data in memory, so only what was acknowledged after the
//! restart can be checked against the topic.

use qoe_tests::{
    create_topic, free_port, kafka_brokers, read_topic, unique, wait_http_ok, Outage,
    PrivateServer, Service,
};
use serde_json::json;
use std::collections::BTreeSet;
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
