//! Views over their whole life, against the real broker and ClickHouse (SPEC §4 per-view
//! summaries, §5 duplicates): a body re-sent minutes later counts once whatever the flush
//! timing and across a kill -9; silent views end with reason `timeout` at the configured time,
//! also across a restart.
//!
//! Messages are published as the collector writes them: a copy re-sent five minutes later
//! with its original `sent_at` has its event times (and arrival) moved by the five minutes,
//! which is the collector's clock correction (`schemas/src/validate.rs`, `corrected_time`).

use qoe_schemas::{EndReason, EventType, QoeEvent, StreamType};
use qoe_tests::{
    clickhouse_query, create_topic, publish, spawn_aggregator, unique, wait_caught_up,
};
use std::collections::BTreeMap;
use std::time::Duration;

const T0: i64 = 1_763_721_600_000;

fn event(view: &str, seq: u32, kind: EventType, t: i64) -> QoeEvent {
    let mut e = QoeEvent::blank(view, seq, kind, t);
    e.region = "eu-west".into();
    e.cdn = "cdn-a".into();
    e.received_at = t + 200;
    e
}

fn heartbeat(view: &str, seq: u32, t: i64) -> QoeEvent {
    let mut e = event(view, seq, EventType::Heartbeat, t);
    e.started = Some(true);
    e.playing_ms = Some(10_000);
    e.stall_ms = Some(0);
    e.bitrate_kbps = Some(3000);
    e
}

/// A view's first body: start, first frame, first heartbeat.
fn first_body(view: &str, t: i64) -> Vec<QoeEvent> {
    let mut ff = event(view, 1, EventType::FirstFrame, t + 900);
    ff.startup_ms = Some(900);
    ff.bitrate_kbps = Some(3000);
    vec![
        event(view, 0, EventType::ViewStart, t),
        ff,
        heartbeat(view, 2, t + 10_000),
    ]
}

fn end(view: &str, seq: u32, t: i64, started: bool, reason: EndReason) -> QoeEvent {
    let mut e = event(view, seq, EventType::ViewEnd, t);
    e.started = Some(started);
    e.reason = Some(reason);
    e
}

/// Publishes and waits until the aggregator's checkpoints cover it.
async fn publish_and_wait(
    topic: &str,
    db: &str,
    events: &[QoeEvent],
    next: &mut BTreeMap<i32, i64>,
) {
    for (p, (_, n)) in publish(topic, events).await {
        next.insert(p, n);
    }
    wait_caught_up(db, topic, next, Duration::from_secs(120)).await;
}

async fn one_row(db: &str, sql: &str) -> Vec<String> {
    let rows = clickhouse_query(db, sql).await.unwrap();
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows.into_iter().next().unwrap()
}

/// One run of the re-send scenario; `flush_ms` is the aggregator's flush interval, `kill`
/// whether it is killed (-9) and restarted between the original and the copy.
async fn resent_body_scenario(flush_ms: u64, kill: bool) {
    let name = format!("flush {flush_ms} ms, kill -9 between: {kill}");
    let topic = unique("test.views.resend");
    let db = unique("qoe_test_resend");
    create_topic(&topic, 2).await.unwrap();
    let flush = flush_ms.to_string();
    let args = ["--flush-interval-ms", flush.as_str()];
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &args);
    let view = "resender";
    let original = first_body(view, T0);
    // The view plays on: a heartbeat every 10 s for six minutes.
    let heartbeats: Vec<QoeEvent> = (1..=36)
        .map(|i| heartbeat(view, 2 + i, T0 + 10_000 + i64::from(i) * 10_000))
        .collect();
    let (before, after): (Vec<_>, Vec<_>) = heartbeats
        .into_iter()
        .partition(|e| e.event_time < T0 + 300_000);
    let mut next = BTreeMap::new();
    let mut phase1 = original.clone();
    phase1.extend(before);
    publish_and_wait(&topic, &db, &phase1, &mut next).await;
    if kill {
        agg.kill9();
        agg = spawn_aggregator(&topic, &db, &unique("g"), &args);
    }
    // The same body, five minutes later, with its original sent_at.
    let copy: Vec<QoeEvent> = original
        .iter()
        .map(|e| {
            let mut c = e.clone();
            c.event_time += 300_000;
            c.received_at += 300_000;
            c
        })
        .collect();
    let last_seq = after.last().map(|e| e.seq).unwrap_or(0);
    let mut phase2 = copy;
    phase2.extend(after);
    phase2.push(end(
        view,
        last_seq + 1,
        T0 + 380_000,
        true,
        EndReason::Completed,
    ));
    publish_and_wait(&topic, &db, &phase2, &mut next).await;
    let totals = one_row(
        &db,
        "SELECT sum(events), sum(attempts), sum(plays), sum(duplicate_events), sum(late_events), \
         sum(playing_ms) FROM qoe_window_10s",
    )
    .await;
    let events = (phase1.len() + phase2.len() - 3).to_string();
    assert_eq!(
        totals,
        [events.as_str(), "1", "1", "3", "0", "370000"],
        "{name}: events, attempts, plays, duplicates, late, playing_ms"
    );
    let views = one_row(
        &db,
        "SELECT view_id, startup_ms, playing_ms, end_reason FROM qoe_views",
    )
    .await;
    assert_eq!(views, [view, "900", "370000", "completed"], "{name}");
    // Its experience score, as qoe_views computes it, is the definition's for its totals.
    let want = qoe_schemas::score::Score::of(
        &qoe_schemas::score::Totals {
            attempts: 1.0,
            startups: 1.0,
            startup_ms_sum: 900.0,
            playing_ms: 370_000.0,
            bitrate_kbps_ms: 3000.0 * 370_000.0,
            ..Default::default()
        },
        qoe_schemas::score::DEFAULT_TOP_KBPS,
    )
    .overall
    .unwrap();
    let score = one_row(&db, "SELECT score FROM qoe_views").await;
    assert!(
        (score[0].parse::<f64>().unwrap() - want).abs() <= 0.051,
        "{name}: score {score:?}, the definition gives {want:.2}"
    );
    drop(agg);
}

#[tokio::test]
async fn a_body_resent_five_minutes_later_counts_once() {
    // Independent topics and databases: the four runs share the machine, not state.
    tokio::join!(
        resent_body_scenario(100, false),
        resent_body_scenario(10_000, false),
        resent_body_scenario(100, true),
        resent_body_scenario(10_000, true),
    );
}

/// With a 30 s view timeout: a live view that goes silent ends with `timeout` once the
/// watermark is 30 s past its last event, even when the aggregator is killed while the view is
/// silent; a view that ended says how; a VOD view (longer timeout) stays live; a timeout is not
/// an exit before video start.
#[tokio::test]
async fn silent_views_end_by_timeout_across_a_restart() {
    let topic = unique("test.views.silent");
    let db = unique("qoe_test_silent");
    create_topic(&topic, 2).await.unwrap();
    let args = [
        "--view-timeout-secs",
        "30",
        "--vod-view-timeout-secs",
        "600",
    ];
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &args);
    let mut phase1 = first_body("silent", T0);
    let mut never_started = first_body("silent-before-start", T0);
    never_started.truncate(1);
    phase1.extend(never_started);
    let mut vod = first_body("silent-vod", T0);
    for e in &mut vod {
        e.stream_type = StreamType::Vod;
    }
    phase1.extend(vod);
    phase1.push(event("quitter", 0, EventType::ViewStart, T0));
    phase1.push(end("quitter", 1, T0 + 2_000, false, EndReason::Exit));
    phase1.extend(first_body("busy", T0));
    let mut next = BTreeMap::new();
    publish_and_wait(&topic, &db, &phase1, &mut next).await;
    let live = one_row(&db, "SELECT count() FROM qoe_views WHERE end_reason = ''").await;
    assert_eq!(live, ["4"], "nothing has timed out yet");
    agg.kill9();
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &args);
    // The busy view plays three more minutes, then ends.
    let mut phase2: Vec<QoeEvent> = (1..=18)
        .map(|i| heartbeat("busy", 2 + i, T0 + 10_000 + i64::from(i) * 10_000))
        .collect();
    phase2.push(end("busy", 21, T0 + 200_000, true, EndReason::Completed));
    // Views on both partitions keep their watermarks moving.
    for i in 0..24u32 {
        let t = T0 + i64::from(i) * 10_000 + 5_000;
        phase2.push(heartbeat(&format!("clock-{}", i % 8), i / 8, t));
    }
    phase2.sort_by_key(|e| e.event_time);
    publish_and_wait(&topic, &db, &phase2, &mut next).await;
    let rows = clickhouse_query(
        &db,
        "SELECT view_id, end_reason, toUnixTimestamp(last_event_time) FROM qoe_views \
         WHERE NOT startsWith(view_id, 'clock') ORDER BY view_id",
    )
    .await
    .unwrap();
    let secs = |ms: i64| (ms / 1000).to_string();
    let want: Vec<Vec<String>> = [
        ("busy", "completed", secs(T0 + 200_000)),
        ("quitter", "exit", secs(T0 + 2_000)),
        ("silent", "timeout", secs(T0 + 10_000)),
        ("silent-before-start", "timeout", secs(T0)),
        ("silent-vod", "", secs(T0 + 10_000)),
    ]
    .into_iter()
    .map(|(v, r, t)| vec![v.to_owned(), r.to_owned(), t])
    .collect();
    assert_eq!(rows, want);
    let ebvs = one_row(&db, "SELECT sum(ebvs) FROM qoe_window_10s").await;
    assert_eq!(
        ebvs,
        ["1"],
        "only the quitter exited before start; a timeout is not an exit"
    );
}
