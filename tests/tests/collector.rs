//! The collector against the real broker: what lands in Kafka, and every row of the beacon
//! protocol's status table.

use flate2::write::GzEncoder;
use qoe_schemas::{EventType, BEACON_MESSAGE_VERSION};
use qoe_tests::{create_topic, events_of, read_topic, rss_kib, spawn_collector, unique, Service};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use qoe_telemetry::process::now_ms;

struct Collector {
    service: Service,
    base: String,
    /// The admin listener: /readyz, /metrics.
    admin: String,
}

async fn collector(topic: &str, extra: &[&str]) -> Collector {
    let (service, base, admin) = spawn_collector(topic, extra).await;
    Collector {
        service,
        base,
        admin,
    }
}

fn beacon(
    view_id: &str,
    sent_at: i64,
    first_seq: u32,
    n: u32,
    bad_index: Option<u32>,
) -> serde_json::Value {
    let events: Vec<_> = (0..n)
        .map(|i| {
            let seq = first_seq + i;
            if Some(i) == bad_index {
                json!({"seq": seq, "type": "warp_drive", "ts": sent_at - 1000})
            } else if seq == 0 {
                json!({"seq": seq, "type": "view_start", "ts": sent_at - 1000})
            } else {
                json!({"seq": seq, "type": "heartbeat", "ts": sent_at - 1000 + i64::from(i),
                       "playing_ms": 1000, "stall_ms": 0, "bitrate_kbps": 2500})
            }
        })
        .collect();
    json!({
        "sent_at": sent_at,
        "view": {"view_id": view_id, "stream_id": "ch-1", "stream_type": "live", "cdn": "cdn-a",
                 "platform": "web", "player": "test", "protocol": "hls", "region": "eu-west",
                 "future_field": {"ignored": true}},
        "events": events
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn accepted_events_land_in_kafka_exactly() {
    let topic = unique("test.collector");
    create_topic(&topic, 6).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--rate-per-view",
            "0",
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // Client clock 10 s behind the server: event_time must be shifted forward by the skew.
    let skew = 10_000;

    let mut tasks = Vec::new();
    for v in 0..24u32 {
        let http = http.clone();
        let url = format!("{}/v1/beacons", c.base);
        tasks.push(tokio::spawn(async move {
            let view_id = format!("view-{v}");
            let mut accepted = Vec::new();
            for b in 0..3u32 {
                let bad = (v % 4 == 0 && b == 1).then_some(2);
                let body = beacon(&view_id, now_ms() - skew, b * 5, 5, bad);
                let bytes = serde_json::to_vec(&body).unwrap();
                let req = match (v + b) % 3 {
                    0 => http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(bytes),
                    1 => http
                        .post(&url)
                        .header("content-type", "text/plain;charset=UTF-8")
                        .body(bytes),
                    _ => http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(gzip(&bytes)),
                };
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                if bad.is_some() {
                    assert_eq!(status, 200);
                    let body: serde_json::Value = resp.json().await.unwrap();
                    assert_eq!(body["accepted"], 4);
                    assert_eq!(body["rejected"][0]["index"], 2);
                } else {
                    assert_eq!(status, 204);
                }
                for i in 0..5u32 {
                    if Some(i) != bad {
                        accepted.push((view_id.clone(), b * 5 + i));
                    }
                }
            }
            accepted
        }));
    }
    let mut expected = BTreeSet::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }

    let messages = read_topic(&topic, Duration::from_secs(3)).await;
    let mut seen = BTreeSet::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut last_seq: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_offset = messages.clone();
    by_offset.sort_by_key(|m| (m.partition, m.offset));
    let schema = BEACON_MESSAGE_VERSION.to_string();
    for (m, e) in by_offset
        .iter()
        .flat_map(|m| m.events().into_iter().map(move |e| (m, e)))
    {
        assert_eq!(m.key, e.view_id, "message key is the view id");
        // The default format: one message per beacon.
        assert_eq!(m.header("qoe-schema"), Some(schema.as_str()));
        assert!(m.header("traceparent").is_some(), "traceparent header");
        assert_eq!(e.region, "eu-west");
        assert_eq!(e.cdn, "cdn-a");
        assert_eq!(e.stream_id, "ch-1");
        assert!(
            !String::from_utf8_lossy(&m.payload).contains("127.0.0.1"),
            "client IP leaked"
        );
        // ts = sent_at - 1000 + i, so event_time = received_at - 1000 + i.
        let i = i64::from(e.seq % 5);
        assert_eq!(e.event_time, e.received_at - 1000 + i, "skew correction");
        assert_eq!(
            e.kind,
            if e.seq == 0 {
                EventType::ViewStart
            } else {
                EventType::Heartbeat
            }
        );
        let p = *partition_of.entry(e.view_id.clone()).or_insert(m.partition);
        assert_eq!(p, m.partition, "all events of a view in one partition");
        if let Some(prev) = last_seq.insert(e.view_id.clone(), e.seq) {
            assert!(
                e.seq > prev,
                "events of a view in order within its partition"
            );
        }
        assert!(seen.insert((e.view_id.clone(), e.seq)), "duplicate event");
    }
    assert_eq!(seen, expected, "exactly the accepted events arrive");
    assert!(
        partition_of.values().collect::<BTreeSet<_>>().len() > 1,
        "views spread over partitions"
    );
}

#[tokio::test]
async fn status_table() {
    let topic = unique("test.collector.status");
    create_topic(&topic, 2).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--ingest-keys",
            "k1,k2",
            "--max-body-bytes",
            "65536",
            "--max-decompressed-bytes",
            "262144",
        ],
    )
    .await;
    let url = format!("{}/v1/beacons", c.base);
    let http = reqwest::Client::new();
    let good = serde_json::to_vec(&beacon("v-status", now_ms(), 0, 2, None)).unwrap();
    let post = |body: Vec<u8>| {
        http.post(format!("{url}?key=k1"))
            .header("content-type", "application/json")
            .body(body)
    };

    // 401 without a key; the header and the query parameter both work.
    let r = http.post(&url).body(good.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .header("x-qoe-key", "k2")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(post(good.clone()).send().await.unwrap().status(), 204);

    // 400: not JSON, no view_id, no events; the body says why.
    for bad in [
        b"not json".to_vec(),
        br#"{"view":{"stream_id":"s","stream_type":"live","cdn":"c","platform":"p"},"events":[{}]}"#.to_vec(),
        br#"{"view":{"view_id":"v","stream_id":"s","stream_type":"live","cdn":"c","platform":"p"},"events":[]}"#.to_vec(),
    ] {
        let r = post(bad).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|s| !s.is_empty()));
    }

    // 200 with reasons when some events are invalid.
    let partial = serde_json::to_vec(&beacon("v-partial", now_ms(), 0, 3, Some(1))).unwrap();
    let r = post(partial).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 1);

    // 413: body over the limit as sent, and a gzip bomb over the decompressed limit.
    let r = post(vec![b' '; 70_000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let pid = c.service.child.id();
    let rss_before = rss_kib(pid);
    let bomb = gzip(&vec![b' '; 48 << 20]); // 48 MiB of spaces: about 48 KiB compressed
    assert!(bomb.len() < 65536, "bomb is {} bytes", bomb.len());
    // A client of its own, without connection reuse: the collector closes a connection it
    // answered early, and a pooled client could hand that connection to the next request.
    let bomber = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = bomber
            .post(format!("{url}?key=k1"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bomb.clone())
            .send()
            .await;
        // The collector answers 413 as soon as the decompressed limit is hit, without reading
        // the rest of the upload, so the client may see its write cut off instead.
        match r {
            Ok(r) => assert_eq!(r.status(), 413),
            Err(e) => assert!(e.is_request(), "unexpected error {e}"),
        }
    }
    assert_eq!(
        http.get(format!("{}/healthz", c.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "gzip bombs grew RSS from {rss_before} KiB to {rss_after} KiB"
    );

    // 415: content type and encoding.
    let r = http
        .post(format!("{url}?key=k1"))
        .header("content-type", "application/xml")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = http
        .post(format!("{url}?key=k1"))
        .header("content-type", "application/json")
        .header("content-encoding", "compress")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // CORS preflight from a browser player.
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://player.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers().get("access-control-allow-origin").unwrap(), "*");

    // Readiness and metrics are on the admin listener only; the public one has liveness.
    for path in ["readyz", "metrics"] {
        let r = http.get(format!("{}/{path}", c.base)).send().await.unwrap();
        assert_eq!(r.status(), 404, "/{path} on the public listener");
    }

    // Health, readiness, metrics.
    assert_eq!(
        http.get(format!("{}/readyz", c.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = qoe_tests::metrics_text(&c.admin).await;
    assert!(metrics.contains("qoe_collector_events_accepted_total"));
    assert!(metrics.contains("qoe_collector_events_rejected_total{reason=\"unknown_type\"}"));
    assert!(metrics.contains("status=\"413\""));

    // Only the accepted events reached Kafka: the good beacon twice (2 + 2) and the partial
    // one's 2 valid events. (Repeats are published; the aggregator drops them by (view_id, seq).)
    let messages = read_topic(&topic, Duration::from_secs(2)).await;
    assert_eq!(events_of(&messages).len(), 6);
}

#[tokio::test]
async fn over_the_rate_limit_gets_429_with_retry_after() {
    let topic = unique("test.collector.rate");
    create_topic(&topic, 1).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--rate-per-ip",
            "5",
            "--rate-burst-factor",
            "1",
            "--rate-per-view",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/beacons", c.base);
    let mut statuses = BTreeMap::new();
    let mut retry_after = None;
    for i in 0..40u32 {
        let body = serde_json::to_vec(&beacon(&format!("v{i}"), now_ms(), 0, 1, None)).unwrap();
        let r = http.post(&url).body(body).send().await.unwrap();
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 30,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&204).copied().unwrap_or(0) >= 5,
        "{statuses:?}"
    );
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
    // Rejected requests published nothing.
    let messages = read_topic(&topic, Duration::from_secs(2)).await;
    assert_eq!(events_of(&messages).len(), statuses[&204]);
}

#[tokio::test]
async fn kafka_traceparent_continues_the_request_trace() {
    let topic = unique("test.collector.trace");
    create_topic(&topic, 1).await.unwrap();
    let c = collector(&topic, &[]).await;
    let http = reqwest::Client::new();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = serde_json::to_vec(&beacon("v-trace", now_ms(), 0, 2, None)).unwrap();
    let r = http
        .post(format!("{}/v1/beacons", c.base))
        .header("traceparent", incoming)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let server_span = r
        .headers()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        qoe_telemetry::trace_id_of(&server_span),
        qoe_telemetry::trace_id_of(incoming)
    );
    assert_ne!(server_span, incoming, "the request gets its own span");
    let messages = read_topic(&topic, Duration::from_secs(2)).await;
    assert_eq!(events_of(&messages).len(), 2);
    for m in messages {
        assert_eq!(m.header("traceparent"), Some(server_span.as_str()));
    }
}

/// Region precedence (spec, Dimensions): trusted edge header, else the GeoIP database (countries
/// mapped to regions by `--geoip-region`), else the envelope, else `unknown`; every source
/// normalised the same way; addresses behind a trusted proxy come from X-Forwarded-For.
#[tokio::test]
async fn regions_resolve_from_edge_header_geoip_database_envelope() {
    use std::net::Ipv4Addr;
    let topic = unique("test.collector.region");
    create_topic(&topic, 1).await.unwrap();
    let db = std::env::temp_dir().join(format!("{topic}.mmdb"));
    std::fs::write(
        &db,
        qoe_tests::mmdb::country_db(&[
            (Ipv4Addr::new(203, 0, 113, 0), 24, "JP"),
            (Ipv4Addr::new(198, 51, 100, 0), 24, "BR"),
        ]),
    )
    .unwrap();
    let db_arg = db.display().to_string();
    let c = collector(
        &topic,
        &[
            "--geoip-db",
            &db_arg,
            "--geoip-region",
            "JP=AP-Northeast",
            "--trusted-proxies",
            "127.0.0.0/8",
            "--region-header",
            "x-edge-region",
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // (view, X-Forwarded-For, edge header, envelope region) -> expected region
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: [Case; 7] = [
        (
            "geo-jp",
            "203.0.113.9",
            None,
            Some("eu-west"),
            "ap-northeast",
        ),
        ("geo-br", "198.51.100.20", None, None, "br"),
        (
            "edge-wins",
            "203.0.113.9",
            Some("AP-South"),
            Some("eu-west"),
            "ap-south",
        ),
        ("envelope", "192.0.2.1", None, Some("eu-west"), "eu-west"),
        // One slice whatever the spelling or the source.
        (
            "envelope-case",
            "192.0.2.1",
            None,
            Some(" EU-West "),
            "eu-west",
        ),
        (
            "edge-case",
            "192.0.2.1",
            Some("EU-WEST"),
            Some("us-east"),
            "eu-west",
        ),
        ("nothing", "192.0.2.1", None, None, "unknown"),
    ];
    for (view, xff, edge, envelope, _) in cases {
        let mut body = beacon(view, now_ms(), 0, 1, None);
        body["view"]["region"] = envelope.map_or(serde_json::Value::Null, |r| json!(r));
        let mut req = http
            .post(format!("{}/v1/beacons", c.base))
            .header("x-forwarded-for", xff)
            .json(&body);
        if let Some(edge) = edge {
            req = req.header("x-edge-region", edge);
        }
        assert_eq!(req.send().await.unwrap().status(), 204, "{view}");
    }
    let messages = read_topic(&topic, Duration::from_secs(2)).await;
    for m in &messages {
        assert!(!String::from_utf8_lossy(&m.payload).contains("203.0.113.9"));
    }
    let regions: BTreeMap<String, String> = events_of(&messages)
        .into_iter()
        .map(|e| (e.view_id, e.region))
        .collect();
    let expected: BTreeMap<String, String> = cases
        .iter()
        .map(|(view, _, _, _, region)| (view.to_string(), region.to_string()))
        .collect();
    assert_eq!(regions, expected);
    let _ = std::fs::remove_file(&db);
    drop(c.service);
}

/// Slow clients: one that never finishes its headers is disconnected after the header read
/// timeout; one that stalls in its body gets 408 after the request timeout; neither holds
/// up anyone else.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let topic = unique("test.collector.slow");
    create_topic(&topic, 1).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--header-read-timeout-ms",
            "1000",
            "--request-timeout-ms",
            "2000",
        ],
    )
    .await;
    let addr = c.base.trim_start_matches("http://").to_owned();
    // Reads until the server closes; returns what it sent and when it closed.
    async fn until_closed(mut s: tokio::net::TcpStream) -> (String, Duration) {
        let t = std::time::Instant::now();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "server kept the slow connection open for 10 s"
        );
        (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
    }

    let mut headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers
        .write_all(b"POST /v1/beacons HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        b"POST /v1/beacons HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"view\":",
    )
    .await
    .unwrap();
    let slow_headers = tokio::spawn(until_closed(headers));
    let slow_body = tokio::spawn(until_closed(body));

    // Meanwhile a normal client is served at once.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/beacons", c.base))
        .json(&beacon("v-fast", now_ms(), 0, 1, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let (_, waited) = slow_headers.await.unwrap();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "incomplete headers cut off after {waited:?} (timeout 1 s)"
    );
    let (response, waited) = slow_body.await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "stalled body: {response:?}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "stalled body answered after {waited:?} (timeout 2 s)"
    );
    let messages = read_topic(&topic, Duration::from_secs(2)).await;
    assert_eq!(
        events_of(&messages).len(),
        1,
        "only the normal client's event lands"
    );
}

/// The first line a raw HTTP/1.1 request with `Expect: 100-continue` gets back, before any
/// body byte is sent.
async fn first_answer_line(base: &str, extra_headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/beacons HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Encoding: gzip\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n{extra_headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer to the head alone")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What a hostile client can no longer do cheaply: be refused only after its body was read, make
/// one address drain the global budget, dodge its limit by rotating IPv6 addresses in a /64,
/// push unlimited events through few requests, or get a large input echoed back.
#[tokio::test]
async fn hostile_clients_are_refused_cheaply_and_fairly() {
    let topic = unique("test.collector.hostile");
    create_topic(&topic, 1).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--ingest-keys",
            "k1",
            "--trusted-proxies",
            "127.0.0.0/8",
            "--rate-per-ip",
            "2",
            "--rate-global",
            "20",
            "--rate-burst-factor",
            "1",
            "--rate-events-per-ip",
            "50",
            "--rate-per-view",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/beacons?key=k1", c.base);
    let post = |from: &str, body: Vec<u8>| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-forwarded-for", from)
            .body(body)
            .send()
    };
    let one = |view: &str, n: u32| serde_json::to_vec(&beacon(view, now_ms(), 0, n, None)).unwrap();

    // Refused from the head: no key, or over the client's limit, gets its answer instead of
    // "100 Continue", so the body is never sent, read or decompressed.
    assert_eq!(
        first_answer_line(&c.base, "").await,
        "HTTP/1.1 401 Unauthorized"
    );
    for i in 0..2 {
        assert_eq!(
            post("198.51.100.2", one(&format!("e{i}"), 1))
                .await
                .unwrap()
                .status(),
            204
        );
    }
    let line = first_answer_line(
        &c.base,
        "X-QoE-Key: k1\r\nX-Forwarded-For: 198.51.100.2\r\n",
    )
    .await;
    assert_eq!(line, "HTTP/1.1 429 Too Many Requests");

    // One address far over its own limit takes nothing from the global budget.
    let mut greedy_ok = 0;
    for i in 0..40 {
        let r = post("198.51.100.1", one(&format!("g{i}"), 1))
            .await
            .unwrap();
        greedy_ok += usize::from(r.status() == 204);
    }
    assert!(
        greedy_ok <= 3,
        "the greedy client got {greedy_ok} requests through"
    );
    for i in 10..15 {
        let from = format!("198.51.100.{i}");
        let r = post(&from, one(&format!("w{i}"), 1)).await.unwrap();
        assert_eq!(r.status(), 204, "well-behaved client {from} refused");
    }

    // IPv6 addresses of one /64 share one budget; another /64 has its own.
    for (from, want) in [
        ("2001:db8:7:7::1", 204),
        ("2001:db8:7:7::2", 204),
        ("2001:db8:7:7:ffff::3", 429),
        ("2001:db8:7:8::1", 204),
    ] {
        let r = post(from, one(&format!("v6-{from}"), 1)).await.unwrap();
        assert_eq!(r.status(), want, "{from}");
    }

    // Events, not only requests, are limited per client (50/s here).
    assert_eq!(
        post("198.51.100.30", one("big-1", 40))
            .await
            .unwrap()
            .status(),
        204
    );
    let r = post("198.51.100.30", one("big-2", 20)).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let reason: serde_json::Value = r.json().await.unwrap();
    assert!(
        reason["error"].as_str().unwrap().contains("client_events"),
        "{reason}"
    );

    // A huge field comes back as a short reason, not echoed.
    let huge = format!(
        r#"{{"sent_at": "{}", "view": {{"view_id": "v"}}, "events": []}}"#,
        "9".repeat(700_000)
    );
    let r = post("198.51.100.40", huge.into_bytes()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.bytes().await.unwrap();
    assert!(body.len() < 1024, "a {} byte error body", body.len());

    // A chunked body over the size limit (1 MiB by default) is 413, like a declared one.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = c.base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /v1/beacons?key=k1 HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: 198.51.100.43\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = wr.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..20 {
                let size = format!("{:x}\r\n", chunk.len());
                if wr.write_all(size.as_bytes()).await.is_err()
                    || wr.write_all(&chunk).await.is_err()
                    || wr.write_all(b"\r\n").await.is_err()
                {
                    break;
                }
            }
            let _ = wr.write_all(b"0\r\n\r\n").await;
        });
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        writer.abort();
    }

    // A JSON array is not an envelope, even with the envelope's fields in order.
    let array =
        br#"[1763721600000, {"view_id": "v"}, [{"seq": 0, "type": "view_start", "ts": 1}]]"#;
    let r = post("198.51.100.41", array.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);

    // A Content-Type that is not visible ASCII is not a type we take.
    let r = http
        .post(&url)
        .header("x-forwarded-for", "198.51.100.42")
        .header(
            "content-type",
            reqwest::header::HeaderValue::from_bytes(b"application/json\xff").unwrap(),
        )
        .body(one("ct", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let metrics = qoe_tests::metrics_text(&c.admin).await;
    assert!(metrics.contains("qoe_collector_rate_limited_total{scope=\"client_events\"}"));
    assert!(metrics.contains("# HELP qoe_collector_rate_limited_total"));
}

/// The edge region header and forwarding headers count only when the peer is a trusted proxy:
/// a client talking to the collector directly cannot choose its region or its address.
#[tokio::test]
async fn edge_headers_from_untrusted_peers_are_ignored() {
    let topic = unique("test.collector.untrusted");
    create_topic(&topic, 1).await.unwrap();
    let c = collector(
        &topic,
        &[
            "--trusted-proxies",
            "10.0.0.0/8",
            "--region-header",
            "x-edge-region",
            "--rate-per-ip",
            "1",
            "--rate-burst-factor",
            "1",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut body = beacon("spoofer", now_ms(), 0, 1, None);
    body["view"]["region"] = json!("eu-west");
    let r = http
        .post(format!("{}/v1/beacons", c.base))
        .header("x-edge-region", "us-east")
        .header("x-forwarded-for", "198.51.100.1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A forged X-Forwarded-For does not buy a fresh rate-limit budget either.
    let r = http
        .post(format!("{}/v1/beacons", c.base))
        .header("x-forwarded-for", "198.51.100.2")
        .json(&beacon("spoofer-2", now_ms(), 0, 1, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let events = events_of(&read_topic(&topic, Duration::from_secs(2)).await);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        e.region, "eu-west",
        "the envelope's region, not the forged header's"
    );
}

/// SIGTERM while clients keep posting: the collector stops taking new requests, answers those
/// it took, and every beacon it answered 2xx for is in Kafka (no acknowledgement without the
/// broker's). It exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_acknowledges_only_what_kafka_has() {
    let topic = unique("test.sigterm");
    create_topic(&topic, 2).await.unwrap();
    let mut c = collector(
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
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>> =
        Default::default();
    let mut clients = Vec::new();
    for client in 0..16 {
        let (base, acked) = (c.base.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            // One connection per request: a request either reaches the server before it stops
            // accepting, or is refused at connect.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            for i in 0.. {
                let view = format!("term-{client}-{i}");
                let body = beacon(&view, now_ms(), 0, 5, None);
                match http
                    .post(format!("{base}/v1/beacons"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => acked
                        .lock()
                        .unwrap()
                        .push((view, std::time::Instant::now())),
                    Ok(r) => assert_eq!(r.status(), 503, "{view}: only 503 while stopping"),
                    Err(_) => break,
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "clients never got 300 answers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = std::time::Instant::now();
    assert!(
        c.service.terminate(Duration::from_secs(30)),
        "the collector did not exit cleanly after SIGTERM"
    );
    for client in clients {
        client.await.expect("a client failed");
    }
    let acked = acked.lock().unwrap().clone();
    let after_signal = acked.iter().filter(|(_, at)| *at > signalled).count();
    assert!(
        after_signal > 0,
        "no request was in flight at SIGTERM (the scenario did not happen)"
    );
    let in_kafka: BTreeSet<String> = read_topic(&topic, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|m| m.key)
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .map(|(v, _)| v)
        .filter(|v| !in_kafka.contains(*v))
        .collect();
    assert!(
        missing.is_empty(),
        "answered 2xx but not in Kafka: {missing:?}"
    );
    eprintln!(
        "{} acknowledged, {after_signal} of them answered after SIGTERM",
        acked.len()
    );
}
