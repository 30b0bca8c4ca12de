//! The whole pipeline with real processes: simulator -> collector -> broker -> aggregator ->
//! ClickHouse. Every metric of every window and slice in ClickHouse equals the simulator's
//! ground truth of the events the collector acknowledged, exactly, at 10 s, 1 min and 1 h;
//! late re-sends (moved into later windows by their original `sent_at`) count once; views
//! that left silently end with reason `timeout`. Run with each Kafka message format.

use qoe_simulator::truth::TruthFile;
use qoe_tests::{
    assert_clickhouse_equals, clickhouse_query, create_topic, simulate, spawn_aggregator,
    spawn_collector, unique,
};
use std::collections::{BTreeMap, BTreeSet};

const INCIDENT: &str =
    "region=eu-west,cdn=cdn-b,start=0s,duration=4m,stalls=8,stall_length=2,startup=3,start_failures=0.4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_equals_the_simulators_ground_truth() {
    end_to_end("beacon").await;
}

/// The same run with the other Kafka message format, which the aggregator reads as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_equals_the_ground_truth_with_one_message_per_event() {
    end_to_end("event").await;
}

/// The run, with the collector writing Kafka messages in `format`.
async fn end_to_end(format: &str) {
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
            "--kafka-message-format",
            format,
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
            "--business-error-codes",
            BUSINESS_CODES,
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
            "--native-share",
            "0.25",
            "--incident",
            INCIDENT,
            "--business-refusal-rate",
            "0.01",
            "--business-error-codes",
            BUSINESS_CODES,
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
    assert_error_codes_equal(&database, &truth).await;
    let total = |name: &str| rows.values().map(|r| r.get(name)).sum::<u64>();
    assert!(
        total("events") > 10_000,
        "a substantial run: {} events",
        total("events")
    );
    assert!(total("duplicate_events") > 50, "duplicates exercised");
    // Native players: their CDN's logs, a share of them sent twice, counted once.
    assert!(
        truth.acknowledged_requests > 1_000,
        "{}",
        truth.acknowledged_requests
    );
    for metric in [
        "rm_requests",
        "rm_request_errors",
        "rm_media_requests",
        "rm_starvations",
        "rm_startup_requests",
        "rm_duplicate_requests",
    ] {
        assert!(total(metric) > 0, "{metric} exercised");
    }
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

/// The simulator's business codes, spelt as an operator might (matching ignores case).
const BUSINESS_CODES: &str = "entitlement_denied, GEO_BLOCKED,Concurrent_Stream_Limit";

/// Errors by code per minute equal the truth's, key by key (code, player, fatal, started,
/// business), with the attempts of each slice and player; business refusals are there; the
/// table adds up to the window tables' `errors` and `attempts`, every hour as every minute.
async fn assert_error_codes_equal(database: &str, truth: &TruthFile) {
    type Key = qoe_simulator::truth::ErrorCodeKey;
    let expected: BTreeMap<Key, (u64, u64)> = truth
        .error_codes
        .iter()
        .map(|r| (r.key(), (r.errors, r.attempts)))
        .collect();
    let got: BTreeMap<Key, (u64, u64)> = clickhouse_query(
        database,
        "SELECT toUnixTimestamp(window_start), region, cdn, stream_type, platform, player, \
         error_code, fatal, started, business, sum(errors), sum(attempts) \
         FROM qoe_error_codes_1m GROUP BY window_start, region, cdn, stream_type, platform, \
         player, error_code, fatal, started, business",
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let flag = |s: &str| s == "1";
        (
            (
                r[0].parse().unwrap(),
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                r[5].clone(),
                r[6].clone(),
                flag(&r[7]),
                flag(&r[8]),
                flag(&r[9]),
            ),
            (r[10].parse().unwrap(), r[11].parse().unwrap()),
        )
    })
    .collect();
    let business: u64 = expected.iter().filter(|(k, _)| k.9).map(|(_, n)| n.0).sum();
    assert!(business > 5, "business refusals exercised: {business}");
    let players: BTreeSet<&str> = expected.keys().map(|k| k.5.as_str()).collect();
    assert!(players.len() >= 4, "codes of every player: {players:?}");
    for (k, n) in &expected {
        assert_eq!(got.get(k), Some(n), "errors by code {k:?}");
    }
    assert_eq!(got.len(), expected.len(), "no row beyond the truth's");
    let totals = |table: &str| {
        let sql = format!("SELECT sum(errors), sum(attempts) FROM {table}");
        async move { clickhouse_query(database, &sql).await.unwrap() }
    };
    let windows = totals("qoe_window_1m").await;
    assert_eq!(
        windows[0],
        [
            expected.values().map(|n| n.0).sum::<u64>().to_string(),
            expected.values().map(|n| n.1).sum::<u64>().to_string()
        ],
        "errors by code add up to errors, and their attempts to attempts"
    );
    assert_eq!(
        totals("qoe_error_codes_1h").await,
        windows,
        "hourly as per minute"
    );
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
