//! The whole pipeline with real processes: simulator -> collector -> broker -> aggregator ->
//! ClickHouse. Every metric of every window and slice in ClickHouse equals the simulator's
//! ground truth of the events the collector acknowledged, exactly, at 10 s, 1 min and 1 h;
//! late re-sends (moved into later windows by their original `sent_at`) count once; views
//! that left silently end with reason `timeout`.

use qoe_simulator::truth::{TruthFile, METRIC_COLUMNS};
use qoe_tests::truth::{Row, RowKey};
use qoe_tests::{
    assert_windows_equal, binary, clickhouse_query, create_topic, spawn_aggregator,
    spawn_collector, unique, wait_commits_finished,
};
use std::collections::BTreeMap;
use std::time::Duration;

const INCIDENT: &str =
    "region=eu-west,cdn=cdn-b,start=0s,duration=4m,stalls=8,stall_length=2,startup=3,start_failures=0.4";

/// Runs the simulator to completion against `url` with `args`; returns its ground truth and
/// its summary (standard output).
async fn simulate(url: &str, args: &[&str]) -> (TruthFile, String) {
    let truth_path = std::env::temp_dir().join(format!("{}.json", unique("truth")));
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--url",
            url,
            "--progress-secs",
            "0",
            "--truth-out",
            truth_path.to_str().expect("utf-8 temp path"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("simulator"))
            .args(&args)
            .output()
    })
    .await
    .expect("simulator task")
    .expect("running the simulator");
    assert!(
        output.status.success(),
        "simulator failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let bytes = std::fs::read(&truth_path).expect("truth file");
    let _ = std::fs::remove_file(&truth_path);
    let truth = serde_json::from_slice(&bytes).expect("truth file parses");
    (truth, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every window and slice in ClickHouse equals the truth, at every grain, and one summary row
/// per view; returns the expected base rows.
async fn assert_clickhouse_equals(
    database: &str,
    topic: &str,
    truth: &TruthFile,
) -> BTreeMap<RowKey, Row> {
    // Exactness needs every send to have a known outcome; on a healthy loopback stack it has.
    assert_eq!(
        (truth.unacknowledged_events, truth.uncertain_events),
        (0, 0),
        "every beacon must be acknowledged for the truth to be exact"
    );
    assert_eq!(truth.columns, METRIC_COLUMNS);
    let rows: BTreeMap<RowKey, Row> = truth
        .rows
        .iter()
        .map(|r| (r.key(), Row::from_values(&r.metrics)))
        .collect();
    // A window holding only late copies of a view's events has no active view.
    let views: BTreeMap<RowKey, u64> = truth
        .rows
        .iter()
        .filter(|r| r.active_views > 0)
        .map(|r| (r.key(), r.active_views))
        .collect();
    let late: u64 = rows.values().map(|r| r.get("late_events")).sum();
    assert_eq!(late, 0, "the simulator never sends late");

    // Wait until every acknowledged copy is accounted for in ClickHouse.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = clickhouse_query(
            database,
            "SELECT sum(events) + sum(duplicate_events) + sum(late_events) FROM qoe_window_10s",
        )
        .await
        .ok()
        .and_then(|r| r.first()?.first()?.parse::<u64>().ok())
        .unwrap_or(0);
        if got >= truth.acknowledged_events || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_commits_finished(database, topic, Duration::from_secs(30)).await;

    assert_windows_equal(database, &rows, &views, truth.views).await;

    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_equals_the_simulators_ground_truth() {
    let topic = unique("test.e2e");
    let database = unique("test_e2e");
    create_topic(&topic, 6).await.unwrap();
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
    // A view timeout short enough for the run: silent views of its first two minutes end.
    let _aggregator = spawn_aggregator(
        &topic,
        &database,
        &unique("e2e"),
        &[
            "--view-timeout-secs",
            &VIEW_TIMEOUT_SECS.to_string(),
            "--vod-view-timeout-secs",
            &VIEW_TIMEOUT_SECS.to_string(),
        ],
    );
    let (truth, _) = simulate(
        &url,
        &[
            "--seed",
            "20261122",
            "--viewers",
            "1000",
            "--duration",
            "4m",
            "--speed",
            "15",
            "--ramp",
            "20s",
            "--duplicate-rate",
            "0.05",
            "--reorder-rate",
            "0.1",
            "--resend-rate",
            "0.03",
            "--silent-exit-rate",
            "0.2",
            "--incident",
            INCIDENT,
        ],
    )
    .await;
    let rows = assert_clickhouse_equals(&database, &topic, &truth).await;
    assert!(
        truth.late_copies > 20,
        "late re-sends exercised: {}",
        truth.late_copies
    );
    assert_silent_views_timed_out(&database, &truth).await;
    let total = |name: &str| rows.values().map(|r| r.get(name)).sum::<u64>();
    assert!(
        total("events") > 10_000,
        "a substantial run: {} events",
        total("events")
    );
    assert!(total("duplicate_events") > 50, "duplicates exercised");
    for metric in [
        "vsf",
        "vpf",
        "ebvs",
        "stalls",
        "upswitches",
        "downswitches",
        "seeks",
    ] {
        assert!(total(metric) > 0, "{metric} exercised");
    }

    // The incident slice is the worst on rebuffering and start failures, among slices with
    // enough attempts for a rate to mean something.
    let ranked = clickhouse_query(
        &database,
        "SELECT region, cdn, sum(stall_ms) / (sum(playing_ms) + sum(stall_ms)) AS rebuffering, \
         sum(vsf) / sum(attempts) AS start_failures FROM qoe_window_1m GROUP BY region, cdn \
         HAVING sum(attempts) >= 50",
    )
    .await
    .unwrap();
    let worst_by = |i: usize| {
        ranked
            .iter()
            .max_by(|a, b| {
                a[i].parse::<f64>()
                    .unwrap()
                    .total_cmp(&b[i].parse().unwrap())
            })
            .map(|r| format!("{} x {}", r[0], r[1]))
            .unwrap()
    };
    assert_eq!(worst_by(2), "eu-west x cdn-b", "worst rebuffering");
    assert_eq!(worst_by(3), "eu-west x cdn-b", "worst start failures");
}

/// The aggregator's view timeout in these runs (live and VOD), seconds.
const VIEW_TIMEOUT_SECS: i64 = 60;

/// Every view without a `view_end` whose last event is far enough before the end of the run
/// (view timeout, allowed lateness, a window and a margin for partitions whose last event is
/// a little earlier) has ended with reason `timeout`, at its last event; no view that sent a
/// `view_end` has.
async fn assert_silent_views_timed_out(database: &str, truth: &TruthFile) {
    let window = i64::from(truth.window_secs);
    let run_end = truth
        .rows
        .iter()
        .map(|r| i64::from(r.window_start) + window)
        .max()
        .expect("rows");
    let cutoff = run_end - VIEW_TIMEOUT_SECS - 30 - window - 30;
    let expected: std::collections::BTreeSet<(String, i64)> = truth
        .unended_views
        .iter()
        .map(|(v, last)| (v.clone(), last.div_euclid(1000)))
        .filter(|(_, last)| *last < cutoff)
        .collect();
    assert!(
        expected.len() > 10,
        "silent exits exercised: {}",
        expected.len()
    );
    let got: std::collections::BTreeSet<(String, i64)> = clickhouse_query(
        database,
        &format!(
            "SELECT view_id, toUnixTimestamp(last_event_time) FROM qoe_views \
             WHERE end_reason = 'timeout' AND toUnixTimestamp(last_event_time) < {cutoff}"
        ),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "views ended by timeout before {cutoff}"
    );
    assert_eq!(got, expected);
    let unended: std::collections::BTreeSet<&str> = truth
        .unended_views
        .iter()
        .map(|(v, _)| v.as_str())
        .collect();
    let timed_out = clickhouse_query(
        database,
        "SELECT view_id FROM qoe_views WHERE end_reason = 'timeout'",
    )
    .await
    .unwrap();
    for r in &timed_out {
        assert!(
            unended.contains(r[0].as_str()),
            "{} sent a view_end but ended by timeout",
            r[0]
        );
    }
}

/// Players that are rate limited retry with backoff, and no event is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_players_retry_and_lose_nothing() {
    let topic = unique("test.e2e.limited");
    let database = unique("test_e2e_limited");
    create_topic(&topic, 3).await.unwrap();
    let (_collector, url, _) = spawn_collector(
        &topic,
        &[
            "--rate-per-ip",
            "0",
            "--rate-events-per-ip",
            "0",
            "--rate-per-view",
            "1",
            "--rate-burst-factor",
            "1",
        ],
    )
    .await;
    let _aggregator = spawn_aggregator(&topic, &database, &unique("e2e"), &[]);
    let (truth, summary) = simulate(
        &url,
        &[
            "--seed",
            "5",
            "--viewers",
            "100",
            "--duration",
            "60s",
            "--speed",
            "20",
            "--ramp",
            "5s",
            "--duplicate-rate",
            "0.1",
        ],
    )
    .await;
    assert!(
        summary.contains("429:"),
        "the collector limited some requests: {summary}"
    );
    assert!(
        !summary.contains(", 0 retries"),
        "and they were retried: {summary}"
    );
    assert_clickhouse_equals(&database, &topic, &truth).await;
}
