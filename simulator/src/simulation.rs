//! The audience over simulated time. Each call to [`Simulation::tick`] advances one second:
//! new viewers arrive (keeping the audience near its target size), every active view
//! advances, and the beacons their SDKs flush are returned, some reordered, some to be
//! sent twice on purpose (a client that lost a response and retried), and some sent again a
//! minute or so later with their original `sent_at` (an offline queue replaying a batch whose
//! acknowledgement it missed). Some viewers leave silently (no `view_end`).
//!
//! Simulated time is independent of wall time: the caller decides how fast ticks come, which
//! is what time compression is. A run is a function of its [`Settings`] alone.

use crate::incident::Incident;
use crate::player::{Conditions, Player};
use crate::population::{baseline_quality, draw_context, ViewContext};
use qoe_schemas::{EventType, QoeEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const TICK_MS: i64 = 1000;

#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Prefix of every view_id of the run (so runs never share views).
    pub run_id: String,
    /// Target number of concurrent viewers.
    pub viewers: usize,
    /// Simulated start, ms since the epoch.
    pub start_ms: i64,
    /// Simulated length of the run, ms.
    pub span_ms: i64,
    /// SDK flush interval, ms of simulated time.
    pub flush_ms: i64,
    /// How long the audience takes to build up at the start, ms.
    pub ramp_ms: i64,
    pub incidents: Vec<Incident>,
    /// Share of beacons sent twice.
    pub duplicate_rate: f64,
    /// Share of beacons with two neighbouring events swapped.
    pub reorder_rate: f64,
    /// Share of beacons (of at most [`RESEND_MAX_EVENTS`] events) sent again later, while
    /// their view still plays.
    pub resend_rate: f64,
    /// Share of departures after playback that are silent.
    pub silent_exit_rate: f64,
    /// Share of starts the service refuses with a business error.
    pub business_refusal_rate: f64,
    /// The aggregator's window length (late re-sends keep clear of its boundaries).
    pub window_ms: i64,
    /// How the audience size moves over the day.
    pub audience: Audience,
    /// Whether some viewers come from small regions (a few viewers per slice).
    pub long_tail: bool,
    /// Share of Android and iOS views that are native apps: no beacons, their requests in the
    /// CDN's logs ([`crate::native`]).
    pub native_share: f64,
}

/// The audience size over simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Audience {
    /// `viewers` concurrent viewers all along (after the ramp).
    Flat,
    /// A day's curve: `viewers` at `peak_hour` (UTC hour of simulated time, 0-24), `trough`
    /// times that twelve hours away, a cosine in between. At peak the networks are busier:
    /// every slice stalls up to `congestion` more often (0.3: +30 %) and starts up to half
    /// that much slower, in proportion to the audience.
    Diurnal {
        trough: f64,
        peak_hour: f64,
        congestion: f64,
    },
}

impl Audience {
    /// The audience at `t` (ms since the epoch) as a share of its peak, in (0, 1].
    pub fn level(&self, t: i64) -> f64 {
        match *self {
            Audience::Flat => 1.0,
            Audience::Diurnal {
                trough, peak_hour, ..
            } => {
                let hour = t.rem_euclid(86_400_000) as f64 / 3_600_000.0;
                let phase = std::f64::consts::TAU * (hour - peak_hour) / 24.0;
                trough + (1.0 - trough) * 0.5 * (1.0 + phase.cos())
            }
        }
    }

    /// How much busier than at the trough every network is at `t`: 0 at the trough (and
    /// always for a flat audience), `congestion` at peak.
    fn load(&self, t: i64) -> f64 {
        match *self {
            Audience::Flat => 0.0,
            Audience::Diurnal {
                trough, congestion, ..
            } => congestion * ((self.level(t) - trough) / (1.0 - trough).max(1e-9)),
        }
    }
}

/// Only small beacons are re-sent late: the delay is chosen so that no event's shifted time
/// lies within [`RESEND_MARGIN_MS`] before a window boundary, and each event rules out that much.
pub const RESEND_MAX_EVENTS: usize = 3;
/// The request's own latency adds to the shift; this much of it cannot move an event into
/// the next window.
pub const RESEND_MARGIN_MS: i64 = 2_000;
/// Late re-sends come this long after the original (simulated ms), before the margin search:
/// well inside the aggregator's view timeout (its test runs use 60 s, plus 30 s lateness).
pub const RESEND_DELAY_MS: std::ops::Range<i64> = 30_000..70_000;

/// A batch of one view's events, as one request body will carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct Beacon {
    pub ctx: ViewContext,
    pub events: Vec<QoeEvent>,
    /// 2 when the client will send the same beacon again after it was acknowledged.
    pub copies: u8,
    /// A late re-send: the delay since the original, ms. The client sends the original
    /// `sent_at`, so the collector moves every event's time by this much (plus the request's
    /// latency); 0 for an original.
    pub shift_ms: i64,
    /// A native app's view: its events are what its player requested, for the CDN's log
    /// stream, not a beacon.
    pub native: bool,
}

pub struct Simulation {
    settings: Settings,
    rng: StdRng,
    players: Vec<Player>,
    /// Start times of the views still to come, earliest first.
    arrivals: BinaryHeap<Reverse<i64>>,
    views_started: u64,
    now: i64,
    /// Late re-sends waiting for their time, by due time.
    resends: Vec<(i64, Beacon)>,
    /// Native app views (their view ids).
    native: std::collections::HashSet<String>,
}

impl Simulation {
    pub fn new(settings: Settings) -> Self {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let ramp = settings.ramp_ms.max(1);
        let arrivals = (0..settings.viewers)
            .take(
                (settings.viewers as f64 * settings.audience.level(settings.start_ms)).ceil()
                    as usize,
            )
            .map(|_| Reverse(settings.start_ms + rng.random_range(0..ramp)))
            .collect();
        Simulation {
            now: settings.start_ms,
            settings,
            rng,
            players: Vec::new(),
            arrivals,
            views_started: 0,
            resends: Vec::new(),
            native: std::collections::HashSet::new(),
        }
    }

    /// Simulated time, ms since the epoch.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Simulated time since the start, ms.
    pub fn elapsed_ms(&self) -> i64 {
        self.now - self.settings.start_ms
    }

    pub fn finished(&self) -> bool {
        self.elapsed_ms() >= self.settings.span_ms
    }

    pub fn active_views(&self) -> usize {
        self.players.len()
    }

    pub fn views_started(&self) -> u64 {
        self.views_started
    }

    /// Incidents in effect now.
    pub fn active_incidents(&self) -> impl Iterator<Item = &Incident> {
        let at = self.elapsed_ms();
        self.settings
            .incidents
            .iter()
            .filter(move |i| at >= i.start_ms && at < i.start_ms + i.duration_ms)
    }

    /// The conditions of a slice at simulated time `t`.
    pub fn conditions(&self, region: &str, cdn: &str, t: i64) -> Conditions {
        let offset = t - self.settings.start_ms;
        let mut quality = baseline_quality(region, cdn);
        let load = self.settings.audience.load(t);
        quality.stalls *= 1.0 + load;
        quality.startup *= 1.0 + load / 2.0;
        let mut cond = Conditions {
            quality,
            start_failure_floor: 0.0,
            start_failure_extra: 0.0,
            business_refusals: self.settings.business_refusal_rate,
        };
        for inc in self
            .settings
            .incidents
            .iter()
            .filter(|i| i.applies(region, cdn, offset))
        {
            cond.quality = inc.degrade(cond.quality);
            cond.start_failure_floor = cond.start_failure_floor.max(inc.start_failures);
            cond.start_failure_extra += inc.start_failure_points / 100.0;
        }
        cond
    }

    /// Advances one tick; returns the beacons flushed during it. At the end of the run every
    /// view flushes what it still holds.
    pub fn tick(&mut self) -> Vec<Beacon> {
        if self.finished() {
            return Vec::new();
        }
        let (from, to) = (self.now, self.now + TICK_MS);
        while self.arrivals.peek().is_some_and(|Reverse(t)| *t < to) {
            let Some(Reverse(at)) = self.arrivals.pop() else {
                break;
            };
            self.start_view(at.max(from));
        }
        let mut flushed = Vec::new();
        // A tick's conditions per slice, worked out once (a few dozen slices, many viewers).
        let mut slices: Vec<(&'static str, &'static str, Conditions)> = Vec::new();
        for i in 0..self.players.len() {
            let (region, cdn) = (self.players[i].ctx.region, self.players[i].ctx.cdn);
            let cond = match slices.iter().find(|(r, c, _)| *r == region && *c == cdn) {
                Some((_, _, cond)) => *cond,
                None => {
                    let cond = self.conditions(region, cdn, from);
                    slices.push((region, cdn, cond));
                    cond
                }
            };
            if let Some(events) = self.players[i].tick(from, to, &cond) {
                flushed.push((self.players[i].ctx.clone(), events));
            }
        }
        // Departures are replaced after a short while, keeping the audience near its size (which
        // a diurnal audience moves: fewer replacements as it falls, more arrivals as it grows).
        self.players.retain(|p| !p.ended());
        let target = (self.settings.viewers as f64 * self.settings.audience.level(to)).round();
        let expected = self.players.len() + self.arrivals.len();
        for _ in expected..target as usize {
            let gap = (-3000.0 * (1.0 - self.rng.random::<f64>()).ln()) as i64;
            self.arrivals.push(Reverse(to + gap));
        }
        // Late re-sends fall due; a view that has gone since does not send them.
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resends)
            .into_iter()
            .partition(|(at, _)| *at < to);
        self.resends = waiting;
        let mut late_copies: Vec<Beacon> = due
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| self.players.iter().any(|p| p.ctx.view_id == b.ctx.view_id))
            .collect();
        self.now = to;
        if self.finished() {
            for p in &mut self.players {
                if let Some(events) = p.drain() {
                    flushed.push((p.ctx.clone(), events));
                }
            }
        }
        let mut out: Vec<Beacon> = flushed
            .into_iter()
            .map(|(ctx, events)| self.shape(ctx, events))
            .collect();
        out.append(&mut late_copies);
        out
    }

    fn start_view(&mut self, at: i64) {
        let n = self.views_started;
        self.views_started += 1;
        let ctx = draw_context(
            &mut self.rng,
            &self.settings.run_id,
            n,
            self.settings.long_tail,
        );
        let seed = self
            .settings
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(n);
        // Drawn only when asked for, so runs without native viewers stay as they were.
        if self.settings.native_share > 0.0
            && matches!(ctx.platform, "android" | "ios")
            && self.rng.random_bool(self.settings.native_share)
        {
            self.native.insert(ctx.view_id.clone());
        }
        let cond = self.conditions(ctx.region, ctx.cdn, at);
        self.players.push(
            Player::new(ctx, seed, at, &cond, self.settings.flush_ms)
                .with_silent_exits(self.settings.silent_exit_rate),
        );
    }

    /// What the network and a retrying client do to a batch on its way.
    fn shape(&mut self, ctx: ViewContext, mut events: Vec<QoeEvent>) -> Beacon {
        if self.native.contains(&ctx.view_id) {
            // A CDN logs requests in the order they came; a log stream may send a batch twice.
            let copies = if self.rng.random_bool(self.settings.duplicate_rate) {
                2
            } else {
                1
            };
            if events.iter().any(|e| e.kind == EventType::ViewEnd) {
                self.native.remove(&ctx.view_id);
            }
            return Beacon {
                ctx,
                events,
                copies,
                shift_ms: 0,
                native: true,
            };
        }
        if events.len() >= 2 && self.rng.random_bool(self.settings.reorder_rate) {
            let i = self.rng.random_range(0..events.len() - 1);
            events.swap(i, i + 1);
        }
        let copies = if self.rng.random_bool(self.settings.duplicate_rate) {
            2
        } else {
            1
        };
        if events.len() <= RESEND_MAX_EVENTS && self.rng.random_bool(self.settings.resend_rate) {
            let delay = self.rng.random_range(RESEND_DELAY_MS);
            if let Some(shift_ms) = resend_shift(&events, delay, self.window_ms()) {
                let copy = Beacon {
                    ctx: ctx.clone(),
                    events: events.clone(),
                    copies: 1,
                    shift_ms,
                    native: false,
                };
                self.resends.push((self.now + shift_ms, copy));
            }
        }
        Beacon {
            ctx,
            events,
            copies,
            shift_ms: 0,
            native: false,
        }
    }

    fn window_ms(&self) -> i64 {
        self.settings.window_ms
    }
}

/// The shift of a late re-send, at least `delay`: the first (in 100 ms steps, within one
/// window) that puts no event of the beacon within [`RESEND_MARGIN_MS`] before a window
/// boundary, so that the request's latency cannot change any event's window.
pub fn resend_shift(events: &[QoeEvent], delay: i64, window_ms: i64) -> Option<i64> {
    (0..window_ms / 100)
        .map(|step| delay + step * 100)
        .find(|shift| {
            events.iter().all(|e| {
                (e.event_time + shift).rem_euclid(window_ms) < window_ms - RESEND_MARGIN_MS
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::EventType;

    fn settings(incidents: Vec<Incident>) -> Settings {
        Settings {
            seed: 9,
            run_id: "t".into(),
            viewers: 300,
            start_ms: 1_763_721_600_000,
            span_ms: 20 * 60_000,
            flush_ms: 15_000,
            ramp_ms: 30_000,
            incidents,
            duplicate_rate: 0.02,
            reorder_rate: 0.05,
            resend_rate: 0.02,
            silent_exit_rate: 0.05,
            business_refusal_rate: 0.0,
            window_ms: 10_000,
            audience: Audience::Flat,
            long_tail: false,
            native_share: 0.0,
        }
    }

    fn run(s: Settings) -> Vec<Beacon> {
        let mut sim = Simulation::new(s);
        let mut out = Vec::new();
        while !sim.finished() {
            out.extend(sim.tick());
        }
        out
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = run(settings(vec![]));
        assert_eq!(a, run(settings(vec![])));
        let mut other = settings(vec![]);
        other.seed = 10;
        assert_ne!(a, run(other));
    }

    #[test]
    fn late_copies_keep_clear_of_window_boundaries() {
        let at = |t: i64| QoeEvent::blank("v", 0, EventType::Heartbeat, t);
        // 8_500 + 30_000 lands 1.5 s before a boundary: the shift grows past it.
        assert_eq!(resend_shift(&[at(8_500)], 30_000, 10_000), Some(31_500));
        assert_eq!(resend_shift(&[at(1_000)], 30_000, 10_000), Some(30_000));
        // Five events 2 s apart rule out every shift.
        let crowded: Vec<_> = (0..5).map(|i| at(i * 2_000)).collect();
        assert_eq!(resend_shift(&crowded, 30_000, 10_000), None);
    }

    #[test]
    fn keeps_the_audience_near_its_size_and_events_within_the_flush_interval() {
        let s = settings(vec![]);
        let mut sim = Simulation::new(s.clone());
        let mut sizes = Vec::new();
        let (mut dups, mut reordered, mut beacons, mut late_copies) = (0, 0, 0, 0);
        while !sim.finished() {
            let now = sim.now();
            for b in sim.tick() {
                beacons += 1;
                dups += usize::from(b.copies == 2);
                late_copies += usize::from(b.shift_ms > 0);
                reordered += usize::from(b.events.windows(2).any(|w| w[0].seq > w[1].seq));
                for e in &b.events {
                    // A beacon never carries events (as the collector will time them) much
                    // older than one flush interval: this is what keeps every event within
                    // the aggregator's lateness. A late copy's are moved by its shift.
                    let t = e.event_time + b.shift_ms;
                    assert!(t >= now - s.flush_ms - 2 * TICK_MS);
                    assert!(t < now + 2 * TICK_MS);
                    if b.shift_ms > 0 {
                        assert!(
                            t.rem_euclid(10_000) < 10_000 - RESEND_MARGIN_MS,
                            "clear of a window boundary"
                        );
                    }
                }
            }
            if sim.elapsed_ms() > 120_000 {
                sizes.push(sim.active_views());
            }
        }
        let min = *sizes.iter().min().unwrap();
        let max = *sizes.iter().max().unwrap();
        assert!(min > 250 && max <= 300, "audience between {min} and {max}");
        assert!(
            dups > 0 && reordered > 0 && late_copies > 20,
            "dups {dups}, reordered {reordered}, late copies {late_copies}"
        );
        assert!(beacons > 1000);
    }

    #[test]
    fn a_diurnal_audience_follows_its_curve() {
        let day = Audience::Diurnal {
            trough: 0.1,
            peak_hour: 20.0,
            congestion: 0.3,
        };
        let at = |hour: f64| 1_768_176_000_000 + (hour * 3_600_000.0) as i64; // a midnight
        assert!((day.level(at(20.0)) - 1.0).abs() < 1e-9);
        assert!((day.level(at(8.0)) - 0.1).abs() < 1e-9);
        assert!((day.level(at(2.0)) - 0.55).abs() < 1e-9);
        assert!((day.load(at(20.0)) - 0.3).abs() < 1e-9 && day.load(at(8.0)).abs() < 1e-9);
        assert_eq!(Audience::Flat.level(at(8.0)), 1.0);
        // From the peak down to 02:00, where the target is 55 % of it.
        let mut s = settings(vec![]);
        s.audience = day;
        s.long_tail = true;
        s.viewers = 400;
        s.start_ms = at(20.0);
        s.span_ms = 6 * 3_600_000;
        let mut sim = Simulation::new(s);
        let mut regions = std::collections::BTreeSet::new();
        let mut at_peak = 0;
        while !sim.finished() {
            for b in sim.tick() {
                regions.insert(b.ctx.region);
            }
            if sim.elapsed_ms() == 600_000 {
                at_peak = sim.active_views();
            }
        }
        assert!((340..=400).contains(&at_peak), "{at_peak} at peak");
        let end = sim.active_views();
        assert!((180..=280).contains(&end), "{end} at 02:00");
        assert!(regions.contains("me-central") && regions.contains("oc-east"));
    }

    #[test]
    fn an_incident_degrades_its_slice_only_while_it_lasts() {
        let inc: Incident =
            "region=eu-west,cdn=cdn-b,start=5m,duration=5m,stalls=5,startup=3,start_failures=0.3"
                .parse()
                .unwrap();
        let s = settings(vec![inc]);
        // Per (in incident slice, during incident): stalls, playing ms, start failures, starts.
        let mut stats = std::collections::BTreeMap::<(bool, bool), [u64; 4]>::new();
        for b in run(s.clone()).into_iter().filter(|b| b.shift_ms == 0) {
            for e in &b.events {
                let in_slice = e.region == "eu-west" && e.cdn == "cdn-b";
                let offset = e.event_time - s.start_ms;
                let during = (300_000..600_000).contains(&offset);
                let st = stats.entry((in_slice, during)).or_default();
                st[1] += u64::from(e.playing_ms.unwrap_or(0));
                match e.kind {
                    EventType::StallStart => st[0] += 1,
                    EventType::Error if e.started == Some(false) => st[2] += 1,
                    EventType::ViewStart => st[3] += 1,
                    _ => {}
                }
            }
        }
        let stall_rate = |k| stats[&k][0] as f64 / stats[&k][1] as f64;
        let fail_rate = |k| stats[&k][2] as f64 / stats[&k][3] as f64;
        assert!(stall_rate((true, true)) > 3.0 * stall_rate((true, false)));
        assert!(stall_rate((true, true)) > 3.0 * stall_rate((false, true)));
        assert!(fail_rate((true, true)) > 0.15);
        assert!(fail_rate((true, false)) < 0.06 && fail_rate((false, true)) < 0.06);
    }
}
