//! `POST /v1/cdn-logs` against a real collector and broker: JSON lines and CloudFront records,
//! gzip, a shipper's retry, skipped lines and their counts, and a body over the line limit.

use flate2::write::GzEncoder;
use qoe_schemas::cdn_log::{RequestMessage, CLOUDFRONT_FIELDS};
use qoe_tests::{create_topic, read_topic, spawn_collector, unique};
use std::io::Write;
use std::time::Duration;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn now_s() -> i64 {
    qoe_telemetry::process::now_ms() / 1000
}

/// Messages of `topic`, decoded, with their keys.
async fn requests(topic: &str) -> Vec<(String, RequestMessage)> {
    read_topic(topic, Duration::from_secs(2))
        .await
        .into_iter()
        .map(|m| {
            let decoded = RequestMessage::decode(&m.payload)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m.payload)));
            (m.key, decoded)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_become_one_message_per_request() {
    let topic = unique("test.cdnlogs");
    create_topic(&topic, 2).await.unwrap();
    let (_collector, base, admin) = spawn_collector(
        &topic,
        &[
            "--cdn-host",
            "cdn-a.example.net=cdn-a",
            "--ingest-keys",
            "k1",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let t = now_s();
    let json_lines = format!(
        "{{\"ts\":{t},\"status\":200,\"bytes\":1000,\"ttfb_ms\":30,\"url\":\"https://e1.cdn-a.example.net/v/1.m4s?CMCD=br%3D800%2Cd%3D4000%2Cot%3Dv%2Csid%3D%22s-1%22\",\"user_agent\":\"ExoPlayerLib/2.19.1\"}}\n\
         not json\n\
         {{\"ts\":{t},\"status\":503,\"url\":\"/v/2.m4s\",\"host\":\"e2.cdn-a.example.net\",\"headers\":{{\"CMCD-Session\":\"sid=\\\"s-1\\\",cid=\\\"ch-1\\\"\",\"CMCD-Status\":\"bs\"}}}}\n"
    );
    // Without the ingest key: refused before anything is read.
    let refused = http
        .post(format!("{base}/v1/cdn-logs"))
        .body(json_lines.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let post = |body: Vec<u8>| {
        http.post(format!("{base}/v1/cdn-logs?key=k1"))
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(gzip(&body))
            .send()
    };
    let answer = post(json_lines.clone().into_bytes()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let counts: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        counts,
        serde_json::json!({"accepted": 2, "rejected": 1, "reasons": {"json": 1}})
    );
    // The shipper retries the same body: the same requests, with the same ids.
    assert_eq!(post(json_lines.into_bytes()).await.unwrap().status(), 200);

    // CloudFront real-time log records, a configuration with a few of the fields.
    let fields = "timestamp,c-ip,time-to-first-byte,sc-status,sc-bytes,cs-host,cs-uri-stem,x-edge-request-id,cmcd-encoded-bitrate,cmcd-session-id,cmcd-buffer-starvation";
    let records = format!(
        "{t}.250\t192.0.2.1\t0.015\t200\t5000\td1.cloudfront.net\t/l/seg-1.ts\tcf-req-1\t2400\tcf-s\ttrue\n\
         {t}.500\t192.0.2.1\t-\t404\t0\td1.cloudfront.net\t/l/seg-2.ts\tcf-req-2\t-\tcf-s\t-\n"
    );
    let answer = http
        .post(format!(
            "{base}/v1/cdn-logs?key=k1&format=cloudfront&cdn=CloudFront&fields={fields}"
        ))
        .body(records)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);
    let bad_fields = http
        .post(format!(
            "{base}/v1/cdn-logs?key=k1&format=cloudfront&fields=timestamp,nope"
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_fields.status(), 400);

    let got = requests(&topic).await;
    assert_eq!(got.len(), 6, "{got:#?}");
    let json: Vec<&(String, RequestMessage)> = got.iter().filter(|(k, _)| k == "s-1").collect();
    assert_eq!(json.len(), 4);
    let first = json.iter().find(|(_, m)| m.req.path == "/v/1.m4s").unwrap();
    let m = &first.1;
    assert_eq!(
        (m.req.status, m.req.bytes, m.req.ttfb),
        (200, 1000, Some(30))
    );
    assert_eq!(
        (m.req.cmcd.br, m.req.cmcd.d, m.req.cmcd.ot.as_deref()),
        (Some(800), Some(4000), Some("v"))
    );
    assert_eq!(
        (m.cdn.as_str(), m.platform.as_str(), m.player.as_str()),
        ("cdn-a", "android", "media3")
    );
    assert_eq!(m.req.time, t * 1000);
    let second = json.iter().find(|(_, m)| m.req.path == "/v/2.m4s").unwrap();
    assert_eq!((second.1.req.status, second.1.req.cmcd.bs), (503, true));
    assert_eq!(second.1.req.cmcd.cid.as_deref(), Some("ch-1"));
    // Both copies of each retried line carry one id.
    let mut ids: Vec<&str> = json
        .iter()
        .map(|(_, m)| m.req.request_id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[1], ids[2]);

    let cf: Vec<&RequestMessage> = got
        .iter()
        .filter(|(k, _)| k == "cf-s")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(cf.len(), 2);
    let ok = cf.iter().find(|m| m.req.request_id == "cf-req-1").unwrap();
    assert_eq!(
        (ok.req.time, ok.req.ttfb, ok.req.bytes),
        (t * 1000 + 250, Some(15), 5000)
    );
    assert_eq!((ok.req.cmcd.br, ok.req.cmcd.bs), (Some(2400), true));
    assert_eq!(
        (ok.cdn.as_str(), ok.req.host.as_str()),
        ("cloudfront", "d1.cloudfront.net")
    );
    let missing = cf.iter().find(|m| m.req.request_id == "cf-req-2").unwrap();
    assert_eq!(
        (missing.req.status, missing.req.ttfb, missing.req.cmcd.br),
        (404, None, None)
    );

    let metrics = qoe_tests::metrics_text(&admin).await;
    assert!(
        metrics.contains("qoe_collector_cdn_log_requests_accepted_total 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qoe_collector_cdn_log_lines_rejected_total{reason=\"json\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        CLOUDFRONT_FIELDS
            .iter()
            .filter(|f| f.starts_with("cmcd-"))
            .count(),
        18
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_line_limit_is_refused_whole() {
    let topic = unique("test.cdnlogs.limit");
    create_topic(&topic, 1).await.unwrap();
    let (_collector, base, _admin) = spawn_collector(&topic, &["--max-log-lines", "2"]).await;
    let line = format!("{{\"ts\":{},\"status\":200,\"url\":\"/a\"}}\n", now_s());
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{base}/v1/cdn-logs"))
        .body(line.repeat(3))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let answer = http
        .post(format!("{base}/v1/cdn-logs"))
        .body(line.repeat(2))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(
        requests(&topic).await.len(),
        2,
        "only the body within the limit"
    );
}

/// Sums of the request-mode columns per CDN in the base window table.
async fn request_mode_per_cdn(db: &str) -> Vec<Vec<String>> {
    qoe_tests::clickhouse_query(
        db,
        "SELECT cdn, stream_id, stream_type, platform, sum(rm_requests), sum(rm_request_errors), \
         sum(rm_media_requests), sum(rm_starvations), sum(rm_startup_requests), \
         sum(rm_ttfb_ms_sum), sum(rm_ttfb_le_50), sum(rm_throughput_kbps_sum), \
         sum(rm_throughput_samples), sum(rm_bitrate_kbps_ms), sum(rm_media_ms), \
         sum(rm_bl_le_5000), sum(rm_bl_le_inf), sum(rm_duplicate_requests), sum(events) \
         FROM qoe_window_10s GROUP BY cdn, stream_id, stream_type, platform ORDER BY cdn",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mode_metrics_reach_clickhouse_once_per_request() {
    let topic = unique("test.cdnlogs.rm");
    let db = unique("qoe_test_cdnlogs");
    create_topic(&topic, 2).await.unwrap();
    let (_collector, base, _admin) = spawn_collector(&topic, &[]).await;
    let _aggregator = qoe_tests::spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let t = (qoe_telemetry::process::now_ms() - 10 * 60_000) / 10_000 * 10;
    // Two media requests of one Media3 session and its manifest, on cdn-a: one starved, one at
    // startup, one failed; and a second session's manifest.
    let cdn_a = format!(
        "{{\"ts\":{t}.1,\"status\":200,\"ttfb_ms\":40,\"url\":\"/v/1.m4s\",\"user_agent\":\"ExoPlayerLib/2.19.1\",\"cmcd\":\"br=3000,d=4000,ot=v,su,mtp=20000,bl=0,sid=\\\"n-1\\\",cid=\\\"ch-1\\\",st=l,sf=d\"}}\n\
         {{\"ts\":{t}.2,\"status\":200,\"ttfb_ms\":90,\"url\":\"/v/2.m4s\",\"user_agent\":\"ExoPlayerLib/2.19.1\",\"cmcd\":\"br=6000,d=4000,ot=v,bs,mtp=30000,bl=4000,sid=\\\"n-1\\\",cid=\\\"ch-1\\\",st=l,sf=d\"}}\n\
         {{\"ts\":{t}.3,\"status\":500,\"url\":\"/m.mpd\",\"user_agent\":\"ExoPlayerLib/2.19.1\",\"cmcd\":\"ot=m,sid=\\\"n-1\\\",cid=\\\"ch-1\\\",st=l,sf=d,bl=9000\"}}\n\
         {{\"ts\":{t}.4,\"status\":200,\"url\":\"/m.mpd\",\"user_agent\":\"ExoPlayerLib/2.19.1\",\"cmcd\":\"ot=m,sid=\\\"n-2\\\",cid=\\\"ch-1\\\",st=l,sf=d\"}}\n"
    );
    let http = reqwest::Client::new();
    for _ in 0..2 {
        // The second time is the shipper's retry: counted as duplicates, not again.
        let answer = http
            .post(format!("{base}/v1/cdn-logs?cdn=cdn-a"))
            .body(cdn_a.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 204);
    }
    // One AVPlayer request on CloudFront, its CMCD in the record's fields.
    let fields = "timestamp,time-to-first-byte,sc-status,cs-host,cs-uri-stem,cs-user-agent,cmcd-encoded-bitrate,cmcd-object-duration,cmcd-object-type,cmcd-session-id,cmcd-content-id,cmcd-stream-type";
    let record = format!(
        "{t}.5\t0.030\t200\td1.cloudfront.net\t/l/seg.ts\tAppleCoreMedia/1.0.0.22A3354%20(iPhone)\t1500\t6000\tav\tav-1\tch-2\tv\n"
    );
    let answer = http
        .post(format!(
            "{base}/v1/cdn-logs?cdn=cloudfront&format=cloudfront&fields={fields}"
        ))
        .body(record)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);

    qoe_tests::wait_caught_up(
        &db,
        &topic,
        &qoe_tests::written_partition_ends(&topic),
        Duration::from_secs(60),
    )
    .await;
    let got = request_mode_per_cdn(&db).await;
    let row = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            // cdn, stream, type, platform, requests, errors, media, starved, startup,
            // ttfb sum, ttfb <= 50 ms, mtp sum, mtp n, br x d, media ms, bl in (1 s, 5 s],
            // bl > 30 s, duplicates, events
            row(&[
                "cdn-a", "ch-1", "live", "android", "4", "1", "2", "1", "1", "130", "1", "50000",
                "2", "36000000", "8000", "1", "0", "4", "0"
            ]),
            row(&[
                "cloudfront",
                "ch-2",
                "vod",
                "ios",
                "1",
                "0",
                "1",
                "0",
                "0",
                "30",
                "1",
                "0",
                "0",
                "9000000",
                "6000",
                "0",
                "0",
                "0",
                "0"
            ]),
        ]
    );
    let sessions = qoe_tests::clickhouse_query(
        &db,
        "SELECT cdn, uniqExactMerge(sessions) FROM qoe_request_sessions_10s GROUP BY cdn ORDER BY cdn",
    )
    .await
    .unwrap();
    assert_eq!(
        sessions,
        vec![row(&["cdn-a", "2"]), row(&["cloudfront", "1"])]
    );
}
