//! CMCD v2 event mode through the real pipeline (collector, broker, aggregator, ClickHouse):
//! reports shaped like what hls.js and dash.js really send become the same rows a beacon view
//! makes; bad lines are skipped and counted; duplicates count once; and kill -9 of the
//! aggregator mid-session changes nothing (sessions live in the checkpoints).

use flate2::write::GzEncoder;
use qoe_schemas::cmcd::{CmcdMessage, CmcdReport};
use qoe_telemetry::process::now_ms;
use qoe_tests::{
    clickhouse_query, create_topic, kafka_brokers, kill9_after_a_batch, metrics_text,
    spawn_aggregator, spawn_aggregator_at, spawn_collector, unique, wait_caught_up, window_rows,
};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

/// A session's report lines: `(ms after the base, the line's own keys)`; `e`, `ts`, `sid`,
/// `sn` and `v` are added.
fn body(sid: &str, base: i64, common: &str, lines: &[(i64, &str)]) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(sn, (at, keys))| {
            format!(
                "{keys},sid=\"{sid}\",sn={sn},ts={},v=2{common}\n",
                base + at
            )
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Partition ends of `topic`, for waiting until the aggregator has everything.
fn ends(topic: &str) -> BTreeMap<i32, i64> {
    qoe_tests::written_partition_ends(topic)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    gzipped: bool,
) -> reqwest::StatusCode {
    let mut request = http
        .post(url)
        .header("content-type", "application/cmcd")
        .header("user-agent", CHROME);
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    request.body(body).send().await.unwrap().status()
}

/// Sums of some metrics per CDN over every 10 s window.
async fn per_cdn(db: &str) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
    let columns = [
        "attempts",
        "plays",
        "startup_ms_sum",
        "vsf",
        "vpf",
        "ebvs",
        "errors",
        "stalls",
        "stall_ms",
        "playing_ms",
        "bitrate_kbps_ms",
        "upswitches",
        "downswitches",
        "latency_ms_sum",
        "latency_samples",
        "seeks",
        "duplicate_events",
        "late_events",
        "cdn_requests",
        "cdn_request_errors",
        "ttfb_ms_sum",
        "ttfb_le_50",
    ];
    let sums: Vec<String> = columns.iter().map(|c| format!("sum({c})")).collect();
    let rows = clickhouse_query(
        db,
        &format!(
            "SELECT cdn, {} FROM qoe_window_10s GROUP BY cdn ORDER BY cdn",
            sums.join(", ")
        ),
    )
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| {
            let values = columns
                .iter()
                .zip(&r[1..])
                .map(|(c, v)| (*c, v.parse().unwrap()))
                .collect();
            (r[0].clone(), values)
        })
        .collect()
}

fn expect(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().collect()
}

#[tokio::test]
async fn reports_of_real_player_shapes_become_views() {
    let topic = unique("test.cmcd.views");
    let db = unique("qoe_test_cmcd");
    create_topic(&topic, 2).await.unwrap();
    let (_collector, base_url, admin) = spawn_collector(
        &topic,
        &[
            "--cdn-host",
            "cdn-a.example.net=cdn-a",
            "--cors-origins",
            "http://player.example",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // Well in the past, so that every window is final by the end; within the collector's age
    // limit (1 h).
    let base = (now_ms() - 10 * 60_000) / 10_000 * 10_000;

    // CORS: the content type is not safelisted, so browsers ask first.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base_url}/v1/cmcd"))
        .header("origin", "http://player.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://player.example"
    );

    // Players post as things happen: each session's reports are sent in time order,
    // interleaved with the other sessions' (one report per request, CML's default batch size).
    let mut posts: Vec<(i64, String, String, bool)> = Vec::new();
    let mut plan =
        |sid: &str, start: i64, common: &str, url: &str, gz: bool, lines: &[(i64, &str)]| {
            let text = body(sid, start, common, lines);
            for (line, (at, _)) in text.lines().zip(lines) {
                posts.push((start + at, url.to_owned(), format!("{line}\n"), gz));
            }
            text
        };
    // hls.js, healthy start, one stall, a pause, and the viewer quits. Its segment requests
    // (`rr`) go to a host of cdn-a.
    let url_a = format!("{base_url}/v1/cmcd?player=hls.js");
    let hls = plan(
        "hls-a",
        base,
        ",cid=\"ch-1\",sf=h,st=l",
        &url_a,
        false,
        &[
            (0, "e=ps,sta=s"),
            (5, "e=t"),
            (100, "e=rr,url=\"https://edge1.cdn-a.example.net/live/seg_1.m4s?CMCD=x\",rc=200,ttfb=40,ttlb=90,ot=v"),
            (300, "e=ps,sta=p,br=(800)"),
            (2_100, "e=rr,url=\"https://edge1.cdn-a.example.net/live/seg_2.m4s\",rc=200,ttfb=35,ttlb=80,ot=v"),
            (10_300, "e=t,br=(800)"),
            (20_300, "e=ps,sta=r,bl=(0)"),
            (26_100, "e=ps,sta=p"),
            (30_000, "e=ps,sta=a"),
            (35_000, "e=ps,sta=p"),
            (40_000, "e=ps,sta=q"),
        ],
    );
    // hls.js with a missing manifest: `ps f` within 20 ms, then its error report. The page
    // says its CDN in the target URL.
    plan(
        "hls-b",
        base + 1_000,
        ",cid=\"ch-1\",sf=h",
        &format!("{base_url}/v1/cmcd?player=hls.js&cdn=CDN-B"),
        false,
        &[
            (0, "e=ps,sta=s"),
            (
                10,
                "e=rr,url=\"https://other.example.org/live/master.m3u8\",rc=404,ttfb=12,ot=m",
            ),
            (15, "e=ps,sta=f"),
            (18, "e=e,ec=(\"manifestLoadError\")"),
        ],
    );
    // dash.js: a wrong msd, decimal latency, no `bc` (the bitrate changes on a later report),
    // the manifest request before play; gzip; ends with the stream.
    let url_c = format!("{base_url}/v1/cmcd");
    plan(
        "dash-c",
        base + 2_000,
        ",cid=\"ch-2\",sf=d,st=l",
        &url_c,
        true,
        &[
            (0, "e=ps,sta=s"),
            (50, "e=rr,url=\"https://origin.cdn-a.example.net/live/manifest.mpd\",rc=200,ttlb=12,msd=30,ot=m"),
            (232, "e=ps,sta=p,msd=30,br=(800),ltc=2042.0"),
            (10_232, "e=t,br=(250),ltc=3000.4"),
            (20_232, "e=ps,sta=e"),
        ],
    );
    posts.sort_by_key(|(t, ..)| *t);
    for (_, url, line, gz) in posts {
        let bytes = if gz {
            gzip(line.as_bytes())
        } else {
            line.into_bytes()
        };
        assert_eq!(post(&http, &url, bytes, gz).await, 204);
    }
    // hls.js retries its last five reports in one body (a lost answer): all duplicates.
    let retried: String = hls.lines().skip(6).map(|l| format!("{l}\n")).collect();
    assert_eq!(post(&http, &url_a, retried.into_bytes(), false).await, 204);

    // Lines that cannot be used: skipped, counted, and the request still 204.
    let bad = format!("garbage(\ne=ps,sta=s,ts={base},sid=\"x\",v=3\ne=ps,sta=s,ts={base}\n");
    assert_eq!(post(&http, &url_c, bad.into_bytes(), false).await, 204);
    let m = metrics_text(&admin).await;
    for reason in ["syntax", "version", "missing_key"] {
        assert!(
            m.contains(&format!(
                "qoe_collector_cmcd_lines_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{m}"
        );
    }
    assert!(
        m.contains("qoe_collector_cmcd_reports_accepted_total 25"),
        "{m}"
    );
    // Not CMCD: refused (a client bug, not a temporary problem).
    let r = http
        .post(&url_c)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let _aggregator = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    wait_caught_up(&db, &topic, &ends(&topic), Duration::from_secs(60)).await;

    let got = per_cdn(&db).await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["cdn-a", "cdn-b"],
        "{got:#?}"
    );
    assert_eq!(
        got["cdn-a"],
        expect(&[
            ("attempts", 2),
            ("plays", 2),
            ("startup_ms_sum", 300 + 232),
            ("vsf", 0),
            ("vpf", 0),
            ("ebvs", 0),
            ("errors", 0),
            ("stalls", 1),
            ("stall_ms", 5_800),
            // hls-a played 300-20300, 26100-30000, 35000-40000; dash-c 232-20232.
            ("playing_ms", 28_900 + 20_000),
            (
                "bitrate_kbps_ms",
                800 * 28_900 + 800 * 10_000 + 250 * 10_000
            ),
            ("upswitches", 0),
            ("downswitches", 1),
            ("latency_ms_sum", 2_042 + 3_000),
            ("latency_samples", 2),
            ("seeks", 0),
            ("duplicate_events", 5),
            ("late_events", 0),
            // Segment requests of hls-a (ttfb 40 and 35 ms) and dash-c's manifest (no ttfb).
            ("cdn_requests", 3),
            ("cdn_request_errors", 0),
            ("ttfb_ms_sum", 75),
            ("ttfb_le_50", 2),
        ])
    );
    assert_eq!(
        got["cdn-b"],
        expect(&[
            ("attempts", 1),
            ("plays", 0),
            ("startup_ms_sum", 0),
            ("vsf", 1),
            ("vpf", 0),
            ("ebvs", 0),
            ("errors", 1),
            ("stalls", 0),
            ("stall_ms", 0),
            ("playing_ms", 0),
            ("bitrate_kbps_ms", 0),
            ("upswitches", 0),
            ("downswitches", 0),
            ("latency_ms_sum", 0),
            ("latency_samples", 0),
            ("seeks", 0),
            ("duplicate_events", 0),
            ("late_events", 0),
            // hls-b's manifest request: 404.
            ("cdn_requests", 1),
            ("cdn_request_errors", 1),
            ("ttfb_ms_sum", 12),
            ("ttfb_le_50", 1),
        ])
    );

    let views = clickhouse_query(
        &db,
        "SELECT view_id, cdn, stream_id, protocol, platform, player, started, startup_ms, \
         playing_ms, stall_ms, stalls, error_code, end_reason FROM qoe_views ORDER BY view_id",
    )
    .await
    .unwrap();
    let line = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        views,
        vec![
            line(&[
                "dash-c",
                "cdn-a",
                "ch-2",
                "dash",
                "web",
                "chrome",
                "1",
                "232",
                "20000",
                "0",
                "0",
                "",
                "completed"
            ]),
            line(&[
                "hls-a", "cdn-a", "ch-1", "hls", "web", "hls.js", "1", "300", "28900", "5800", "1",
                "", "exit"
            ]),
            line(&[
                "hls-b",
                "cdn-b",
                "ch-1",
                "hls",
                "web",
                "hls.js",
                "0",
                "0",
                "0",
                "0",
                "0",
                "manifestLoadError",
                "error"
            ]),
        ]
    );
}

/// One fatal failure, reported as `sta=f` and as `e` with the player's code, is one error
/// with that code whatever the order (hls.js sends `f` first, Shaka and dash.js the error
/// first), in one body or two, and with the aggregator killed (kill -9) between the two; a
/// view that never starts and whose last report is an error (dash.js with a missing
/// manifest) is a start failure with that error's code when it goes silent.
#[tokio::test]
async fn one_failure_is_one_error_with_the_players_code() {
    let topic = unique("test.cmcd.failure");
    let db = unique("qoe_test_cmcd_failure");
    create_topic(&topic, 2).await.unwrap();
    let (_collector, base_url, _admin) = spawn_collector(&topic, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{base_url}/v1/cmcd?cdn=cdn-a");
    let base = (now_ms() - 10 * 60_000) / 10_000 * 10_000;
    let common = ",cid=\"ch-1\",sf=h,st=l";
    // (sid, lines, where the second body starts: None = one body)
    type Case<'a> = (&'a str, Vec<(i64, &'a str)>, Option<usize>);
    let cases: [Case; 5] = [
        (
            "f-then-e-one-body",
            vec![
                (0, "e=ps,sta=s"),
                (15, "e=ps,sta=f"),
                (18, "e=e,ec=(\"manifestLoadError\")"),
            ],
            None,
        ),
        (
            "f-then-e-two-bodies",
            vec![
                (0, "e=ps,sta=s"),
                (300, "e=ps,sta=p"),
                (9_000, "e=ps,sta=f"),
                (9_002, "e=e,ec=(\"bufferAppendError\";details=\"x\"),sta=f"),
            ],
            Some(3),
        ),
        (
            "e-then-f-one-body",
            vec![
                (0, "e=ps,sta=s"),
                (20, "e=e,ec=1001,sta=s"),
                (21, "e=ps,sta=f"),
            ],
            None,
        ),
        (
            "e-then-f-across-a-kill",
            vec![
                (0, "e=ps,sta=s"),
                (400, "e=ps,sta=p"),
                (8_000, "e=e,ec=4032,sta=p"),
                (8_003, "e=ps,sta=f"),
            ],
            Some(3),
        ),
        (
            "dash-missing-manifest",
            vec![
                (0, "e=ps,sta=s"),
                (
                    30,
                    "e=rr,url=\"https://origin.example.net/live/manifest.mpd\",rc=404,ot=m",
                ),
                (40, "e=e,ec=25,sta=s"),
            ],
            None,
        ),
    ];
    let mut second_bodies = Vec::new();
    for (i, (sid, lines, split)) in cases.iter().enumerate() {
        let text = body(sid, base + i as i64 * 1_000, common, lines);
        let all: Vec<&str> = text.lines().collect();
        let at = split.unwrap_or(all.len());
        let first: String = all[..at].iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(post(&http, &url, first.into_bytes(), false).await, 204);
        if at < all.len() {
            second_bodies.push(
                all[at..]
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
            );
        }
    }
    let group = unique("g");
    let mut aggregator = spawn_aggregator(&topic, &db, &group, &["--flush-interval-ms", "100"]);
    wait_caught_up(&db, &topic, &ends(&topic), Duration::from_secs(60)).await;
    aggregator.kill9();
    for b in second_bodies {
        assert_eq!(post(&http, &url, b.into_bytes(), false).await, 204);
    }
    // Time moves on for the partitions (the missing-manifest view goes silent past the
    // session timeout): a healthy session three minutes later on each partition's keys.
    for k in 0..8 {
        let later = body(
            &format!("later-{k}"),
            base + 200_000,
            common,
            // Short: no later session may make another's reports late.
            &[
                (0, "e=ps,sta=s"),
                (300, "e=ps,sta=p"),
                (20_000, "e=ps,sta=e"),
            ],
        );
        assert_eq!(post(&http, &url, later.into_bytes(), false).await, 204);
    }
    let _successor = spawn_aggregator(&topic, &db, &unique("g"), &["--flush-interval-ms", "100"]);
    wait_caught_up(&db, &topic, &ends(&topic), Duration::from_secs(60)).await;

    let views = clickhouse_query(
        &db,
        "SELECT view_id, started, errors, error_code, end_reason FROM qoe_views \
         WHERE view_id NOT LIKE 'later-%' ORDER BY view_id",
    )
    .await
    .unwrap();
    let line = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        views,
        vec![
            line(&["dash-missing-manifest", "0", "1", "25", "error"]),
            line(&["e-then-f-across-a-kill", "1", "1", "4032", "error"]),
            line(&["e-then-f-one-body", "0", "1", "1001", "error"]),
            line(&["f-then-e-one-body", "0", "1", "manifestLoadError", "error"]),
            line(&[
                "f-then-e-two-bodies",
                "1",
                "1",
                "bufferAppendError",
                "error"
            ]),
        ]
    );
    let totals = clickhouse_query(
        &db,
        "SELECT sum(attempts), sum(plays), sum(errors), sum(vsf), sum(vpf), sum(ebvs) \
         FROM qoe_window_10s",
    )
    .await
    .unwrap();
    // 5 failing views and 8 healthy ones; 3 failures before start (one of them by silence),
    // 2 after.
    assert_eq!(totals, vec![line(&["13", "10", "5", "3", "2", "0"])]);
    // Errors by code: each failure once, under the player's code. dash.js's error was not
    // fatal when it came (the view failed by going silent after it).
    let codes = clickhouse_query(
        &db,
        "SELECT error_code, fatal, started, sum(errors) FROM qoe_error_codes_1m \
         GROUP BY error_code, fatal, started HAVING sum(errors) > 0 ORDER BY error_code",
    )
    .await
    .unwrap();
    assert_eq!(
        codes,
        vec![
            line(&["1001", "1", "0", "1"]),
            line(&["25", "0", "0", "1"]),
            line(&["4032", "1", "1", "1"]),
            line(&["bufferAppendError", "1", "1", "1"]),
            line(&["manifestLoadError", "1", "0", "1"]),
        ]
    );
    let attempts = clickhouse_query(&db, "SELECT sum(attempts) FROM qoe_error_codes_1m")
        .await
        .unwrap();
    assert_eq!(attempts, vec![line(&["13"])]);
}

/// A real mid-view CDN switch (the segments of one view served by cdn-a, then by cdn-b, both
/// named by the host that served them) counts one switch, in cdn-b, and splits the view's
/// time at the switch; the attempt, first frame and startup stay in cdn-a. The page's
/// `?cdn=` (weaker) never moves the view, and a correction by a stronger source is no switch.
#[tokio::test]
async fn a_cdn_switch_mid_view_counts_once_and_moves_the_time() {
    let topic = unique("test.cmcd.switch");
    let db = unique("qoe_test_cmcd_switch");
    create_topic(&topic, 1).await.unwrap();
    let (_collector, base_url, _admin) = spawn_collector(
        &topic,
        &[
            "--cdn-host",
            "cdn-a.example.net=cdn-a",
            "--cdn-host",
            "cdn-b.example.net=cdn-b",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = (now_ms() - 10 * 60_000) / 10_000 * 10_000;
    let seg = |cdn: &str, n: u32| {
        format!("e=rr,url=\"https://edge.{cdn}.example.net/live/seg_{n}.m4s\",rc=200,ttfb=30,ot=v")
    };
    let (a1, a2, b1, b2) = (
        seg("cdn-a", 1),
        seg("cdn-a", 2),
        seg("cdn-b", 3),
        seg("cdn-b", 4),
    );
    let lines: Vec<(i64, &str)> = vec![
        (0, "e=ps,sta=s"),
        (100, &a1),
        (400, "e=ps,sta=p"),
        (10_400, "e=t"),
        (12_000, &a2),
        // The switch: from here the segments come from cdn-b.
        (20_400, &b1),
        (20_400, "e=t"),
        (30_400, "e=t"),
        (32_000, &b2),
        (40_400, "e=ps,sta=e"),
    ];
    let text = body("switcher", base, ",cid=\"ch-9\",sf=h,st=l", &lines);
    // The page says cdn-x: weaker than the hosts, it changes nothing.
    let url = format!("{base_url}/v1/cmcd?cdn=cdn-x");
    assert_eq!(post(&http, &url, text.into_bytes(), false).await, 204);
    let _aggregator = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    wait_caught_up(&db, &topic, &ends(&topic), Duration::from_secs(60)).await;
    let got = clickhouse_query(
        &db,
        "SELECT cdn, sum(attempts), sum(plays), sum(startup_ms_sum), sum(playing_ms), \
         sum(cdn_switches), sum(cdn_requests) FROM qoe_window_10s GROUP BY cdn ORDER BY cdn",
    )
    .await
    .unwrap();
    let line = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Played 400-40400: the heartbeat at 20400 (reported with the switch) still counts the
    // time before it in cdn-a; the time after it goes to cdn-b.
    assert_eq!(
        got,
        vec![
            line(&["cdn-a", "1", "1", "400", "20000", "0", "2"]),
            line(&["cdn-b", "0", "0", "0", "20000", "1", "2"]),
        ]
    );
}

/// Reports and beacons that never arrive are counted when their session or view is
/// forgotten: a CMCD session missing `sn` 3 and 6 has 2 `reports_lost`; a session whose player
/// restarts `sn` at 0 with a new source loses nothing; a beacon view whose body with `seq` 4
/// and 5 was dropped has 2 `events_lost`; each in its own stream's slice.
#[tokio::test]
async fn dropped_reports_and_beacons_are_counted_lost() {
    let topic = unique("test.cmcd.lost");
    let db = unique("qoe_test_cmcd_lost");
    create_topic(&topic, 1).await.unwrap();
    let (_collector, base_url, _admin) = spawn_collector(&topic, &[]).await;
    let http = reqwest::Client::new();
    let base = (now_ms() - 6 * 60_000) / 10_000 * 10_000;
    let cmcd_url = format!("{base_url}/v1/cmcd?player=hls.js&cdn=cdn-a");
    let session = |sid: &str, cid: &str, from: i64, lines: &[(i64, &str)], drop: &[usize]| {
        body(sid, from, &format!(",cid=\"{cid}\",sf=h,st=l"), lines)
            .lines()
            .enumerate()
            .filter(|(sn, _)| !drop.contains(sn))
            .map(|(_, l)| format!("{l}\n"))
            .collect::<String>()
    };
    let playing: Vec<(i64, &str)> = vec![
        (0, "e=ps,sta=s"),
        (300, "e=ps,sta=p"),
        (10_300, "e=t"),
        (20_300, "e=t"),
        (30_300, "e=t"),
        (40_300, "e=t"),
        (50_300, "e=t"),
        (60_300, "e=t"),
        (70_300, "e=t"),
        (75_000, "e=ps,sta=e"),
    ];
    // sn 3 and 6 never arrive.
    let lossy = session("lossy", "ch-lossy", base, &playing, &[3, 6]);
    // A second source: sn starts again at 0 (body() numbers each call's lines from 0).
    let first = session("restarter", "ch-restart", base, &playing[..4], &[]);
    let second = session("restarter", "ch-restart", base + 40_000, &playing[..4], &[]);
    for text in [lossy, first, second] {
        assert_eq!(post(&http, &cmcd_url, text.into_bytes(), false).await, 204);
    }
    // A beacon view of ten events in bodies of two; the body with seq 4 and 5 is dropped.
    // After the sessions' reports in time, so that none of its events is late.
    let beacons_from = base + 120_000;
    let kinds = [
        "view_start",
        "first_frame",
        "heartbeat",
        "heartbeat",
        "heartbeat",
        "heartbeat",
        "heartbeat",
        "heartbeat",
        "heartbeat",
        "view_end",
    ];
    for pair in [0u32, 2, 6, 8] {
        let events: Vec<serde_json::Value> = (pair..pair + 2)
            .map(|seq| {
                let kind = kinds[seq as usize];
                let mut e = serde_json::json!({"seq": seq, "type": kind, "ts": beacons_from + i64::from(seq) * 8_000});
                match kind {
                    "first_frame" => e["startup_ms"] = 800.into(),
                    "heartbeat" => {
                        e["playing_ms"] = 8_000.into();
                        e["started"] = true.into();
                    }
                    "view_end" => {
                        e["reason"] = "completed".into();
                        e["started"] = true.into();
                    }
                    _ => {}
                }
                e
            })
            .collect();
        let envelope = serde_json::json!({
            // Sent now: the collector moves event times by the client's clock error only.
            "sent_at": now_ms(),
            "view": {"view_id": "beacon-lossy", "stream_id": "ch-beacon", "stream_type": "live",
                "cdn": "cdn-a", "platform": "web", "player": "qoe-web/1.1.0", "protocol": "hls"},
            "events": events,
        });
        let r = http
            .post(format!("{base_url}/v1/beacons"))
            .json(&envelope)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "beacon body: {}", r.status());
    }
    // Minutes later on the same partition: the watermark passes every view's timeout.
    let clock = format!(
        "e=rr,sid=\"clock\",sn=0,ts={},rc=200,v=2\n",
        base + 5 * 60_000
    );
    assert_eq!(post(&http, &cmcd_url, clock.into_bytes(), false).await, 204);
    let _aggregator = spawn_aggregator(
        &topic,
        &db,
        &unique("g"),
        &[
            "--cmcd-session-timeout-secs",
            "30",
            "--view-timeout-secs",
            "30",
        ],
    );
    wait_caught_up(&db, &topic, &ends(&topic), Duration::from_secs(60)).await;
    let got = clickhouse_query(
        &db,
        "SELECT stream_id, sum(reports_lost), sum(events_lost) FROM qoe_window_10s \
         WHERE stream_id IN ('ch-lossy', 'ch-restart', 'ch-beacon') GROUP BY stream_id \
         ORDER BY stream_id",
    )
    .await
    .unwrap();
    let line = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            line(&["ch-beacon", "0", "2"]),
            line(&["ch-lossy", "2", "0"]),
            line(&["ch-restart", "0", "0"]),
        ]
    );
    // Per player and CDN too (the errors-by-code table keeps the player).
    let by_player = clickhouse_query(
        &db,
        "SELECT player, cdn, sum(reports_lost), sum(events_lost) FROM qoe_error_codes_1m \
         GROUP BY player, cdn HAVING sum(reports_lost) + sum(events_lost) > 0 ORDER BY player",
    )
    .await
    .unwrap();
    assert_eq!(
        by_player,
        vec![
            line(&["hls.js", "cdn-a", "2", "0"]),
            line(&["qoe-web/1.1.0", "cdn-a", "0", "2"]),
        ]
    );
}

/// A synthetic audience of CMCD sessions: play, stalls, pauses, seeks, bitrate changes,
/// failures, exits, reused session ids; some reports sent twice.
fn audience(seed: u64, sessions: usize, t0: i64) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reports: Vec<CmcdReport> = Vec::new();
    for s in 0..sessions {
        let sid = format!("s-{s}");
        let mut t = t0 + rng.random_range(0..120_000);
        let mut sn = 0;
        let mut push =
            |reports: &mut Vec<CmcdReport>, e: &str, sta: Option<&str>, t: i64, br: Option<u32>| {
                reports.push(CmcdReport {
                    e: e.into(),
                    ts: t,
                    sid: sid.clone(),
                    sn: Some(sn),
                    cid: Some(format!("ch-{}", s % 3)),
                    sf: Some("h".into()),
                    st: Some("l".into()),
                    sta: sta.map(str::to_owned),
                    br,
                    ltc: (e == "t").then_some(2_000 + (t % 1000) as u32),
                    ..CmcdReport::default()
                });
                sn += 1;
            };
        push(&mut reports, "ps", Some("s"), t, None);
        if rng.random_bool(0.1) {
            t += rng.random_range(10..2_000);
            push(&mut reports, "ps", Some("f"), t, None);
            push(&mut reports, "e", None, t + 3, None);
            continue;
        }
        t += rng.random_range(200..4_000);
        push(&mut reports, "ps", Some("p"), t, Some(800));
        for _ in 0..rng.random_range(2..12) {
            t += rng.random_range(1_000..12_000);
            match rng.random_range(0..6) {
                0 => push(&mut reports, "ps", Some("r"), t, None),
                1 => push(&mut reports, "ps", Some("a"), t, None),
                2 => push(&mut reports, "ps", Some("k"), t, None),
                3 => push(
                    &mut reports,
                    "bc",
                    None,
                    t,
                    Some([250, 800, 1500][rng.random_range(0..3)]),
                ),
                _ => push(&mut reports, "t", None, t, None),
            }
            if rng.random_bool(0.5) {
                t += rng.random_range(100..3_000);
                push(&mut reports, "ps", Some("p"), t, None);
            }
        }
        t += rng.random_range(1_000..5_000);
        push(
            &mut reports,
            "ps",
            Some(["e", "q"][rng.random_range(0..2)]),
            t,
            None,
        );
        if rng.random_bool(0.2) {
            // The sid is reused for a second view (hls.js keeps it across loadSource()).
            t += rng.random_range(1_000..5_000);
            push(&mut reports, "ps", Some("s"), t, None);
            push(&mut reports, "ps", Some("p"), t + 400, None);
            push(&mut reports, "t", None, t + 10_400, None);
        }
    }
    // In time order, as players send them; a few sent twice.
    reports.sort_by_key(|r| r.ts);
    let mut out = Vec::new();
    let m_cdn_b = |sid: &str| sid.bytes().map(u32::from).sum::<u32>() % 2 == 1;
    for r in reports {
        let r_sid = r.sid.clone();
        let m = CmcdMessage {
            cmcd: r,
            received_at: t0 + 10 * 60_000,
            region: "eu-west".into(),
            // A view's CDN is fixed here: the summary keeps any one of a view's CDNs.
            cdn: if m_cdn_b(&r_sid) { "cdn-b" } else { "cdn-a" }.into(),
            platform: "web".into(),
            player: "hls.js".into(),
            cdn_rank: 0,
        };
        let copies = if rng.random_bool(0.03) { 2 } else { 1 };
        for _ in 0..copies {
            out.push((m.cmcd.sid.clone(), m.encode()));
        }
    }
    out
}

async fn publish_raw(topic: &str, messages: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (key, payload) in messages {
        deliveries.push(
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Every view's summary, keyed by view id (in the first key field).
async fn view_rows(db: &str) -> BTreeMap<qoe_tests::truth::RowKey, Vec<String>> {
    clickhouse_query(
        db,
        "SELECT view_id, cdn, stream_id, started, startup_ms, playing_ms, stall_ms, stalls, \
         bitrate_kbps_ms, errors, end_reason FROM qoe_views ORDER BY view_id",
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let key = (
            0,
            r[0].clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        (key, r[1..].to_vec())
    })
    .collect()
}

/// Effectively once for CMCD: an aggregator killed with SIGKILL at random moments, sessions
/// open across every kill, ends with exactly the rows of one that ran uninterrupted over the
/// same messages.
#[tokio::test]
async fn kill_dash_nine_mid_session_changes_nothing() {
    let topic = unique("test.cmcd.kill");
    let (steady_db, killed_db) = (
        unique("qoe_test_cmcd_steady"),
        unique("qoe_test_cmcd_killed"),
    );
    create_topic(&topic, 3).await.unwrap();
    let t0 = 1_763_721_600_000;
    let messages = audience(7, 300, t0);
    let _steady = spawn_aggregator(&topic, &steady_db, &unique("g"), &[]);
    let flush = ["--flush-interval-ms", "100"];
    let (mut killed, mut base) = spawn_aggregator_at(&topic, &killed_db, &unique("g"), &flush);
    // Each instance is killed after it has written a batch of its wave, with sessions open.
    for wave in messages.chunks(messages.len() / 6 + 1) {
        publish_raw(&topic, wave).await;
        kill9_after_a_batch(&mut killed, &base).await;
        // A fresh group id per restart: see aggregator.rs (the local broker keeps a killed
        // member's partitions); progress lives in the checkpoints either way.
        (killed, base) = spawn_aggregator_at(&topic, &killed_db, &unique("g"), &flush);
    }
    let ends = ends(&topic);
    wait_caught_up(&steady_db, &topic, &ends, Duration::from_secs(120)).await;
    wait_caught_up(&killed_db, &topic, &ends, Duration::from_secs(120)).await;

    let sessions_checkpointed = clickhouse_query(
        &killed_db,
        "SELECT count() FROM qoe_checkpoints WHERE state != '' \
         AND position(state, '\"by_sid\":{}') = 0",
    )
    .await
    .unwrap();
    assert!(
        sessions_checkpointed[0][0].parse::<u64>().unwrap() > 0,
        "no checkpoint carried open sessions: the kills did not happen mid-session"
    );
    for table in ["qoe_window_10s", "qoe_window_1m", "qoe_window_1h"] {
        let (steady, after_kills) = (
            window_rows(&steady_db, table).await,
            window_rows(&killed_db, table).await,
        );
        assert!(!steady.is_empty());
        qoe_tests::assert_rows_eq(table, &steady, &after_kills);
    }
    let steady_views = view_rows(&steady_db).await;
    assert!(steady_views.len() >= 300);
    qoe_tests::assert_rows_eq("qoe_views", &steady_views, &view_rows(&killed_db).await);
    let totals = clickhouse_query(
        &steady_db,
        "SELECT sum(attempts), sum(plays), sum(stalls), sum(duplicate_events), sum(vsf) FROM qoe_window_10s",
    )
    .await
    .unwrap();
    let t: Vec<u64> = totals[0].iter().map(|v| v.parse().unwrap()).collect();
    assert!(
        t[0] > 300 && t[1] > 250 && t[2] > 50 && t[3] > 10 && t[4] > 10,
        "{t:?}"
    );
}

/// Big and hostile bodies: 1,000 valid lines are taken whole; random bytes, broken gzip and
/// lines of garbage get 204 (a player cannot act on per-line errors) with every line counted,
/// and the collector keeps serving.
#[tokio::test]
async fn big_and_hostile_bodies() {
    let topic = unique("test.cmcd.hostile");
    create_topic(&topic, 1).await.unwrap();
    let (_collector, base_url, admin) = spawn_collector(&topic, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{base_url}/v1/cmcd");
    let now = now_ms();
    let thousand: String = (0..1000)
        .map(|i| {
            format!(
                "e=t,ts={},sid=\"big-{}\",sn={i},v=2\n",
                now - 1000 + i,
                i % 10
            )
        })
        .collect();
    assert_eq!(post(&http, &url, thousand.into_bytes(), false).await, 204);
    let m = metrics_text(&admin).await;
    assert!(
        m.contains("qoe_collector_cmcd_reports_accepted_total 1000"),
        "{m}"
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut garbage_lines = 0;
    for _ in 0..20 {
        let lines: Vec<String> = (0..rng.random_range(1..50))
            .map(|_| {
                (0..rng.random_range(1..80))
                    .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                    .collect()
            })
            .collect();
        garbage_lines += lines.len();
        assert_eq!(
            post(&http, &url, lines.join("\n").into_bytes(), false).await,
            204
        );
    }
    let random: Vec<u8> = (0..5000).map(|_| rng.random()).collect();
    let status = post(&http, &url, random, false).await;
    assert_eq!(status, 204);
    // Not gzip although it says so: the body cannot be read at all.
    let status = post(&http, &url, b"not gzip".to_vec(), true).await;
    assert_eq!(status, 400);
    let m = metrics_text(&admin).await;
    let rejected: u64 = m
        .lines()
        .filter(|l| l.starts_with("qoe_collector_cmcd_lines_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        rejected as usize >= garbage_lines,
        "{rejected} lines counted, {garbage_lines} garbage lines sent"
    );
    let health = http
        .get(format!("{base_url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
