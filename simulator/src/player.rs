//! One view, as a player SDK reports it: `view_start`, then either a start failure, an exit
//! before start, or `first_frame` after a log-normal startup time; then heartbeats every
//! 10 s with the playing and stalled time since the previous event, stalls whose rate and
//! length follow the slice's network, ABR switches along the ladder, errors, and `view_end`.
//!
//! Events are batched like an SDK does: flushed every few seconds, and at once after
//! `view_start`, `first_frame`, an error or `view_end`. Time advances in ticks driven by
//! [`crate::simulation`]; the slice's conditions at each tick come from there, so an incident
//! that starts mid-view affects the view from that moment on.

use crate::population::{log_normal, NetworkQuality, ViewContext, ABR_LADDER};
use qoe_schemas::{EndReason, EventType, QoeEvent, StreamType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const HEARTBEAT_MS: i64 = 10_000;
/// Stalls per hour of playback on a healthy slice (quality factor 1.0).
const BASE_STALLS_PER_HOUR: f64 = 4.0;
/// Median stall length on a healthy slice.
const BASE_STALL_MEDIAN_MS: f64 = 1_500.0;
/// Median startup time on a healthy slice.
const BASE_STARTUP_MEDIAN_MS: f64 = 1_100.0;
/// Probability that a start fails on a healthy slice.
const BASE_START_FAILURE: f64 = 0.012;
/// Probability that a viewer leaves before the first frame for reasons of their own.
const BASE_EARLY_EXIT: f64 = 0.015;
/// The business error codes the players send.
pub const BUSINESS_CODES: [&str; 3] = [
    "ENTITLEMENT_DENIED",
    "GEO_BLOCKED",
    "CONCURRENT_STREAM_LIMIT",
];
/// Fatal and non-fatal playback errors per hour of playback.
const FATAL_ERRORS_PER_HOUR: f64 = 0.3;
const SOFT_ERRORS_PER_HOUR: f64 = 1.0;
/// Share of first frames reported without a startup time.
const STARTUP_UNMEASURED: f64 = 0.01;
/// Viewer seeks per hour of playback (VOD viewers skip around; live viewers rarely do).
const SEEKS_PER_HOUR_VOD: f64 = 6.0;
const SEEKS_PER_HOUR_LIVE: f64 = 1.0;

/// What the view's slice is like at the current tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    pub quality: NetworkQuality,
    /// Floor on the start-failure probability (an incident's spike); 0 when healthy.
    pub start_failure_floor: f64,
    /// Added to the start-failure probability (an incident of so many points); 0 when healthy.
    pub start_failure_extra: f64,
    /// Probability that the service refuses the start on purpose (a business error).
    pub business_refusals: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Playing,
    Stalled,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    FirstFrame { startup_ms: u32 },
    StartFailure,
    ExitBeforeStart,
    Heartbeat,
    StallStart { length_ms: i64 },
    StallEnd,
    Switch { rung: usize },
    PlaybackError { fatal: bool },
    BusinessRefusal,
    Seek,
    Leave,
}

/// The error codes a player family really sends: hls.js its `details` names, dash.js and
/// Shaka their numeric codes, AVPlayer `NSError` codes, ExoPlayer `PlaybackException` codes.
pub struct PlayerCodes {
    /// Failures before the first frame (the first is the network's: manifest or licence).
    pub start: [&'static str; 3],
    /// Fatal failures while playing.
    pub fatal: [&'static str; 3],
    /// A recovered error.
    pub soft: &'static str,
}

impl PlayerCodes {
    pub fn of(player: &str) -> &'static PlayerCodes {
        const HLS_JS: PlayerCodes = PlayerCodes {
            start: [
                "manifestLoadError",
                "manifestLoadTimeOut",
                "keySystemLicenseRequestFailed",
            ],
            fatal: ["fragLoadError", "bufferAppendError", "levelLoadTimeOut"],
            soft: "fragLoadTimeOut",
        };
        const AVPLAYER: PlayerCodes = PlayerCodes {
            start: ["-12938", "-11800", "-42800"],
            fatal: ["-12642", "-11819", "-12889"],
            soft: "-12318",
        };
        const EXOPLAYER: PlayerCodes = PlayerCodes {
            start: ["2004", "2001", "6004"],
            fatal: ["2002", "4003", "1002"],
            soft: "2001",
        };
        const SHAKA: PlayerCodes = PlayerCodes {
            start: ["1001", "1003", "6007"],
            fatal: ["1001", "3016", "3015"],
            soft: "1003",
        };
        match player.split('/').next().unwrap_or_default() {
            "avplayer" => &AVPLAYER,
            "exoplayer" => &EXOPLAYER,
            "shaka" => &SHAKA,
            _ => &HLS_JS,
        }
    }
}

/// One simulated view.
pub struct Player {
    pub ctx: ViewContext,
    rng: StdRng,
    /// Draws business refusals apart from `rng`, so that adding them left every other
    /// view's course as it was.
    refusals: StdRng,
    seq: u32,
    state: State,
    /// Playing and stalled time is accounted up to here.
    cursor: i64,
    playing_ms: u64,
    stall_ms: u64,
    rung: usize,
    last_stall_end: i64,
    scheduled: Vec<(i64, Action)>,
    pending: Vec<QoeEvent>,
    flush_now: bool,
    last_flush: i64,
    flush_ms: i64,
    /// Share of departures after playback that send nothing more (a closed tab, a crashed
    /// app): no `view_end`, and what was not flushed yet is lost.
    silent_exit_share: f64,
}

impl Player {
    /// A view whose play request happens at `t` (ms since the epoch).
    pub fn new(ctx: ViewContext, seed: u64, t: i64, cond: &Conditions, flush_ms: i64) -> Self {
        let mut p = Player {
            ctx,
            rng: StdRng::seed_from_u64(seed),
            refusals: StdRng::seed_from_u64(seed ^ 0x5eed_b05e),
            seq: 0,
            state: State::Starting,
            cursor: t,
            playing_ms: 0,
            stall_ms: 0,
            rung: 0,
            last_stall_end: t,
            scheduled: Vec::new(),
            pending: Vec::new(),
            flush_now: true,
            last_flush: t,
            flush_ms,
            silent_exit_share: 0.0,
        };
        p.emit(EventType::ViewStart, t, |_| {});
        p.plan_start(t, cond);
        p
    }

    /// Makes this share of the view's departures silent (see [`Player::tick`]).
    pub fn with_silent_exits(mut self, share: f64) -> Self {
        self.silent_exit_share = share;
        self
    }

    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Advances the view through `[from, to)`; returns the events to post when the SDK would
    /// flush now.
    pub fn tick(&mut self, from: i64, to: i64, cond: &Conditions) -> Option<Vec<QoeEvent>> {
        if matches!(self.state, State::Playing) {
            self.draw_playback_events(from, cond);
        }
        if self.rung > cond.quality.top_rung && self.state == State::Playing {
            // The network cannot sustain this rendition any more: ABR steps down.
            let at = from + self.rng.random_range(0..1000);
            self.schedule(
                at,
                Action::Switch {
                    rung: self.rung - 1,
                },
            );
        }
        while let Some(i) = self.next_due(to) {
            let (at, action) = self.scheduled.remove(i);
            self.act(at, action, cond);
        }
        let due = self.flush_now || to - self.last_flush >= self.flush_ms;
        if due && !self.pending.is_empty() {
            self.flush_now = false;
            self.last_flush = to;
            return Some(std::mem::take(&mut self.pending));
        }
        None
    }

    /// Whatever is still buffered (the run is ending).
    pub fn drain(&mut self) -> Option<Vec<QoeEvent>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    fn next_due(&self, to: i64) -> Option<usize> {
        self.scheduled
            .iter()
            .enumerate()
            .filter(|(_, (at, _))| *at < to)
            .min_by_key(|(i, (at, _))| (*at, *i))
            .map(|(i, _)| i)
    }

    fn schedule(&mut self, at: i64, action: Action) {
        self.scheduled.push((at, action));
    }

    /// The error codes this view's player sends.
    fn codes(&self) -> &'static PlayerCodes {
        PlayerCodes::of(self.ctx.player)
    }

    fn plan_start(&mut self, t: i64, cond: &Conditions) {
        if cond.business_refusals > 0.0
            && self.refusals.random_bool(cond.business_refusals.min(1.0))
        {
            let at = t + self.refusals.random_range(150..800);
            self.schedule(at, Action::BusinessRefusal);
            return;
        }
        let q = cond.quality;
        let startup = log_normal(&mut self.rng, BASE_STARTUP_MEDIAN_MS * q.startup, 0.6)
            .clamp(100.0, 60_000.0) as i64;
        let patience = log_normal(&mut self.rng, 10_000.0, 0.5) as i64;
        let fail_p = (BASE_START_FAILURE * q.start_failures).max(cond.start_failure_floor)
            + cond.start_failure_extra;
        if self.rng.random_bool(fail_p.min(1.0)) {
            let at = t + self.rng.random_range(200..=startup.clamp(201, 8_000));
            self.schedule(at, Action::StartFailure);
        } else if startup > patience {
            self.schedule(t + patience, Action::ExitBeforeStart);
        } else if self.rng.random_bool(BASE_EARLY_EXIT) {
            let at = t + self.rng.random_range(0..startup.max(1));
            self.schedule(at, Action::ExitBeforeStart);
        } else {
            self.rung = self.rng.random_range(1..=3).min(q.top_rung);
            self.schedule(
                t + startup,
                Action::FirstFrame {
                    startup_ms: startup as u32,
                },
            );
        }
    }

    /// Random playback events of the coming second, at the slice's current rates.
    fn draw_playback_events(&mut self, from: i64, cond: &Conditions) {
        let q = cond.quality;
        let per_second = |per_hour: f64| (per_hour / 3600.0).min(1.0);
        let at = from + self.rng.random_range(0..1000);
        if self
            .rng
            .random_bool(per_second(BASE_STALLS_PER_HOUR * q.stalls))
        {
            let length_ms = log_normal(&mut self.rng, BASE_STALL_MEDIAN_MS * q.stall_length, 0.8)
                .clamp(100.0, 120_000.0) as i64;
            self.schedule(at, Action::StallStart { length_ms });
        } else if self.rng.random_bool(per_second(FATAL_ERRORS_PER_HOUR)) {
            self.schedule(at, Action::PlaybackError { fatal: true });
        } else if self.rng.random_bool(per_second(SOFT_ERRORS_PER_HOUR)) {
            self.schedule(at, Action::PlaybackError { fatal: false });
        } else if self.rung < q.top_rung
            && from - self.last_stall_end > 30_000
            && self.rng.random_bool(0.02)
        {
            self.schedule(
                at,
                Action::Switch {
                    rung: self.rung + 1,
                },
            );
        } else if self.rng.random_bool(per_second(match self.ctx.stream_type {
            StreamType::Vod => SEEKS_PER_HOUR_VOD,
            StreamType::Live => SEEKS_PER_HOUR_LIVE,
        })) {
            self.schedule(at, Action::Seek);
        }
    }

    /// Accounts playing or stalled time up to `t`.
    fn advance(&mut self, t: i64) {
        let dt = (t - self.cursor).max(0) as u64;
        match self.state {
            State::Playing => self.playing_ms += dt,
            State::Stalled => self.stall_ms += dt,
            State::Starting | State::Ended => {}
        }
        self.cursor = self.cursor.max(t);
    }

    fn act(&mut self, at: i64, action: Action, cond: &Conditions) {
        if self.state == State::Ended {
            return;
        }
        self.advance(at);
        let bitrate = ABR_LADDER[self.rung];
        match action {
            Action::FirstFrame { startup_ms } => {
                // Some players cannot measure their startup (SPEC: still a play).
                let measured = !self.rng.random_bool(STARTUP_UNMEASURED);
                self.emit(EventType::FirstFrame, at, |e| {
                    e.startup_ms = measured.then_some(startup_ms);
                    e.bitrate_kbps = Some(bitrate);
                    e.started = Some(true);
                });
                self.state = State::Playing;
                self.cursor = at;
                self.last_stall_end = at;
                self.flush_now = true;
                self.schedule(at + HEARTBEAT_MS, Action::Heartbeat);
                let watch = self.watch_time();
                self.schedule(at + watch, Action::Leave);
            }
            Action::StartFailure => {
                let code = self.codes().start[self.rng.random_range(0..3)];
                self.emit(EventType::Error, at, |e| {
                    e.fatal = Some(true);
                    e.started = Some(false);
                    e.code = Some(code.into());
                });
                self.end(at + 50, EndReason::Error);
            }
            Action::ExitBeforeStart => self.end(at, EndReason::Exit),
            Action::BusinessRefusal => {
                let code = BUSINESS_CODES[self.refusals.random_range(0..BUSINESS_CODES.len())];
                self.emit(EventType::Error, at, |e| {
                    e.fatal = Some(true);
                    e.started = Some(false);
                    e.code = Some(code.into());
                });
                self.end(at + 50, EndReason::Error);
            }
            Action::Heartbeat => {
                let latency = (self.ctx.stream_type == StreamType::Live).then(|| {
                    log_normal(&mut self.rng, 4_000.0 * cond.quality.startup.sqrt(), 0.3) as u32
                });
                let dropped = if self.rng.random_bool(0.2) {
                    self.rng.random_range(1..30)
                } else {
                    0
                };
                self.emit_with_time(EventType::Heartbeat, at, |e| {
                    e.bitrate_kbps = Some(bitrate);
                    e.latency_ms = latency;
                    e.dropped_frames = Some(dropped);
                });
                self.schedule(at + HEARTBEAT_MS, Action::Heartbeat);
            }
            Action::StallStart { length_ms } => {
                if self.state != State::Playing {
                    return;
                }
                self.emit_with_time(EventType::StallStart, at, |e| {
                    e.bitrate_kbps = Some(bitrate);
                });
                self.state = State::Stalled;
                self.schedule(at + length_ms, Action::StallEnd);
            }
            Action::StallEnd => {
                self.emit_with_time(EventType::StallEnd, at, |e| {
                    e.bitrate_kbps = Some(bitrate);
                });
                self.state = State::Playing;
                self.last_stall_end = at;
                if self.rung > 0 && self.rng.random_bool(0.6) {
                    let switch_at = at + self.rng.random_range(500..3000);
                    self.schedule(
                        switch_at,
                        Action::Switch {
                            rung: self.rung - 1,
                        },
                    );
                }
            }
            Action::Switch { rung } => {
                if rung == self.rung || rung >= ABR_LADDER.len() {
                    return;
                }
                let prev = bitrate;
                self.rung = rung;
                self.emit_with_time(EventType::BitrateChange, at, |e| {
                    e.bitrate_kbps = Some(ABR_LADDER[rung]);
                    e.prev_bitrate_kbps = Some(prev);
                });
            }
            Action::PlaybackError { fatal } => {
                let code = if fatal {
                    self.codes().fatal[self.rng.random_range(0..3)]
                } else {
                    self.codes().soft
                };
                self.emit_with_time(EventType::Error, at, |e| {
                    e.fatal = Some(fatal);
                    e.code = Some(code.into());
                });
                self.flush_now = true;
                if fatal {
                    self.end(at + 50, EndReason::Error);
                }
            }
            Action::Seek => {
                if self.state != State::Playing {
                    return;
                }
                self.emit_with_time(EventType::Seek, at, |e| {
                    e.bitrate_kbps = Some(bitrate);
                });
            }
            Action::Leave => {
                if self.silent_exit_share > 0.0 && self.rng.random_bool(self.silent_exit_share) {
                    self.state = State::Ended;
                    self.scheduled.clear();
                    self.pending.clear();
                    return;
                }
                let reason = if self.ctx.stream_type == StreamType::Vod && self.rng.random_bool(0.4)
                {
                    EndReason::Completed
                } else {
                    EndReason::Exit
                };
                self.end(at, reason);
            }
        }
    }

    /// How long this viewer watches once playback started.
    fn watch_time(&mut self) -> i64 {
        let median = match self.ctx.stream_type {
            StreamType::Live => 360_000.0,
            StreamType::Vod => 480_000.0,
        };
        log_normal(&mut self.rng, median, 0.9).clamp(20_000.0, 3.0 * 3_600_000.0) as i64
    }

    fn end(&mut self, at: i64, reason: EndReason) {
        self.advance(at);
        self.emit_with_time(EventType::ViewEnd, at, |e| e.reason = Some(reason));
        self.state = State::Ended;
        self.scheduled.clear();
        self.flush_now = true;
    }

    /// Emits an event that carries the playing and stalled time since the previous event
    /// (every event after the first frame does).
    fn emit_with_time(&mut self, kind: EventType, at: i64, fill: impl FnOnce(&mut QoeEvent)) {
        let (playing, stall) = (self.playing_ms, self.stall_ms);
        self.playing_ms = 0;
        self.stall_ms = 0;
        let started = self.state != State::Starting;
        self.emit(kind, at, |e| {
            if started {
                e.playing_ms = Some(playing.min(u64::from(u32::MAX)) as u32);
                e.stall_ms = Some(stall.min(u64::from(u32::MAX)) as u32);
            }
            fill(e);
        });
    }

    fn emit(&mut self, kind: EventType, at: i64, fill: impl FnOnce(&mut QoeEvent)) {
        let mut e = QoeEvent::blank(&self.ctx.view_id, self.seq, kind, at);
        e.stream_id.clone_from(&self.ctx.stream_id);
        e.stream_type = self.ctx.stream_type;
        e.cdn = self.ctx.cdn.to_owned();
        e.platform = self.ctx.platform.to_owned();
        e.region = self.ctx.region.to_owned();
        e.player = self.ctx.player.to_owned();
        e.protocol = self.ctx.protocol.to_owned();
        if matches!(kind, EventType::Error | EventType::ViewEnd) {
            e.started = Some(self.state != State::Starting);
        }
        fill(&mut e);
        self.seq += 1;
        if matches!(kind, EventType::ViewStart | EventType::FirstFrame) {
            self.flush_now = true;
        }
        self.pending.push(e);
    }
}

#[cfg(test)]
mod tests;
