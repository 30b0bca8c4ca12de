//! Ground truth for the aggregator tests: a varied, deterministic event set with late events,
//! and the expected metrics: lateness and duplicates replayed per partition here, each counted
//! event added by the simulator's plain reading of the spec's definitions (deliberately not
//! sharing code with the aggregator).

use qoe_schemas::{EndReason, EventType, QoeEvent, StreamType};
use qoe_simulator::truth::{add_event, row_key, Metrics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

pub const WINDOW_MS: i64 = 10_000;
pub const LATENESS_MS: i64 = 30_000;
/// The aggregator's default view timeouts (live, VOD): a view is forgotten, and its lost
/// events counted, once the watermark is this far past its last event.
pub const LIVE_TIMEOUT_MS: i64 = 120_000;
pub const VOD_TIMEOUT_MS: i64 = 600_000;

pub use qoe_simulator::truth::{RowKey, METRIC_COLUMNS};

/// Expected values of one row, by catalogue column.
pub type Row = Metrics;

fn base_event(
    view: &str,
    seq: u32,
    kind: EventType,
    t: i64,
    ctx: &(String, String, String, String, StreamType),
) -> QoeEvent {
    let mut e = QoeEvent::blank(view, seq, kind, t);
    (e.region, e.cdn, e.platform, e.stream_id) =
        (ctx.0.clone(), ctx.1.clone(), ctx.2.clone(), ctx.3.clone());
    e.stream_type = ctx.4;
    e.player = "sim".into();
    e.received_at = t + 200;
    e
}

/// A varied event stream for `views` views starting at `t0` (ms), in publish order:
/// interleaved views, some reordering within a view, duplicates, and some very late events.
pub fn generate(seed: u64, views: usize, t0: i64) -> Vec<QoeEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let regions = ["eu-west", "us-east", "ap-south"];
    let cdns = ["cdn-a", "cdn-b", "cdn-c"];
    let platforms = ["web", "ios"];
    let mut per_view: Vec<Vec<QoeEvent>> = Vec::new();
    for v in 0..views {
        let ctx = (
            regions[rng.random_range(0..3)].to_owned(),
            cdns[rng.random_range(0..3)].to_owned(),
            platforms[rng.random_range(0..2)].to_owned(),
            format!("ch-{}", rng.random_range(0..4)),
            if rng.random_bool(0.7) {
                StreamType::Live
            } else {
                StreamType::Vod
            },
        );
        let id = format!("view-{seed}-{v}");
        let mut t = t0 + rng.random_range(0..120_000);
        let mut seq = 0;
        let mut evs = vec![base_event(&id, seq, EventType::ViewStart, t, &ctx)];
        let fate: f64 = rng.random();
        if fate < 0.08 {
            // Start failure.
            seq += 1;
            t += rng.random_range(100..3000);
            let mut e = base_event(&id, seq, EventType::Error, t, &ctx);
            e.fatal = Some(true);
            e.started = Some(false);
            e.code = Some("NETWORK".into());
            evs.push(e);
            seq += 1;
            let mut end = base_event(&id, seq, EventType::ViewEnd, t + 10, &ctx);
            end.started = Some(false);
            end.reason = Some(EndReason::Error);
            evs.push(end);
        } else if fate < 0.15 {
            // Exit before video start.
            seq += 1;
            t += rng.random_range(500..9000);
            let mut end = base_event(&id, seq, EventType::ViewEnd, t, &ctx);
            end.started = Some(false);
            end.reason = Some(EndReason::Exit);
            evs.push(end);
        } else {
            seq += 1;
            let startup = [
                120, 250, 251, 700, 1000, 1800, 2600, 4000, 7000, 12000, 15000, 20000,
            ][rng.random_range(0..12)];
            t += i64::from(startup);
            let mut ff = base_event(&id, seq, EventType::FirstFrame, t, &ctx);
            // Now and then a player that cannot measure its startup: still a play.
            ff.startup_ms = (!rng.random_bool(0.05)).then_some(startup);
            ff.bitrate_kbps = Some(2500);
            evs.push(ff);
            let mut bitrate = 2500u32;
            for _ in 0..rng.random_range(1..12) {
                seq += 1;
                let r: f64 = rng.random();
                if r < 0.15 {
                    let mut s = base_event(&id, seq, EventType::StallStart, t + 3000, &ctx);
                    s.started = Some(true);
                    s.playing_ms = Some(3000);
                    s.bitrate_kbps = Some(bitrate);
                    evs.push(s);
                    seq += 1;
                    let stall = rng.random_range(200..6000);
                    t += 3000 + i64::from(stall);
                    let mut e = base_event(&id, seq, EventType::StallEnd, t, &ctx);
                    e.stall_ms = Some(stall);
                    evs.push(e);
                } else if r < 0.22 {
                    t += 1500;
                    let mut e = base_event(&id, seq, EventType::Seek, t, &ctx);
                    e.started = Some(true);
                    e.playing_ms = Some(1500);
                    e.bitrate_kbps = Some(bitrate);
                    evs.push(e);
                } else if r < 0.35 {
                    t += 2000;
                    let new = [800u32, 1500, 2500, 4500][rng.random_range(0..4)];
                    let mut e = base_event(&id, seq, EventType::BitrateChange, t, &ctx);
                    e.prev_bitrate_kbps = Some(bitrate);
                    e.bitrate_kbps = Some(new);
                    e.playing_ms = Some(2000);
                    bitrate = new;
                    evs.push(e);
                } else {
                    t += 10_000;
                    let mut e = base_event(&id, seq, EventType::Heartbeat, t, &ctx);
                    e.started = Some(true);
                    e.playing_ms = Some(rng.random_range(8000..10_000));
                    e.stall_ms = Some(0);
                    e.bitrate_kbps = Some(bitrate);
                    e.dropped_frames = Some(rng.random_range(0..5));
                    if ctx.4 == StreamType::Live {
                        e.latency_ms = Some(rng.random_range(2000..8000));
                    }
                    evs.push(e);
                }
            }
            seq += 1;
            t += 500;
            if rng.random_bool(0.1) {
                let mut e = base_event(&id, seq, EventType::Error, t, &ctx);
                e.fatal = Some(rng.random_bool(0.7));
                e.started = Some(true);
                e.code = Some("DECODE".into());
                evs.push(e);
                seq += 1;
            }
            let mut end = base_event(&id, seq, EventType::ViewEnd, t + 100, &ctx);
            end.started = Some(true);
            end.reason = Some(if rng.random_bool(0.5) {
                EndReason::Completed
            } else {
                EndReason::Exit
            });
            evs.push(end);
        }
        // Lost on the way: a body that never arrived (a gap in the view's `seq`).
        if evs.len() >= 3 && rng.random_bool(0.15) {
            let i = rng.random_range(1..evs.len() - 1);
            evs.remove(i);
        }
        // Out of order: swap a neighbouring pair now and then.
        if evs.len() > 3 && rng.random_bool(0.3) {
            let i = rng.random_range(1..evs.len() - 1);
            evs.swap(i, i + 1);
        }
        // Duplicates: a client retry repeats an event byte for byte.
        if rng.random_bool(0.2) {
            let i = rng.random_range(0..evs.len());
            let dup = evs[i].clone();
            evs.insert(i + 1, dup);
        }
        per_view.push(evs);
    }
    // Interleave views in time order of their events, roughly like live traffic.
    let mut all: Vec<(i64, usize, QoeEvent)> = Vec::new();
    for (v, evs) in per_view.into_iter().enumerate() {
        let mut clock = 0;
        for e in evs {
            clock = clock.max(e.event_time);
            all.push((clock, v, e));
        }
    }
    all.sort_by_key(|(t, v, _)| (*t, *v));
    let mut out: Vec<QoeEvent> = all.into_iter().map(|(_, _, e)| e).collect();
    // Very late arrivals: a few events delivered minutes after their time (e.g. a phone that
    // was offline); with 30 s lateness they must land in late_events.
    let mut late = Vec::new();
    for i in (0..out.len()).step_by(97) {
        let mut e = out[i].clone();
        e.seq += 10_000; // a distinct event, not a duplicate
        e.kind = EventType::Heartbeat;
        e.started = Some(true);
        e.playing_ms = Some(1234);
        e.stall_ms = None;
        e.startup_ms = None;
        e.fatal = None;
        e.reason = None;
        e.bitrate_kbps = Some(1000);
        late.push(e);
    }
    out.extend(late);
    out
}

/// Expected base-grain rows and distinct views, from the messages in partition order.
/// `ordered` holds, per partition, its events in offset order.
pub fn expected(
    ordered: &BTreeMap<i32, Vec<QoeEvent>>,
) -> (BTreeMap<RowKey, Row>, BTreeMap<RowKey, u64>) {
    let mut rows: BTreeMap<RowKey, Row> = BTreeMap::new();
    let mut views: BTreeMap<RowKey, BTreeSet<String>> = BTreeMap::new();
    for events in ordered.values() {
        let mut max_time = i64::MIN;
        let mut seen: BTreeSet<(String, u32)> = BTreeSet::new();
        // Per held view: its latest counted event (for its slice), last event time, how many
        // sequence numbers counted and the highest.
        let mut held: BTreeMap<String, (QoeEvent, i64, u64, u32)> = BTreeMap::new();
        let mut expired_mark = i64::MIN;
        for e in events {
            let key = row_key(e, WINDOW_MS);
            let window = i64::from(key.0) * 1000;
            let row = rows.entry(key.clone()).or_default();
            let watermark = max_time.saturating_sub(LATENESS_MS);
            max_time = max_time.max(e.event_time.min(e.received_at));
            if window + WINDOW_MS <= watermark {
                row.bump("late_events", 1);
                forget_views(&mut held, &mut rows, max_time, &mut expired_mark);
                continue;
            }
            if !seen.insert((e.view_id.clone(), e.seq)) {
                row.bump("duplicate_events", 1);
                forget_views(&mut held, &mut rows, max_time, &mut expired_mark);
                continue;
            }
            views.entry(key).or_default().insert(e.view_id.clone());
            add_event(row, e);
            let view = held
                .entry(e.view_id.clone())
                .or_insert_with(|| (e.clone(), e.event_time, 0, 0));
            view.0 = e.clone();
            view.1 = view.1.max(e.event_time);
            view.2 += 1;
            view.3 = view.3.max(e.seq);
            forget_views(&mut held, &mut rows, max_time, &mut expired_mark);
        }
    }
    let views = views
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    (rows, views)
}

/// After each message: when the watermark enters a new window, the views whose last event is
/// a timeout behind it are forgotten, and the sequence numbers they never counted (below their
/// highest) are `events_lost` in the window of their last event and their latest slice.
fn forget_views(
    held: &mut BTreeMap<String, (QoeEvent, i64, u64, u32)>,
    rows: &mut BTreeMap<RowKey, Row>,
    max_time: i64,
    expired_mark: &mut i64,
) {
    let watermark = max_time.saturating_sub(LATENESS_MS);
    let mark = watermark.div_euclid(WINDOW_MS);
    if mark <= *expired_mark {
        return;
    }
    *expired_mark = mark;
    held.retain(|_, (latest, last_time, counted, max_seq)| {
        let timeout = match latest.stream_type {
            StreamType::Vod => VOD_TIMEOUT_MS,
            _ => LIVE_TIMEOUT_MS,
        };
        if *last_time + timeout > watermark {
            return true;
        }
        let lost = (u64::from(*max_seq) + 1).saturating_sub(*counted);
        if lost > 0 {
            let at = QoeEvent {
                event_time: *last_time,
                ..latest.clone()
            };
            rows.entry(row_key(&at, WINDOW_MS))
                .or_default()
                .bump("events_lost", lost);
        }
        false
    });
}

/// Rolls base-grain rows up to a coarser grain (seconds).
pub fn rollup(rows: &BTreeMap<RowKey, Row>, grain_secs: u32) -> BTreeMap<RowKey, Row> {
    let mut out: BTreeMap<RowKey, Row> = BTreeMap::new();
    for (k, v) in rows {
        let mut key = k.clone();
        key.0 = k.0 / grain_secs * grain_secs;
        out.entry(key).or_default().add(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' oracle has a rule for every catalogue column: over the generated event set
    /// (every event kind, duplicates, late arrivals), no column stays at zero.
    #[test]
    fn every_catalogue_column_has_a_rule() {
        let events = generate(7, 400, 1_763_721_600_000);
        let mut ordered = BTreeMap::new();
        ordered.insert(0, events);
        let (rows, _) = expected(&ordered);
        let mut total = Metrics::default();
        for r in rows.values() {
            total.add(r);
        }
        for column in METRIC_COLUMNS {
            // Request metrics come from CMCD request reports and CDN logs, which beacons do not
            // carry: tests/tests/cmcd.rs and tests/tests/cdn_logs.rs check them exactly.
            let from_requests = qoe_schemas::metrics::metric_of_column(column)
                .is_some_and(|m| m.input != qoe_schemas::metrics::Input::Events);
            if from_requests {
                assert_eq!(total.get(column), 0, "{column} from beacon events");
                continue;
            }
            assert!(total.get(column) > 0, "no oracle rule produced {column}");
        }
    }
}
