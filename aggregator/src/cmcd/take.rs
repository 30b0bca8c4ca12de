//! How one report moves its session (the mapping in the module doc of [`super`]), step by
//! step: a failure's second report, a report that opens a view, the view's start, the time
//! since the last state report, the play state's events, bitrate and dropped frames, and the
//! view's end.

use super::session::{Session, SessionConfig, View, GENERIC_ERROR_CODE, HOLD_MS};
use qoe_schemas::cmcd::{CmcdMessage, CmcdReport};
use qoe_schemas::{EndReason, EventType, QoeEvent};

/// `msd` is believed when it is within this many ms, or a tenth, of the timestamps' startup.
const MSD_TOLERANCE_MS: i64 = 50;
/// How long a view's start waits for a report that tells its CDN (a segment request) or
/// more than "starting".
const START_WAIT_MS: i64 = 2_000;

/// The report's play state (`sta` of a `ps` report; other reports carry the current state
/// but do not change it).
fn play_state(r: &CmcdReport) -> Option<&str> {
    if r.e == "ps" {
        r.sta.as_deref()
    } else {
        None
    }
}

/// How a report ends its view.
struct Ending {
    reason: EndReason,
    /// The code of an error already counted, when the view fails to start by it.
    fatal_code: Option<String>,
}

/// What a report carries for the time since the previous state report.
#[derive(Default)]
struct Carried {
    playing: u32,
    stall: u32,
    /// The bitrate the time was played at (the one before this report).
    bitrate: Option<u32>,
    dropped: Option<u32>,
    latency: Option<u32>,
}

impl Carried {
    fn any(&self) -> bool {
        self.playing > 0
            || self.stall > 0
            || self.dropped.is_some_and(|d| d > 0)
            || self.latency.is_some()
    }
}

impl Session {
    /// Takes one report (not a duplicate, not late); the events it makes go to `out`.
    pub(super) fn take(
        &mut self,
        m: &CmcdMessage,
        config: &SessionConfig,
        out: &mut Vec<QoeEvent>,
    ) {
        let r = &m.cmcd;
        if self.held.as_ref().is_some_and(|h| r.ts - h.ts > HOLD_MS) {
            self.release(out);
        }
        if self.completes_failure(r, out) {
            return;
        }
        // Players post each report on its own request, so reports sent together can arrive in
        // any order. A report older than the end of the session's last view belongs to it.
        if self.view.is_none() && self.ended_at.is_some_and(|end| r.ts < end) {
            return;
        }
        if !self.open_view_if_due(r, config, out) {
            return;
        }
        let Some(mut view) = self.view.take() else {
            return;
        };
        // A play state older than the last one applied arrived late: the state it reports is
        // already over.
        if r.e == "ps" && r.ts < view.last_ps_ts {
            self.view = Some(view);
            return;
        }
        if r.e == "ps" {
            view.last_ps_ts = r.ts;
        }
        self.start_when_told(&mut view, m, out);
        let primary_from = out.len();
        // Held errors released by this report: appended after its own events, so that the
        // first of those carries the report's time (playing time, latency).
        let mut released = Vec::new();
        let (playing, stall) = time_since_last_state(&mut view, r);
        let bitrate = view.bitrate;
        let ending = self.apply_play_state(&mut view, m, out, &mut released);
        let switch = bitrate_switch(&mut view, r);
        let carried = Carried {
            playing,
            stall,
            bitrate,
            dropped: dropped_frames(&mut view, r),
            latency: r.ltc.filter(|_| r.e != "rr"),
        };
        self.carry(&mut view, m, &carried, ending.is_some(), primary_from, out);
        if let Some((prev, br)) = switch {
            let mut e = self.event(&mut view, m, EventType::BitrateChange, r.ts);
            e.bitrate_kbps = Some(br);
            e.prev_bitrate_kbps = Some(prev);
            out.push(e);
        }
        match ending {
            Some(ending) => self.end_view(view, m, ending, primary_from, out),
            None => self.view = Some(view),
        }
        out.append(&mut released);
    }

    /// An error report right after a fatal failure is that failure's own report: it adds
    /// only the player's code, when the failure is still held for want of one (a second
    /// `sta=f` may carry it too). True when the report was that.
    fn completes_failure(&mut self, r: &CmcdReport, out: &mut Vec<QoeEvent>) -> bool {
        let Some(ended) = self.ended_at else {
            return false;
        };
        let partner = self.view.is_none()
            && self.failed
            && r.ts - ended <= HOLD_MS
            && (r.e == "e" || r.e == "ps" && r.sta.as_deref() == Some("f"));
        if !partner {
            return false;
        }
        if let Some(held) = self.held.as_mut().filter(|h| h.fatal == Some(true)) {
            if held.code.is_none() {
                held.code.clone_from(&r.ec);
            }
            if r.e == "e" {
                // The failure's error report came: no code will follow.
                self.release(out);
            }
        }
        true
    }

    /// Opens a view when the session has none (or its view went silent past the timeout) and
    /// the report may open one: after an earlier view of this session ended, only a play
    /// state that is not terminal (hls.js keeps sending interval reports with `sta=f` after a
    /// failure), and after a failure only a new start (`s`, `d`): Shaka goes on reporting
    /// seeking and paused states for the stream that failed; for a session's first view, any
    /// report but a request (`rr`: requests of a page that never reports a state are not an
    /// attempt). False when the report is ignored: it may not open the view it needs.
    fn open_view_if_due(
        &mut self,
        r: &CmcdReport,
        config: &SessionConfig,
        out: &mut Vec<QoeEvent>,
    ) -> bool {
        let silent = self.view.is_some() && r.ts > self.last_ts + config.timeout_ms;
        if self.view.is_some() && !silent {
            return true;
        }
        let terminal = matches!(r.sta.as_deref(), Some("f" | "e" | "q"));
        let starts = matches!(r.sta.as_deref(), Some("s" | "d"));
        let opens = if self.ended_at.is_some() && !silent {
            r.e == "ps" && !terminal && (!self.failed || starts)
        } else {
            r.e != "rr" && !terminal || r.e == "ps" && r.sta.as_deref() == Some("f")
        };
        if !opens {
            return false;
        }
        self.release(out);
        self.ended_at = None;
        self.failed = false;
        self.views += 1;
        self.view = Some(View {
            view_id: if self.views == 1 {
                r.sid.clone()
            } else {
                format!("{}~{}", r.sid, self.views)
            },
            start_ts: r.ts,
            start_pending: true,
            state_ts: r.ts,
            ..View::default()
        });
        true
    }

    /// Emits the view's `view_start` once a report tells the CDN (a request) or more than
    /// "starting", or [`START_WAIT_MS`] after the start (hls.js sends an interval report and
    /// its first bitrate choice before any request). An earlier report arriving later moves
    /// the pending start back.
    fn start_when_told(&self, view: &mut View, m: &CmcdMessage, out: &mut Vec<QoeEvent>) {
        let r = &m.cmcd;
        if !view.start_pending {
            return;
        }
        if r.ts < view.start_ts {
            view.start_ts = r.ts;
            view.state_ts = view.state_ts.min(r.ts);
        }
        let tells = match r.e.as_str() {
            "rr" | "e" => true,
            "ps" => !matches!(play_state(r), Some("s" | "d" | "w")),
            _ => false,
        };
        if !tells && r.ts - view.start_ts < START_WAIT_MS {
            return;
        }
        view.start_cdn = Some(self.cdn.clone().unwrap_or_else(|| "unknown".into()));
        let start_ts = view.start_ts;
        let start = self.event(view, m, EventType::ViewStart, start_ts);
        out.push(start);
        view.start_pending = false;
    }

    /// The events of the report's play state (and of an error report); returns how the view
    /// ends, if it does.
    fn apply_play_state(
        &mut self,
        view: &mut View,
        m: &CmcdMessage,
        out: &mut Vec<QoeEvent>,
        released: &mut Vec<QoeEvent>,
    ) -> Option<Ending> {
        let r = &m.cmcd;
        let sta = play_state(r);
        // The view's last report was an error before the first frame (see the module doc).
        let error_before_start = if r.e == "e" {
            None
        } else {
            view.last_error.take().filter(|_| !view.started)
        };
        let ends = |reason| {
            Some(Ending {
                reason,
                fatal_code: None,
            })
        };
        let mut ending = None;
        match (r.e.as_str(), sta) {
            ("ps", Some("p")) => {
                if !view.started {
                    let by_ts = r.ts - view.start_ts;
                    let startup = match r.msd.map(i64::from) {
                        Some(msd) if (msd - by_ts).abs() <= MSD_TOLERANCE_MS.max(by_ts / 10) => msd,
                        _ => by_ts,
                    };
                    view.started = true;
                    let mut e = self.event(view, m, EventType::FirstFrame, r.ts);
                    e.startup_ms = Some(u32::try_from(startup.max(0)).unwrap_or(u32::MAX));
                    out.push(e);
                } else if view.state.as_deref() == Some("r") && view.in_stall {
                    out.push(self.event(view, m, EventType::StallEnd, r.ts));
                } else if view.state.as_deref() == Some("a") {
                    out.push(self.event(view, m, EventType::Resume, r.ts));
                }
                view.in_stall = false;
            }
            ("ps", Some("r")) => {
                let rebuffer = view.started && view.state.as_deref() != Some("k");
                if rebuffer && !view.in_stall {
                    out.push(self.event(view, m, EventType::StallStart, r.ts));
                }
                view.in_stall = rebuffer;
            }
            ("ps", Some("a")) => {
                out.push(self.event(view, m, EventType::Pause, r.ts));
                view.in_stall = false;
            }
            ("ps", Some("k")) => {
                out.push(self.event(view, m, EventType::Seek, r.ts));
                view.in_stall = false;
            }
            // Leaving, or the stream ending, right after an error before the first frame: the
            // view failed to start.
            ("ps", Some("e" | "q")) if error_before_start.is_some() => {
                let fatal_code = if self.holds_error_of(view) {
                    self.fail(view, m, out, released);
                    None
                } else {
                    error_before_start
                };
                ending = Some(Ending {
                    reason: EndReason::Error,
                    fatal_code,
                });
            }
            ("ps", Some("e")) => ending = ends(EndReason::Completed),
            ("ps", Some("q")) => ending = ends(EndReason::Exit),
            // hls.js's error report of a fatal failure says `sta=f` itself, and may arrive
            // before its `ps f`: it is the failure (the `ps f` then adds nothing).
            ("ps", Some("f")) | ("e", _) if r.sta.as_deref() == Some("f") => {
                self.fail(view, m, out, released);
                ending = ends(EndReason::Error);
            }
            ("e", _) => {
                // Held: a `sta=f` may follow and make it the failure's one error.
                self.release(released);
                let mut e = self.event(view, m, EventType::Error, r.ts);
                e.fatal = Some(false);
                e.started = Some(view.started);
                e.code = r.ec.clone();
                if !view.started {
                    view.last_error =
                        Some(r.ec.clone().unwrap_or_else(|| GENERIC_ERROR_CODE.into()));
                }
                self.held = Some(e);
            }
            _ => {}
        }
        if let Some(s) = sta {
            view.state = Some(s.to_owned());
        }
        ending
    }

    /// Puts the report's time accounting, dropped frames and latency on its first event (a
    /// heartbeat, or the view's end, when it made none).
    fn carry(
        &self,
        view: &mut View,
        m: &CmcdMessage,
        carried: &Carried,
        ending: bool,
        primary_from: usize,
        out: &mut Vec<QoeEvent>,
    ) {
        if !carried.any() {
            return;
        }
        if out.len() == primary_from {
            let kind = if ending {
                EventType::ViewEnd
            } else {
                EventType::Heartbeat
            };
            out.push(self.event(view, m, kind, m.cmcd.ts));
        }
        let e = &mut out[primary_from];
        if carried.playing > 0 {
            e.playing_ms = Some(carried.playing);
            // Time played since the last report was at the bitrate before this report.
            e.bitrate_kbps = carried.bitrate;
        }
        if carried.stall > 0 {
            e.stall_ms = Some(carried.stall);
        }
        e.latency_ms = carried.latency;
        e.dropped_frames = carried.dropped.filter(|d| *d > 0);
    }

    /// Ends the view: its `view_end` (the one already made to carry this report's time, or a
    /// new one) says whether it started and why it ended.
    fn end_view(
        &mut self,
        mut view: View,
        m: &CmcdMessage,
        ending: Ending,
        primary_from: usize,
        out: &mut Vec<QoeEvent>,
    ) {
        let carried_end = out.len() > primary_from && out[primary_from].kind == EventType::ViewEnd;
        if !carried_end {
            out.push(self.event(&mut view, m, EventType::ViewEnd, m.cmcd.ts));
        }
        let end = if carried_end {
            &mut out[primary_from]
        } else {
            out.last_mut().expect("just pushed")
        };
        end.started = Some(view.started);
        end.reason = Some(ending.reason);
        if let Some(code) = ending.fatal_code {
            end.fatal = Some(true);
            end.code = Some(code);
        }
        self.ended_at = Some(m.cmcd.ts);
        self.failed = ending.reason == EndReason::Error;
    }
}

/// Time played and stalled since the previous state report (not for `rr`: its ts is the
/// request's start, not monotonic).
fn time_since_last_state(view: &mut View, r: &CmcdReport) -> (u32, u32) {
    if !matches!(r.e.as_str(), "ps" | "t") || r.ts <= view.state_ts {
        return (0, 0);
    }
    let elapsed = u32::try_from(r.ts - view.state_ts).unwrap_or(u32::MAX);
    view.state_ts = r.ts;
    match view.state.as_deref() {
        Some("p") => (elapsed, 0),
        Some("r") if view.in_stall => (0, elapsed),
        _ => (0, 0),
    }
}

/// A new bitrate: `bc` reports, or a changed `br` on any report (dash.js sends no `bc`), as
/// `(previous, new)`. Its event follows the one that carries the time played at the old one.
fn bitrate_switch(view: &mut View, r: &CmcdReport) -> Option<(u32, u32)> {
    let br = r.br.filter(|_| r.e != "rr")?;
    let switch = view.bitrate.filter(|p| *p != br).map(|prev| (prev, br));
    view.bitrate = Some(br);
    switch
}

/// Frames dropped since the view's last `dfa` (a running count).
fn dropped_frames(view: &mut View, r: &CmcdReport) -> Option<u32> {
    r.dfa.map(|now| {
        let delta = now.saturating_sub(view.dfa.unwrap_or(0));
        view.dfa = Some(now);
        delta
    })
}
