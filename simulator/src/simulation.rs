//! The audience over simulated time. Each call to [`Simulation::tick`] advances one second:
//! new viewers arrive (keeping the audience near its target size), every active view
//! advances, and the beacons their SDKs flush are returned, some reordered and some to be
//! sent twice on purpose (a client that lost a response and retried).
//!
//! Simulated time is independent of wall time: the caller decides how fast ticks come, which
//! is what time compression is. A run is a function of its [`Settings`] alone.

use crate::incident::Incident;
use crate::player::{Conditions, Player};
use crate::population::{baseline_quality, draw_context, ViewContext};
use qoe_schemas::QoeEvent;
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
}

/// A batch of one view's events, as one request body will carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct Beacon {
    pub ctx: ViewContext,
    pub events: Vec<QoeEvent>,
    /// 2 when the client will send the same beacon again after it was acknowledged.
    pub copies: u8,
}

pub struct Simulation {
    settings: Settings,
    rng: StdRng,
    players: Vec<Player>,
    /// Start times of the views still to come, earliest first.
    arrivals: BinaryHeap<Reverse<i64>>,
    views_started: u64,
    now: i64,
}

impl Simulation {
    pub fn new(settings: Settings) -> Self {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let ramp = settings.ramp_ms.max(1);
        let arrivals = (0..settings.viewers)
            .map(|_| Reverse(settings.start_ms + rng.random_range(0..ramp)))
            .collect();
        Simulation {
            now: settings.start_ms,
            settings,
            rng,
            players: Vec::new(),
            arrivals,
            views_started: 0,
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
        let mut cond = Conditions {
            quality: baseline_quality(region, cdn),
            start_failure_floor: 0.0,
        };
        for inc in self
            .settings
            .incidents
            .iter()
            .filter(|i| i.applies(region, cdn, offset))
        {
            cond.quality = inc.degrade(cond.quality);
            cond.start_failure_floor = cond.start_failure_floor.max(inc.start_failures);
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
        for i in 0..self.players.len() {
            let (region, cdn) = (self.players[i].ctx.region, self.players[i].ctx.cdn);
            let cond = self.conditions(region, cdn, from);
            if let Some(events) = self.players[i].tick(from, to, &cond) {
                flushed.push((self.players[i].ctx.clone(), events));
            }
        }
        // Departures are replaced after a short while, keeping the audience near its size.
        let mut kept = Vec::with_capacity(self.players.len());
        for p in self.players.drain(..) {
            if p.ended() {
                let gap = (-3000.0 * (1.0 - self.rng.random::<f64>()).ln()) as i64;
                self.arrivals.push(Reverse(to + gap));
            } else {
                kept.push(p);
            }
        }
        self.players = kept;
        self.now = to;
        if self.finished() {
            for p in &mut self.players {
                if let Some(events) = p.drain() {
                    flushed.push((p.ctx.clone(), events));
                }
            }
        }
        flushed
            .into_iter()
            .map(|(ctx, events)| self.shape(ctx, events))
            .collect()
    }

    fn start_view(&mut self, at: i64) {
        let n = self.views_started;
        self.views_started += 1;
        let ctx = draw_context(&mut self.rng, &self.settings.run_id, n);
        let seed = self
            .settings
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(n);
        let cond = self.conditions(ctx.region, ctx.cdn, at);
        self.players
            .push(Player::new(ctx, seed, at, &cond, self.settings.flush_ms));
    }

    /// What the network and a retrying client do to a batch on its way.
    fn shape(&mut self, ctx: ViewContext, mut events: Vec<QoeEvent>) -> Beacon {
        if events.len() >= 2 && self.rng.random_bool(self.settings.reorder_rate) {
            let i = self.rng.random_range(0..events.len() - 1);
            events.swap(i, i + 1);
        }
        let copies = if self.rng.random_bool(self.settings.duplicate_rate) {
            2
        } else {
            1
        };
        Beacon {
            ctx,
            events,
            copies,
        }
    }
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
    fn keeps_the_audience_near_its_size_and_events_within_the_flush_interval() {
        let s = settings(vec![]);
        let mut sim = Simulation::new(s.clone());
        let mut sizes = Vec::new();
        let (mut dups, mut reordered, mut beacons) = (0, 0, 0);
        while !sim.finished() {
            let now = sim.now();
            for b in sim.tick() {
                beacons += 1;
                dups += usize::from(b.copies == 2);
                reordered += usize::from(b.events.windows(2).any(|w| w[0].seq > w[1].seq));
                for e in &b.events {
                    // A beacon never carries events much older than one flush interval:
                    // this is what keeps every event within the aggregator's lateness.
                    assert!(e.event_time >= now - s.flush_ms - 2 * TICK_MS);
                    assert!(e.event_time < now + 2 * TICK_MS);
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
            dups > 0 && reordered > 0,
            "dups {dups}, reordered {reordered}"
        );
        assert!(beacons > 1000);
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
        for b in run(s.clone()) {
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
