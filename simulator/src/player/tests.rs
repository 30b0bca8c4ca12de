//! Unit tests of `player`.

use super::*;
use crate::population::{baseline_quality, draw_context};

fn healthy() -> Conditions {
    Conditions {
        quality: baseline_quality("eu-west", "cdn-b"),
        start_failure_floor: 0.0,
        start_failure_extra: 0.0,
        business_refusals: 0.0,
    }
}

/// Runs one view to its end and returns every event it flushed, and the flushes.
fn run(seed: u64, cond: Conditions) -> (Vec<QoeEvent>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ctx = draw_context(&mut rng, "t", seed, false);
    let t0 = 1_763_721_600_000;
    let mut p = Player::new(ctx, seed, t0, &cond, 15_000);
    let (mut all, mut flushes) = (Vec::new(), 0);
    let mut t = t0;
    while !p.ended() && t < t0 + 4 * 3_600_000 {
        if let Some(batch) = p.tick(t, t + 1000, &cond) {
            flushes += 1;
            all.extend(batch);
        }
        t += 1000;
    }
    if let Some(rest) = p.drain() {
        all.extend(rest);
    }
    (all, flushes)
}

#[test]
fn a_view_is_a_valid_sdk_event_sequence() {
    for seed in 0..200 {
        let (events, flushes) = run(seed, healthy());
        assert!(flushes >= 1);
        assert_eq!(events[0].kind, EventType::ViewStart);
        let last = events.last().unwrap();
        assert_eq!(last.kind, EventType::ViewEnd, "seed {seed}");
        assert!(last.reason.is_some() && last.started.is_some());
        let mut started = false;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq as usize, i, "seq runs from 0 by 1");
            assert!(i == 0 || e.event_time >= events[i - 1].event_time);
            match e.kind {
                EventType::FirstFrame => {
                    assert!(e.bitrate_kbps.is_some());
                    started = true;
                }
                EventType::Error => {
                    assert_eq!(e.started, Some(started));
                    assert!(e.fatal.is_some());
                }
                EventType::ViewEnd => assert_eq!(e.started, Some(started)),
                EventType::BitrateChange => {
                    assert_ne!(e.bitrate_kbps, e.prev_bitrate_kbps);
                    assert!(e.prev_bitrate_kbps.is_some());
                }
                _ => {}
            }
            if !started {
                assert!(e.playing_ms.is_none() && e.stall_ms.is_none());
            }
        }
    }
}

#[test]
fn playing_and_stalled_time_add_up_to_the_view_duration() {
    for seed in 0..100 {
        let (events, _) = run(seed, healthy());
        let Some(ff) = events.iter().find(|e| e.kind == EventType::FirstFrame) else {
            continue;
        };
        let end = events.last().unwrap().event_time;
        let total: u64 = events
            .iter()
            .map(|e| u64::from(e.playing_ms.unwrap_or(0)) + u64::from(e.stall_ms.unwrap_or(0)))
            .sum();
        assert_eq!(total as i64, end - ff.event_time, "seed {seed}");
    }
}

#[test]
fn the_same_seed_gives_the_same_view() {
    assert_eq!(run(42, healthy()), run(42, healthy()));
    assert_ne!(run(42, healthy()).0, run(43, healthy()).0);
}

#[test]
fn a_degraded_network_stalls_more_and_starts_slower() {
    let bad = Conditions {
        quality: NetworkQuality {
            stalls: 5.0,
            stall_length: 1.0,
            startup: 3.0,
            start_failures: 1.0,
            top_rung: 3,
        },
        start_failure_floor: 0.25,
        start_failure_extra: 0.0,
        business_refusals: 0.0,
    };
    let summary = |cond: Conditions| {
        let (mut stalls, mut playing, mut startup, mut plays, mut failures, mut views) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for seed in 0..300 {
            let (events, _) = run(seed, cond);
            views += 1;
            for e in &events {
                playing += u64::from(e.playing_ms.unwrap_or(0));
                match e.kind {
                    EventType::StallStart => stalls += 1,
                    EventType::FirstFrame => {
                        if let Some(s) = e.startup_ms {
                            plays += 1;
                            startup += u64::from(s);
                        }
                    }
                    EventType::Error if e.started == Some(false) => failures += 1,
                    _ => {}
                }
            }
        }
        (
            stalls as f64 / (playing as f64 / 3_600_000.0),
            startup as f64 / plays as f64,
            failures as f64 / views as f64,
        )
    };
    let (good_stalls, good_startup, good_fail) = summary(healthy());
    let (bad_stalls, bad_startup, bad_fail) = summary(bad);
    assert!(
        bad_stalls > 3.0 * good_stalls,
        "{bad_stalls} vs {good_stalls}"
    );
    assert!(
        bad_startup > 2.0 * good_startup,
        "{bad_startup} vs {good_startup}"
    );
    assert!(
        bad_fail > 0.15 && good_fail < 0.05,
        "{bad_fail} vs {good_fail}"
    );
}
