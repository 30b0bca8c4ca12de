//! Unit tests of CMCD sessions.

use super::session::GENERIC_FATAL_CODE;
use super::*;
use qoe_schemas::cmcd::CmcdReport;

const T0: i64 = 1_790_000_000_000;

struct Player {
    sessions: Sessions,
    sn: i64,
    sid: &'static str,
    cdn: &'static str,
    cdn_rank: u8,
    /// Reports that switched the view's CDN mid-view.
    switches: u32,
}

impl Player {
    fn new(sid: &'static str) -> Self {
        Player {
            sessions: Sessions::default(),
            sn: 0,
            sid,
            cdn: "",
            cdn_rank: 0,
            switches: 0,
        }
    }

    /// Sends a report `at` ms after T0; returns the events it made as (type, fields).
    fn send(&mut self, at: i64, e: &str, f: impl FnOnce(&mut CmcdReport)) -> Vec<QoeEvent> {
        let mut r = CmcdReport {
            e: e.into(),
            ts: T0 + at,
            sid: self.sid.into(),
            sn: Some(self.sn),
            cid: Some("ch-1".into()),
            sf: Some("h".into()),
            st: Some("l".into()),
            ..CmcdReport::default()
        };
        self.sn += 1;
        f(&mut r);
        let m = CmcdMessage {
            cmcd: r,
            received_at: T0 + at,
            region: "eu-west".into(),
            cdn: self.cdn.into(),
            platform: "web".into(),
            player: "hls.js".into(),
            cdn_rank: self.cdn_rank,
        };
        let mut out = Vec::new();
        if self
            .sessions
            .on_report(&m, &SessionConfig::default(), &mut out)
        {
            self.switches += 1;
        }
        out
    }

    fn ps(&mut self, at: i64, sta: &str) -> Vec<QoeEvent> {
        self.send(at, "ps", |r| r.sta = Some(sta.into()))
    }
}

fn kinds(events: &[QoeEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn total(events: &[QoeEvent], f: impl Fn(&QoeEvent) -> Option<u32>) -> u32 {
    events.iter().filter_map(f).sum()
}

#[test]
fn healthy_playback_with_a_stall_a_pause_and_an_exit() {
    let mut p = Player::new("s-1");
    let mut all = Vec::new();
    all.extend(p.send(0, "t", |_| {}));
    all.extend(p.ps(0, "d"));
    all.extend(p.ps(0, "s"));
    all.extend(p.send(40, "bc", |r| r.br = Some(800)));
    assert!(
        all.is_empty(),
        "view_start waits for a request or a play state"
    );
    p.cdn = "cdn-a";
    let rr = p.send(100, "rr", |r| {
        r.rc = Some(200);
        r.br = Some(800);
    });
    assert_eq!(kinds(&rr), ["view_start"]);
    assert_eq!(rr[0].cdn, "cdn-a", "the first request's CDN is the view's");
    assert_eq!(rr[0].event_time, T0, "at the first report's time");
    all.extend(rr);
    all.extend(p.send(300, "ps", |r| {
        r.sta = Some("p".into());
        r.br = Some(800);
    }));
    all.extend(p.send(10_300, "t", |_| {}));
    all.extend(p.ps(20_300, "r"));
    all.extend(p.ps(26_100, "p"));
    all.extend(p.ps(30_000, "a"));
    all.extend(p.ps(35_000, "p"));
    all.extend(p.ps(40_000, "q"));
    assert_eq!(
        kinds(&all),
        [
            "view_start",
            "first_frame",
            "heartbeat",
            "stall_start",
            "stall_end",
            "pause",
            "resume",
            "view_end"
        ]
    );
    assert_eq!(all[1].startup_ms, Some(300));
    assert_eq!(total(&all, |e| e.stall_ms), 5_800);
    // Played 300..20300 and 26100..30000 and 35000..40000.
    assert_eq!(total(&all, |e| e.playing_ms), 20_000 + 3_900 + 5_000);
    assert_eq!(all[2].bitrate_kbps, Some(800));
    let end = all.last().unwrap();
    assert_eq!(
        (end.reason, end.started),
        (Some(EndReason::Exit), Some(true))
    );
    let seqs: Vec<u32> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..8).collect::<Vec<_>>());
    assert!(all
        .iter()
        .all(|e| e.view_id == "s-1" && e.protocol == "hls" && e.stream_id == "ch-1"));
}

#[test]
fn start_failure_then_the_players_error_report() {
    // hls.js with a missing manifest: `ps s`, `ps f` within 20 ms, then `e=e`, then interval
    // reports that still say `sta=f`.
    let mut p = Player::new("s-2");
    let mut all = p.ps(0, "s");
    all.extend(p.send(15, "ps", |r| r.sta = Some("f".into())));
    all.extend(p.send(18, "e", |r| r.ec = Some("manifestLoadError".into())));
    for at in [10_000, 20_000, 30_000] {
        all.extend(p.send(at, "t", |r| r.sta = Some("f".into())));
    }
    // The failure waits for its error report, which gives it the player's code.
    assert_eq!(kinds(&all), ["view_start", "view_end", "error"]);
    assert_eq!((all[2].fatal, all[2].started), (Some(true), Some(false)));
    assert_eq!(all[2].code.as_deref(), Some("manifestLoadError"));
    assert_eq!(all[1].reason, Some(EndReason::Error));
}

/// Events of a report stream, the held ones released by a later clock.
fn drained(p: &mut Player, clock: i64) -> Vec<QoeEvent> {
    let mut out = Vec::new();
    p.sessions.release_due(T0 + clock, &mut out);
    out
}

fn errors(events: &[QoeEvent]) -> Vec<(Option<bool>, Option<bool>, &str)> {
    events
        .iter()
        .filter(|e| e.kind == EventType::Error)
        .map(|e| (e.fatal, e.started, e.code.as_deref().unwrap_or("")))
        .collect()
}

#[test]
fn one_cdn_rule_for_every_report_of_a_view() {
    use qoe_schemas::cmcd::CdnSource;
    let cdns = |events: &[QoeEvent]| {
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.cdn.clone()))
            .collect::<Vec<_>>()
    };
    let page = |p: &mut Player| {
        (p.cdn, p.cdn_rank) = ("cdn-x", CdnSource::TargetUrl as u8);
    };
    let served_by = |p: &mut Player, cdn: &'static str| {
        (p.cdn, p.cdn_rank) = (cdn, CdnSource::ObjectHost as u8);
    };
    // hls.js posting to `?cdn=cdn-x` while its segments come from a host of cdn-y: every
    // count of the view in cdn-y, the attempt and the play together.
    let mut p = Player::new("s-30");
    page(&mut p);
    let mut all = p.ps(0, "s");
    served_by(&mut p, "cdn-y");
    all.extend(p.send(100, "rr", |r| r.rc = Some(200)));
    page(&mut p);
    all.extend(p.ps(400, "p"));
    all.extend(p.send(10_400, "t", |_| {}));
    assert_eq!(
        cdns(&all),
        [
            ("view_start", "cdn-y".into()),
            ("first_frame", "cdn-y".into()),
            ("heartbeat", "cdn-y".into())
        ]
    );
    assert_eq!(
        p.switches, 0,
        "the host correcting the page's CDN is no switch"
    );
    // The first request comes after the start stopped waiting: the attempt was counted in
    // the page's CDN, so are the first frame and startup (one moment, one slice); the time
    // played after goes to the CDN that serves, and a later change of CDN moves it on.
    let mut p = Player::new("s-31");
    page(&mut p);
    let mut all = p.ps(0, "s");
    all.extend(p.send(2_500, "t", |_| {}));
    served_by(&mut p, "cdn-y");
    all.extend(p.send(3_000, "rr", |r| r.rc = Some(200)));
    page(&mut p);
    all.extend(p.ps(3_500, "p"));
    all.extend(p.send(13_500, "t", |_| {}));
    served_by(&mut p, "cdn-z");
    all.extend(p.send(14_000, "rr", |r| r.rc = Some(200)));
    page(&mut p);
    all.extend(p.send(23_500, "t", |_| {}));
    assert_eq!(
        cdns(&all),
        [
            ("view_start", "cdn-x".into()),
            ("first_frame", "cdn-x".into()),
            ("heartbeat", "cdn-y".into()),
            // At the switch: the time since the last report, served by cdn-y.
            ("heartbeat", "cdn-y".into()),
            ("heartbeat", "cdn-z".into())
        ]
    );
    assert_eq!(
        p.switches, 1,
        "cdn-y to cdn-z, both named by the serving host"
    );
}

#[test]
fn one_failure_is_one_error_with_the_players_code_in_either_order() {
    let fatal_first = |ec_on_error: bool| {
        let mut p = Player::new("s-20");
        let mut all = p.ps(0, "s");
        all.extend(p.ps(15, "f"));
        all.extend(p.send(18, "e", |r| {
            if ec_on_error {
                r.ec = Some("manifestLoadError".into());
            }
        }));
        all.extend(drained(&mut p, 60_000));
        all
    };
    assert_eq!(
        errors(&fatal_first(true)),
        [(Some(true), Some(false), "manifestLoadError")]
    );
    assert_eq!(
        errors(&fatal_first(false)),
        [(Some(true), Some(false), "cmcd_fatal")],
        "no code sent: the generic one"
    );
    // Shaka and dash.js: the error report (still `sta=p`) first, then `ps f`.
    let mut p = Player::new("s-21");
    let mut all = p.ps(0, "s");
    all.extend(p.ps(300, "p"));
    all.extend(p.send(9_000, "e", |r| {
        r.ec = Some("4032".into());
        r.sta = Some("p".into());
    }));
    all.extend(p.ps(9_004, "f"));
    all.extend(drained(&mut p, 60_000));
    assert_eq!(errors(&all), [(Some(true), Some(true), "4032")]);
    assert_eq!(all.last().map(|e| e.reason), Some(Some(EndReason::Error)));
    // The error report says `sta=f` itself, before its `ps f`.
    let mut p = Player::new("s-22");
    let mut all = p.ps(0, "s");
    all.extend(p.send(20, "e", |r| {
        r.ec = Some("22".into());
        r.sta = Some("f".into());
    }));
    all.extend(p.ps(21, "f"));
    assert_eq!(errors(&all), [(Some(true), Some(false), "22")]);
}

#[test]
fn a_held_failure_survives_a_restart_between_its_two_reports() {
    let mut p = Player::new("s-23");
    let mut all = p.ps(0, "s");
    all.extend(p.ps(300, "p"));
    all.extend(p.send(5_000, "e", |r| r.ec = Some("bufferAppendError".into())));
    assert!(errors(&all).is_empty(), "held until its fate is known");
    p.sessions = Sessions::restore(&p.sessions.snapshot()).unwrap();
    all.extend(p.ps(5_010, "f"));
    assert_eq!(
        errors(&all),
        [(Some(true), Some(true), "bufferAppendError")]
    );
}

#[test]
fn after_a_failure_only_a_new_start_opens_a_view() {
    // Shaka after a segment failure: `ps f`, its error without a code, then seeking and
    // paused states for the stream that failed; the page loads again later.
    let mut p = Player::new("s-26");
    let mut all = p.ps(0, "s");
    all.extend(p.ps(300, "p"));
    all.extend(p.ps(20_000, "f"));
    all.extend(p.send(20_001, "e", |_| {}));
    all.extend(p.ps(24_000, "k"));
    all.extend(p.ps(26_000, "a"));
    assert_eq!(
        kinds(&all).iter().filter(|k| **k == "view_start").count(),
        1
    );
    assert_eq!(errors(&all), [(Some(true), Some(true), GENERIC_FATAL_CODE)]);
    let mut again = p.ps(40_000, "s");
    again.extend(p.ps(40_500, "p"));
    assert_eq!(
        kinds(&again),
        ["view_start", "first_frame"],
        "a new load is a new attempt"
    );
}

#[test]
fn a_non_fatal_error_counts_once_when_its_hold_ends() {
    let mut p = Player::new("s-24");
    p.ps(0, "s");
    p.ps(300, "p");
    let e = p.send(5_000, "e", |r| r.ec = Some("fragLoadError".into()));
    assert!(e.is_empty());
    let later = p.send(10_001, "t", |_| {});
    assert_eq!(errors(&later), [(Some(false), Some(true), "fragLoadError")]);
    // Released by the clock when the session says nothing more.
    let e = p.send(20_000, "e", |_| {});
    assert!(e.is_empty());
    assert!(drained(&mut p, 24_999).is_empty());
    assert_eq!(
        errors(&drained(&mut p, 25_000)),
        [(Some(false), Some(true), "unknown")]
    );
}

#[test]
fn an_error_before_the_first_frame_then_silence_or_exit_is_a_start_failure() {
    // dash.js with a missing manifest: `ps s`, the 404, `e=e,ec=25` (still `sta=s`), then
    // nothing.
    let mut p = Player::new("s-25");
    let mut all = p.ps(0, "s");
    all.extend(p.send(40, "rr", |r| r.rc = Some(404)));
    all.extend(p.send(60, "e", |r| {
        r.ec = Some("25".into());
        r.sta = Some("s".into());
    }));
    all.extend(drained(&mut p, 10_000));
    assert_eq!(errors(&all), [(Some(false), Some(false), "25")]);
    let mut silent = Vec::new();
    let mut out = Vec::new();
    let watermark = T0 + 60 + 120_000 + 10_000;
    p.sessions.expire(
        watermark,
        10_000,
        &SessionConfig::default(),
        &mut silent,
        &mut out,
    );
    assert!(silent.is_empty(), "ended by its failure, not as silent");
    assert_eq!(kinds(&out), ["view_end"]);
    let end = &out[0];
    assert_eq!(
        (end.fatal, end.started, end.reason, end.code.as_deref()),
        (Some(true), Some(false), Some(EndReason::Error), Some("25"))
    );
    assert_eq!(
        end.event_time, watermark,
        "counted where it is still on time"
    );
    // The player leaves right after the error (within the hold): one fatal error.
    let mut p = Player::new("s-26");
    let mut all = p.ps(0, "s");
    all.extend(p.send(60, "e", |r| r.ec = Some("1001".into())));
    all.extend(p.ps(900, "q"));
    assert_eq!(errors(&all), [(Some(true), Some(false), "1001")]);
    let end = all.iter().find(|e| e.kind == EventType::ViewEnd).unwrap();
    assert_eq!(
        (end.reason, end.fatal),
        (Some(EndReason::Error), None),
        "the error counts the failure; the end does not again"
    );
    // ... or after it: the error counted, then the end counts the start failure.
    let mut p = Player::new("s-27");
    let mut all = p.ps(0, "s");
    all.extend(p.send(60, "e", |r| r.ec = Some("1001".into())));
    all.extend(p.ps(9_000, "q"));
    assert_eq!(errors(&all), [(Some(false), Some(false), "1001")]);
    let end = all.iter().find(|e| e.kind == EventType::ViewEnd).unwrap();
    assert_eq!((end.fatal, end.code.as_deref()), (Some(true), Some("1001")));
    // An error the view recovers from is only an error.
    let mut p = Player::new("s-28");
    let mut all = p.ps(0, "s");
    all.extend(p.send(60, "e", |r| r.ec = Some("fragLoadError".into())));
    all.extend(p.ps(9_000, "p"));
    all.extend(p.ps(19_000, "q"));
    assert_eq!(errors(&all), [(Some(false), Some(false), "fragLoadError")]);
    let end = all.last().unwrap();
    assert_eq!((end.fatal, end.reason), (None, Some(EndReason::Exit)));
}

#[test]
fn reports_that_arrive_out_of_order() {
    // Sent within milliseconds on separate requests: the error report (with `sta=f`) before
    // its `ps f`, and the `ps s` after both.
    let mut p = Player::new("s-9");
    let mut all = p.send(0, "t", |_| {});
    p.sn = 3;
    all.extend(p.send(42, "e", |r| {
        r.ec = Some("manifestLoadError".into());
        r.sta = Some("f".into());
    }));
    all.extend(p.ps(42, "f"));
    p.sn = 2;
    all.extend(p.send(22, "ps", |r| r.sta = Some("s".into())));
    all.extend(p.send(10_000, "t", |r| r.sta = Some("f".into())));
    assert_eq!(kinds(&all), ["view_start", "error", "view_end"]);
    assert_eq!(all[1].code.as_deref(), Some("manifestLoadError"));
    assert_eq!(all[1].fatal, Some(true));
    // Within a view: a `ps p` that arrives after the later `ps r` is over.
    let mut p = Player::new("s-10");
    p.ps(0, "s");
    p.ps(300, "p");
    let r = p.ps(5_000, "r");
    let stale = p.ps(4_000, "p");
    assert_eq!(kinds(&r), ["stall_start"]);
    assert!(stale.is_empty());
}

#[test]
fn seeking_buffer_is_not_a_stall_and_startup_buffer_neither() {
    let mut p = Player::new("s-3");
    let mut all = p.ps(0, "s");
    all.extend(p.ps(50, "r"));
    all.extend(p.ps(400, "p"));
    all.extend(p.ps(5_000, "k"));
    all.extend(p.ps(5_010, "r"));
    all.extend(p.ps(6_000, "p"));
    assert_eq!(kinds(&all), ["view_start", "first_frame", "seek"]);
    assert_eq!(total(&all, |e| e.stall_ms), 0);
    assert_eq!(all[1].startup_ms, Some(400));
}

#[test]
fn msd_only_where_it_agrees() {
    let mut p = Player::new("s-4");
    p.ps(0, "s");
    let e = p.send(232, "ps", |r| {
        r.sta = Some("p".into());
        r.msd = Some(30);
    });
    assert_eq!(e[1].startup_ms, Some(232), "dash.js's msd=30 is wrong");
    let mut p = Player::new("s-5");
    p.ps(0, "s");
    let e = p.send(232, "ps", |r| {
        r.sta = Some("p".into());
        r.msd = Some(220);
    });
    assert_eq!(e[1].startup_ms, Some(220));
}

#[test]
fn bitrate_switches() {
    let mut p = Player::new("s-6");
    p.ps(0, "s");
    p.send(100, "ps", |r| {
        r.sta = Some("p".into());
        r.br = Some(800);
    });
    let down = p.send(5_000, "bc", |r| r.br = Some(250));
    assert_eq!(kinds(&down), ["bitrate_change"]);
    assert_eq!(
        (down[0].bitrate_kbps, down[0].prev_bitrate_kbps),
        (Some(250), Some(800))
    );
    // No `bc`: a changed `br` on a later report is a switch too (dash.js).
    let up = p.send(9_000, "t", |r| r.br = Some(800));
    assert_eq!(kinds(&up), ["heartbeat", "bitrate_change"]);
    assert_eq!(
        up[0].bitrate_kbps,
        Some(250),
        "time played before the switch"
    );
}

#[test]
fn a_reused_sid_after_the_end_or_silence_is_a_new_view() {
    let mut p = Player::new("s-7");
    p.ps(0, "s");
    p.ps(100, "p");
    p.ps(1_000, "e");
    let again = [p.ps(2_000, "s"), p.ps(2_300, "p")].concat();
    assert_eq!(kinds(&again), ["view_start", "first_frame"]);
    assert_eq!(again[0].seq, 0);
    assert_eq!(again[0].view_id, "s-7~2", "a second view has its own id");
    let later = [p.ps(2_300 + 200_000, "s"), p.ps(2_300 + 200_400, "p")].concat();
    assert_eq!(
        kinds(&later),
        ["view_start", "first_frame"],
        "silent past the timeout"
    );
    assert_eq!(later[0].view_id, "s-7~3");
    assert_eq!(total(&later, |e| e.playing_ms), 0);
}

#[test]
fn snapshot_round_trips_and_expiry_is_by_silence() {
    let mut p = Player::new("s-8");
    p.ps(0, "s");
    p.ps(100, "p");
    let snap = p.sessions.snapshot();
    assert_eq!(Sessions::restore(&snap).unwrap(), p.sessions);
    assert_eq!(Sessions::restore("").unwrap().len(), 0);
    let config = SessionConfig::default();
    let mut silent = Vec::new();
    let mut out = Vec::new();
    let watermark = T0 + 100 + 120_000 + 10_000;
    p.sessions
        .expire(watermark - 1, 10_000, &config, &mut silent, &mut out);
    assert_eq!(p.sessions.len(), 1);
    assert!(silent.is_empty());
    p.sessions
        .expire(watermark, 10_000, &config, &mut silent, &mut out);
    assert!(out.is_empty());
    assert!(p.sessions.is_empty());
    assert_eq!(silent.len(), 1, "the open view went silent");
    assert_eq!(
        (silent[0].view_id.as_str(), silent[0].last_time),
        ("s-8", T0 + 100)
    );
}
