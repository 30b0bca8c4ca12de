//! The collector under a flood and under connection exhaustion, against the real broker. Alone
//! in its test binary (cargo runs test binaries one after another), so latency figures are not
//! disturbed by other tests; the scenarios run one after another for the same reason.

use qoe_telemetry::process::now_ms;
use qoe_tests::{create_topic, rss_kib, spawn_collector, unique};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn beacon(view: &str) -> Vec<u8> {
    let t = now_ms();
    serde_json::to_vec(&json!({
        "sent_at": t,
        "view": {"view_id": view, "stream_id": "ch-1", "stream_type": "live", "cdn": "cdn-a",
                 "platform": "web", "player": "test", "protocol": "hls", "region": "eu-west"},
        "events": [{"seq": 0, "type": "view_start", "ts": t - 100}]
    }))
    .unwrap()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Latency samples of a well-behaved client, split by whether the flood was on when each was
/// taken, and the statuses it got that were not 204.
#[derive(Default)]
struct SteadyClient {
    unloaded: Vec<Duration>,
    loaded: Vec<Duration>,
    refused: Vec<u16>,
}

/// How the flood comparison is paced: the flood is switched on and off in alternating phases
/// while the well-behaved client keeps posting, so both conditions see the same stretch of
/// machine noise (a before/after split compared two different minutes of a shared machine),
/// and each condition gets 240 samples, so its p99 is not just its slowest request.
const PHASES: u32 = 12;
const PHASE: Duration = Duration::from_secs(2);
const STEADY_RATE: u32 = 20;

async fn flood_scenario() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    use std::sync::Arc;

    let topic = unique("test.collector.flood");
    create_topic(&topic, 2).await.unwrap();
    let (service, base, _) = spawn_collector(
        &topic,
        &[
            "--trusted-proxies",
            "127.0.0.0/8",
            "--rate-per-ip",
            "20",
            "--rate-burst-factor",
            "1",
            "--rate-per-view",
            "0",
        ],
    )
    .await;

    // The flood: one address at 10x its limit (200 requests/s against 20/s) on 8 connections,
    // on its own thread and runtime so that its client work does not queue behind, or in front
    // of, the measured client's tasks.
    let flooding = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (sent, limited) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let flood_thread = {
        let (base, flooding, done) = (base.clone(), flooding.clone(), done.clone());
        let (sent, limited) = (sent.clone(), limited.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut workers = Vec::new();
                for worker in 0..8 {
                    let (base, flooding, done) = (base.clone(), flooding.clone(), done.clone());
                    let (sent, limited) = (sent.clone(), limited.clone());
                    workers.push(tokio::spawn(async move {
                        let http = reqwest::Client::new();
                        let mut tick = tokio::time::interval(Duration::from_millis(40));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        let mut n = 0u32;
                        while !done.load(Relaxed) {
                            tick.tick().await;
                            if !flooding.load(Relaxed) {
                                continue;
                            }
                            let r = http
                                .post(format!("{base}/v1/beacons"))
                                .header("x-forwarded-for", "203.0.113.66")
                                .body(beacon(&format!("flood-{worker}-{n}")))
                                .send()
                                .await
                                .unwrap();
                            n += 1;
                            sent.fetch_add(1, Relaxed);
                            limited.fetch_add(u32::from(r.status() == 429), Relaxed);
                        }
                    }));
                }
                for w in workers {
                    w.await.unwrap();
                }
            })
        })
    };

    let http = reqwest::Client::new();
    let mut steady = SteadyClient::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / STEADY_RATE);
    let per_phase = STEADY_RATE * PHASE.as_secs() as u32;
    for phase in 0..PHASES {
        let loaded = phase % 2 == 1;
        flooding.store(loaded, Relaxed);
        for i in 0..per_phase {
            tick.tick().await;
            let started = Instant::now();
            let r = http
                .post(format!("{base}/v1/beacons"))
                .header("x-forwarded-for", "198.51.100.1")
                .body(beacon(&format!("steady-{phase}-{i}")))
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            // The first request of a phase can still overlap the other condition's traffic.
            if i > 0 {
                if loaded {
                    steady.loaded.push(took);
                } else {
                    steady.unloaded.push(took);
                }
            }
            if r.status() != 204 {
                steady.refused.push(r.status().as_u16());
            }
        }
    }
    done.store(true, Relaxed);
    flood_thread.join().unwrap();

    let (sent, limited) = (sent.load(Relaxed), limited.load(Relaxed));
    assert!(sent >= 600, "the flood sent only {sent} requests");
    assert!(
        limited * 10 >= sent * 8,
        "the flood got {limited} of {sent} refused"
    );
    assert!(
        steady.refused.is_empty(),
        "the well-behaved client was refused: {:?}",
        steady.refused
    );
    let (before, during) = (p99(steady.unloaded), p99(steady.loaded));
    // Twice the unloaded p99, with a 5 ms floor: below it, scheduling noise on a shared machine
    // is larger than anything the flood could cause.
    let bound = 2 * before.max(Duration::from_millis(5));
    eprintln!("well-behaved client p99: {before:?} without the flood, {during:?} during it");
    assert!(
        during <= bound,
        "p99 {during:?} during the flood vs {before:?} without it"
    );
    drop(service);
}

async fn connection_exhaustion_scenario() {
    let topic = unique("test.collector.conns");
    create_topic(&topic, 1).await.unwrap();
    let (service, base, admin) = spawn_collector(
        &topic,
        &[
            "--max-connections",
            "64",
            "--header-read-timeout-ms",
            "1500",
            "--request-timeout-ms",
            "3000",
            "--max-in-flight-bytes",
            "2000",
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
        ],
    )
    .await;
    let pid = service.child.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(
        http.post(format!("{base}/v1/beacons"))
            .body(beacon("before"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let rss_before = rss_kib(pid);

    // 100 idle connections and 100 that send a head and then trickle nothing of their body:
    // three times the cap.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for i in 0..200 {
        let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        if i % 2 == 1 {
            let head = format!(
                "POST /v1/beacons HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\n\r\n{{"
            );
            let _ = s.write_all(head.as_bytes()).await;
        }
        held.push(s);
    }
    // Liveness and readiness stay up on the admin listener.
    for path in ["healthz", "readyz"] {
        let r = http.get(format!("{admin}/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "/{path} under connection exhaustion");
    }
    // A normal client is told to come back (503 + Retry-After) or served; once the header and
    // request timeouts cut the hoarded connections, it is served.
    let started = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let r = http
            .post(format!("{base}/v1/beacons"))
            .body(beacon(&format!("during-{}", statuses.len())))
            .send()
            .await;
        let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        statuses.push(status);
        if status == 204 {
            break;
        }
        if let Ok(r) = &r {
            assert_eq!(status, 503, "over the cap: 503, not {status}");
            assert!(r.headers().get("retry-after").is_some());
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a normal client was not served within 8 s: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(held);

    // A body bigger than the in-flight byte budget (2,000 bytes here) is shed with 503, not
    // held: the budget bounds what requests waiting for Kafka keep in memory.
    let big = serde_json::to_vec(&json!({
        "sent_at": now_ms(),
        "view": {"view_id": "big", "stream_id": "x".repeat(100), "stream_type": "live",
                 "cdn": "c", "platform": "p"},
        "events": (0..40).map(|i| json!({"seq": i, "type": "heartbeat", "ts": now_ms() - 100,
                                         "playing_ms": 1000})).collect::<Vec<_>>()
    }))
    .unwrap();
    assert!(big.len() > 2000);
    let r = http
        .post(format!("{base}/v1/beacons"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let metrics = qoe_tests::metrics_text(&admin).await;
    assert!(metrics.contains("qoe_collector_connections_refused_total"));
    assert!(metrics.contains("qoe_collector_overloaded_total{kind=\"body_bytes\"}"));
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_connection_exhaustion() {
    flood_scenario().await;
    connection_exhaustion_scenario().await;
}
