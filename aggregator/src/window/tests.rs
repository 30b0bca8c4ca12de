//! Unit tests of partition windowing.

use super::*;
use crate::checkpoint::Checkpoint;
use qoe_schemas::errors::{CODES_PER_HOUR, OTHER_CODE};
use qoe_schemas::QoeEvent;
use std::collections::BTreeMap;

const HOUR_MS: i64 = 3_600_000;

/// A hasher under which every view id collides.
#[derive(Default)]
struct Colliding;
impl std::hash::Hasher for Colliding {
    fn finish(&self) -> u64 {
        42
    }
    fn write(&mut self, _: &[u8]) {}
}
type CollidingState = std::hash::BuildHasherDefault<Colliding>;

#[test]
fn views_whose_ids_collide_are_still_told_apart() {
    let mut p = PartitionState::<CollidingState>::with_hasher(WindowConfig::default(), None);
    let t = 1_000_000;
    for (o, view) in ["view-a", "view-b", "view-c"].into_iter().enumerate() {
        assert_eq!(
            p.apply(o as i64, &ev(view, 0, EventType::ViewStart, t)),
            Outcome::Accepted,
            "{view}"
        );
    }
    assert_eq!(
        p.apply(3, &ev("view-b", 0, EventType::ViewStart, t)),
        Outcome::Duplicate
    );
    assert_eq!(p.views(), 3);
    // Views are forgotten once silent for the timeout.
    let far = t + 10 * 60_000;
    p.apply(4, &ev("view-d", 0, EventType::ViewStart, far));
    assert_eq!(p.views(), 1);
    assert_eq!(
        p.apply(5, &ev("view-e", 0, EventType::ViewStart, far)),
        Outcome::Accepted
    );
}

/// A view's events: a start batch, then heartbeats every 10 s for `minutes`.
fn playing_view(id: &str, t0: i64, minutes: i64) -> Vec<EventRef<'static>> {
    let mut out = vec![
        ev(id, 0, EventType::ViewStart, t0),
        ev(id, 1, EventType::FirstFrame, t0 + 800),
    ];
    for i in 1..=minutes * 6 {
        out.push(ev(id, 1 + i as u32, EventType::Heartbeat, t0 + i * 10_000));
    }
    out
}

/// `e` re-sent `delay_ms` later with its original `sent_at`: the collector's clock
/// correction moves it by the delay.
fn resent(e: &EventRef<'static>, delay_ms: i64) -> EventRef<'static> {
    let mut q = e.clone();
    q.event_time += delay_ms;
    q.received_at += delay_ms;
    q
}

#[test]
fn a_copy_resent_minutes_later_counts_once_whatever_the_flush_timing() {
    let t0 = 1_000_000;
    let view = playing_view("v", t0, 6);
    // The start batch again, five minutes later, among the view's heartbeats.
    let at = 2 + 30;
    let mut messages: Vec<EventRef<'static>> = view[..at].to_vec();
    messages.push(resent(&view[0], 300_000));
    messages.push(resent(&view[1], 300_000));
    messages.extend_from_slice(&view[at..]);
    for flush_every in [1, 3, 7, 1000] {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let mut outcomes = Vec::new();
        let (mut attempts, mut plays, mut dups) = (0, 0, 0);
        for (o, e) in messages.iter().enumerate() {
            outcomes.push(p.apply(o as i64, e));
            if o % flush_every == 0 {
                let (b, _) = p.take_batch(o % (3 * flush_every) == 0);
                for (_, _, m) in b.window_rows() {
                    (attempts, plays, dups) = (
                        attempts + m.attempts,
                        plays + m.plays,
                        dups + m.duplicate_events,
                    );
                }
            }
        }
        let (b, _) = p.take_batch(false);
        for (_, _, m) in b.window_rows() {
            (attempts, plays, dups) = (
                attempts + m.attempts,
                plays + m.plays,
                dups + m.duplicate_events,
            );
        }
        assert_eq!(
            outcomes[at..at + 2],
            [Outcome::Duplicate; 2],
            "flush every {flush_every}"
        );
        assert_eq!(
            (attempts, plays, dups),
            (1, 1, 2),
            "flush every {flush_every}"
        );
    }
}

#[test]
fn silent_views_end_by_timeout_and_ended_views_do_not() {
    let t0 = 1_000_000;
    let mut p = PartitionState::new(WindowConfig::default(), None);
    let mut o = 0;
    let mut feed = |p: &mut PartitionState, e: EventRef<'static>| {
        p.apply(o, &e);
        o += 1;
    };
    feed(&mut p, ev("silent", 0, EventType::ViewStart, t0));
    feed(&mut p, ev("quit", 0, EventType::ViewStart, t0));
    let mut end = ev("quit", 1, EventType::ViewEnd, t0 + 1000);
    end.reason = Some(qoe_schemas::EndReason::Exit);
    end.started = Some(false);
    feed(&mut p, end);
    // Another view keeps the watermark moving for three minutes.
    for e in playing_view("busy", t0, 3) {
        feed(&mut p, e);
    }
    let (b, _) = p.take_batch(false);
    let rows: Vec<_> = b
        .view_rows()
        .map(|(id, _, v)| (id, v.end_reason, v.end_time))
        .collect();
    assert!(rows.contains(&("silent", "timeout", t0)), "{rows:?}");
    assert!(rows.contains(&("quit", "exit", t0 + 1000)), "{rows:?}");
    let ebvs: u64 = b.window_rows().map(|(_, _, m)| m.ebvs).sum();
    assert_eq!(ebvs, 1, "the exit before start is EBVS, the timeout is not");
    assert_eq!(p.views(), 1, "only the busy view is held");
}

#[test]
fn a_restart_from_an_older_snapshot_rebuilds_the_same_state() {
    let config = WindowConfig::default();
    let mut events: Vec<EventRef<'static>> = Vec::new();
    for i in 0..8 {
        let view = playing_view(&format!("v{i}"), 1_000_000 + i * 7_000, 2 + i % 3);
        events.extend(view);
    }
    events.sort_by_key(|e| e.event_time);
    let copies: Vec<_> = events
        .iter()
        .step_by(5)
        .map(|e| resent(e, 60_000))
        .collect();
    for (i, c) in copies.into_iter().enumerate() {
        events.insert((i * 7 + 40).min(events.len()), c);
    }
    let mut a = PartitionState::new(config.clone(), None);
    let whole: Vec<Outcome> = events
        .iter()
        .enumerate()
        .map(|(o, e)| a.apply(o as i64, e))
        .collect();
    // Snapshot at 60, a checkpoint without one at 120, then a crash.
    let mut b = PartitionState::new(config.clone(), None);
    for (o, e) in events.iter().enumerate().take(120) {
        b.apply(o as i64, e);
        if o == 59 {
            let _ = b.take_batch(true);
        }
    }
    let (_, snapshot) = b.take_batch(true);
    let (_, snap60) = {
        let mut b2 = PartitionState::new(config.clone(), None);
        for (o, e) in events.iter().enumerate().take(60) {
            b2.apply(o as i64, e);
        }
        b2.take_batch(true)
    };
    assert!(snap60.has_snapshot() && snap60.snapshot_offset == 60);
    let mut c = PartitionState::new(config.clone(), Some(snap60)).discarding_until(120);
    for (o, e) in events.iter().enumerate().skip(60).take(60) {
        assert!(c.replaying());
        c.apply(o as i64, e);
    }
    assert!(
        !c.replaying() && c.pending().is_empty(),
        "replayed rows are not written twice"
    );
    assert_eq!(c.views.held(), b.views.held());
    assert_eq!(c.snapshot(), snapshot.state);
    for (o, e) in events.iter().enumerate().skip(120) {
        assert_eq!(c.apply(o as i64, e), whole[o], "event {o}");
    }
    assert_eq!(c.snapshot(), a.snapshot());
}

fn ev(view: &str, seq: u32, kind: EventType, t: i64) -> EventRef<'static> {
    let e = QoeEvent {
        received_at: t + 100,
        playing_ms: Some(1000),
        ..QoeEvent::blank(view, seq, kind, t)
    };
    Box::leak(Box::new(e)).borrowed()
}

fn error(view: &str, seq: u32, t: i64, code: &str, fatal: bool) -> EventRef<'static> {
    let e = QoeEvent {
        received_at: t + 100,
        fatal: Some(fatal),
        started: Some(false),
        code: Some(code.into()),
        ..QoeEvent::blank(view, seq, EventType::Error, t)
    };
    Box::leak(Box::new(e)).borrowed()
}

/// `(window, code, fatal, business)` -> errors, over a batch's error rows.
fn codes_of(batch: &Batch) -> BTreeMap<(i64, String, bool, bool), u64> {
    let mut out = BTreeMap::new();
    for r in batch.error_rows().filter(|r| r.errors > 0) {
        *out.entry((r.window_start, r.code.to_owned(), r.fatal, r.business))
            .or_default() += r.errors;
    }
    out
}

#[test]
fn errors_count_by_code_and_business_codes_are_no_failures() {
    let config = WindowConfig {
        business: Arc::new(BusinessCodes::parse("geo_blocked").unwrap()),
        ..WindowConfig::default()
    };
    let mut p = PartitionState::new(config, None);
    let t = 1_700_000_000_000;
    p.apply(0, &error("a", 1, t, "GEO_BLOCKED", true));
    p.apply(1, &error("b", 1, t + 1, " 1001 ", true));
    p.apply(2, &error("c", 1, t + 2, "1001", false));
    // A duplicate counts nowhere.
    p.apply(3, &error("c", 1, t + 2, "1001", false));
    let (batch, _) = p.take_batch(false);
    let w = t / 10_000 * 10_000;
    assert_eq!(
        codes_of(&batch),
        BTreeMap::from([
            ((w, "1001".into(), false, false), 1),
            ((w, "1001".into(), true, false), 1),
            ((w, "GEO_BLOCKED".into(), true, true), 1),
        ])
    );
    let m: Vec<_> = batch.window_rows().map(|(_, _, m)| m.clone()).collect();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].errors, m[0].vsf, m[0].duplicate_events), (3, 1, 1));
}

#[test]
fn distinct_codes_are_bounded_per_hour_and_named_alike_after_a_restart() {
    let t = 1_700_000_000_000 / HOUR_MS * HOUR_MS;
    let events: Vec<EventRef<'static>> = (0..CODES_PER_HOUR as u32 + 5)
        .map(|i| {
            error(
                &format!("v{i}"),
                1,
                t + i64::from(i),
                &format!("E{i}"),
                false,
            )
        })
        .chain([error("late-code", 1, t + 500, "E0", false)])
        .chain([error("next-hour", 1, t + HOUR_MS + 1, "E104", false)])
        .collect();
    let mut whole = PartitionState::new(WindowConfig::default(), None);
    for (o, e) in events.iter().enumerate() {
        whole.apply(o as i64, e);
    }
    let (batch, _) = whole.take_batch(false);
    let named = codes_of(&batch);
    let other: u64 = named
        .iter()
        .filter(|((_, c, ..), _)| c == OTHER_CODE)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        other, 5,
        "codes beyond the first {CODES_PER_HOUR} of the hour"
    );
    assert_eq!(named[&(t, "E0".to_owned(), false, false)], 2);
    let next = (t + HOUR_MS + 1) / 10_000 * 10_000;
    assert_eq!(
        named[&(next, "E104".to_owned(), false, false)],
        1,
        "a new hour names again"
    );

    // Stopped after 60 messages with a snapshot, resumed: the same names.
    let mut first = PartitionState::new(WindowConfig::default(), None);
    for (o, e) in events.iter().enumerate().take(60) {
        first.apply(o as i64, e);
    }
    let (b1, cp) = first.take_batch(true);
    let mut second = PartitionState::new(WindowConfig::default(), Some(cp));
    for (o, e) in events.iter().enumerate().skip(60) {
        second.apply(o as i64, e);
    }
    let (b2, _) = second.take_batch(false);
    let mut resumed = codes_of(&b1);
    for (k, n) in codes_of(&b2) {
        *resumed.entry(k).or_default() += n;
    }
    assert_eq!(resumed, named);
}

#[test]
fn cmcd_sessions_and_duplicates_survive_a_restart() {
    use qoe_schemas::cmcd::CmcdReport;
    let report = |sn: i64, at: i64, e: &str, sta: Option<&str>| CmcdMessage {
        cmcd: CmcdReport {
            e: e.into(),
            ts: 1_000_000 + at,
            sid: "s-1".into(),
            sn: Some(sn),
            sta: sta.map(str::to_owned),
            ..CmcdReport::default()
        },
        received_at: 1_000_000 + at,
        region: "r".into(),
        cdn: "c".into(),
        platform: "web".into(),
        player: "p".into(),
        cdn_rank: 0,
    };
    let reports = [
        report(0, 0, "ps", Some("s")),
        report(1, 400, "ps", Some("p")),
        report(2, 10_400, "t", None),
    ];
    let mut a = PartitionState::new(WindowConfig::default(), None);
    for (o, m) in reports.iter().enumerate() {
        assert_eq!(a.apply_cmcd(o as i64, m), Outcome::Accepted);
    }
    let (_, cp) = a.take_batch(true);
    assert!(
        cp.state.contains("s-1"),
        "the open session travels with the checkpoint"
    );
    let mut b = PartitionState::new(WindowConfig::default(), Some(cp.clone()));
    for o in cp.state_offset..cp.next_offset {
        b.restore_cmcd(o, &reports[o as usize]);
    }
    // A retried copy is still a duplicate, and the session goes on where it was: 10 s of
    // playing at the next report.
    assert_eq!(b.apply_cmcd(3, &reports[2]), Outcome::Duplicate);
    assert_eq!(
        b.apply_cmcd(4, &report(3, 20_400, "t", None)),
        Outcome::Accepted
    );
    let playing: u64 = b
        .pending()
        .window_rows()
        .map(|(_, _, m)| m.playing_ms)
        .sum();
    assert_eq!(playing, 10_000);
}

#[test]
fn window_lengths_must_divide_a_minute() {
    for ok in [1, 5, 10, 15, 30, 60] {
        assert!(check_window_secs(ok).is_ok(), "{ok}");
    }
    for bad in [0, 7, 25, 45, 90, 120] {
        assert!(check_window_secs(bad).is_err(), "{bad}");
    }
}

#[test]
fn duplicates_and_late_events() {
    let mut p = PartitionState::new(WindowConfig::default(), None);
    assert_eq!(
        p.apply(0, &ev("a", 0, EventType::ViewStart, 100_000)),
        Outcome::Accepted
    );
    assert_eq!(
        p.apply(1, &ev("a", 0, EventType::ViewStart, 100_000)),
        Outcome::Duplicate
    );
    // Watermark now 100_000 - 30_000 = 70_000: window [60_000, 70_000) is final.
    assert_eq!(
        p.apply(2, &ev("b", 0, EventType::ViewStart, 65_000)),
        Outcome::Late
    );
    assert_eq!(
        p.apply(3, &ev("b", 1, EventType::Heartbeat, 70_000)),
        Outcome::Accepted
    );
    let (batch, cp) = p.take_batch(false);
    let w100: Vec<_> = batch
        .window_rows()
        .filter(|(w, _, _)| *w == 100_000)
        .collect();
    assert_eq!(w100.len(), 1);
    let (_, slice, m) = w100[0];
    assert_eq!((m.attempts, m.duplicate_events), (1, 1));
    assert_eq!(
        (
            &*slice.region,
            &*slice.cdn,
            &*slice.stream_type,
            &*slice.stream_id
        ),
        ("r", "c", "live", "s")
    );
    let w60: u64 = batch
        .window_rows()
        .filter(|(w, _, _)| *w == 60_000)
        .map(|(_, _, m)| m.late_events + m.events)
        .sum();
    assert_eq!(w60, 1);
    assert_eq!(
        cp,
        Checkpoint {
            from_offset: 0,
            next_offset: 4,
            state_offset: 4,
            max_event_time: 100_000,
            snapshot_offset: 0,
            state: String::new(),
        }
    );
    let mut presence: Vec<_> = batch.presence_rows().map(|(w, _, v)| (w, v)).collect();
    presence.sort();
    assert_eq!(presence, [(70_000, "b"), (100_000, "a")]);
    let views: Vec<_> = batch
        .view_rows()
        .map(|(v, c, _)| (v, &*c.platform))
        .collect();
    assert_eq!(views, [("a", "p"), ("b", "p")]);
}

#[test]
fn future_client_clocks_do_not_advance_the_watermark() {
    let mut p = PartitionState::new(WindowConfig::default(), None);
    let mut e = ev("a", 0, EventType::ViewStart, 1_000_000);
    e.received_at = 700_000; // event time 5 minutes ahead of arrival
    p.apply(0, &e);
    assert_eq!(p.watermark(), 700_000 - 30_000);
}
