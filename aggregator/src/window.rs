//! Event-time windowing of one Kafka partition: watermark, lateness, duplicates, and the
//! batch of partial rows waiting to be written. Pure: no I/O, no wall clock, so the outcome
//! is a function of the partition's messages alone, which is what makes replays harmless.
//!
//! Rules (documented in ARCHITECTURE.md):
//! - An event belongs to the window `[floor(event_time / w) * w, + w)`.
//! - The partition's watermark is `max(min(event_time, received_at)) - allowed_lateness` over
//!   the events seen; clamping by `received_at` keeps a client clock set in the future from
//!   closing windows early.
//! - An event whose window ended at or before the watermark is *late*: it is not added to
//!   any metric, only to `late_events` of its own window.
//! - An event whose `(view_id, seq)` was already accepted while its window is open is a
//!   *duplicate*: it only adds to `duplicate_events`.
//! - Windows are never "held open" for output: every batch writes partial rows that add up;
//!   the watermark only decides lateness and when duplicate-tracking state is dropped.

use crate::metrics::WindowMetrics;
use hashbrown::{Equivalent, HashMap, HashSet};
use qoe_schemas::{EventType, QoeEvent};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Which optional dimensions are grouping keys (region and CDN always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub stream_type: bool,
    pub platform: bool,
    pub stream_id: bool,
}

impl Default for Dimensions {
    fn default() -> Self {
        Dimensions {
            stream_type: true,
            platform: true,
            stream_id: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    pub dimensions: Dimensions,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: 10_000,
            allowed_lateness_ms: 30_000,
            dimensions: Dimensions::default(),
        }
    }
}

/// One slice of the dimensions; dimensions that are not grouping keys are empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice {
    pub region: String,
    pub cdn: String,
    pub stream_type: String,
    pub platform: String,
    pub stream_id: String,
}

impl Slice {
    pub fn of(e: &QoeEvent, d: Dimensions) -> Slice {
        Slice {
            region: e.region.clone(),
            cdn: e.cdn.clone(),
            stream_type: if d.stream_type {
                e.stream_type.as_str().to_owned()
            } else {
                String::new()
            },
            platform: if d.platform {
                e.platform.clone()
            } else {
                String::new()
            },
            stream_id: if d.stream_id {
                e.stream_id.clone()
            } else {
                String::new()
            },
        }
    }
}

/// A [`Slice`] borrowed from an event: looking up a batch row allocates nothing. Hashes like
/// `Slice` (same fields, same order; `String` hashes like `str`).
#[derive(Debug, Clone, Copy, Hash)]
struct SliceRef<'a> {
    region: &'a str,
    cdn: &'a str,
    stream_type: &'a str,
    platform: &'a str,
    stream_id: &'a str,
}

impl<'a> SliceRef<'a> {
    fn of(e: &'a QoeEvent, d: Dimensions) -> Self {
        SliceRef {
            region: &e.region,
            cdn: &e.cdn,
            stream_type: if d.stream_type {
                e.stream_type.as_str()
            } else {
                ""
            },
            platform: if d.platform { &e.platform } else { "" },
            stream_id: if d.stream_id { &e.stream_id } else { "" },
        }
    }

    fn owned(&self) -> Slice {
        Slice {
            region: self.region.to_owned(),
            cdn: self.cdn.to_owned(),
            stream_type: self.stream_type.to_owned(),
            platform: self.platform.to_owned(),
            stream_id: self.stream_id.to_owned(),
        }
    }

    fn same(&self, s: &Slice) -> bool {
        self.region == s.region
            && self.cdn == s.cdn
            && self.stream_type == s.stream_type
            && self.platform == s.platform
            && self.stream_id == s.stream_id
    }
}

/// Borrowed form of a `(window_start, Slice)` key; hashes like the tuple.
struct WindowKeyRef<'a>(i64, SliceRef<'a>);

impl Hash for WindowKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
    }
}

impl Equivalent<(i64, Slice)> for WindowKeyRef<'_> {
    fn equivalent(&self, key: &(i64, Slice)) -> bool {
        self.0 == key.0 && self.1.same(&key.1)
    }
}

/// Borrowed form of a `(window_start, Slice, view_id)` key; hashes like the tuple.
struct PresenceKeyRef<'a>(i64, SliceRef<'a>, &'a str);

impl Hash for PresenceKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
        self.2.hash(h);
    }
}

impl Equivalent<(i64, Slice, String)> for PresenceKeyRef<'_> {
    fn equivalent(&self, key: &(i64, Slice, String)) -> bool {
        self.0 == key.0 && self.1.same(&key.1) && self.2 == key.2
    }
}

impl Batch {
    /// The row of `(window, slice)`, created on first use.
    fn window_row(&mut self, window: i64, slice: SliceRef<'_>) -> &mut WindowMetrics {
        let key = WindowKeyRef(window, slice);
        if !self.windows.contains_key(&key) {
            self.windows
                .insert((window, slice.owned()), WindowMetrics::default());
        }
        self.windows.get_mut(&key).expect("row inserted just above")
    }
}

/// What a view did within one batch; partials of a view add up in ClickHouse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewPartial {
    pub region: String,
    pub cdn: String,
    pub stream_type: String,
    pub platform: String,
    pub stream_id: String,
    pub player: String,
    pub protocol: String,
    pub first_event_time: i64,
    pub last_event_time: i64,
    pub started: bool,
    pub startup_ms: u32,
    pub playing_ms: u64,
    pub stall_ms: u64,
    pub stalls: u64,
    pub bitrate_kbps_ms: u64,
    pub errors: u64,
    pub error_code: String,
    pub error_time: i64,
    pub end_reason: String,
    pub end_time: i64,
}

impl ViewPartial {
    fn add(&mut self, e: &QoeEvent) {
        if self.events_unset() {
            // A view's context is the same on all its events; copy it once per batch.
            self.first_event_time = e.event_time;
            self.last_event_time = e.event_time;
            self.region.clone_from(&e.region);
            self.cdn.clone_from(&e.cdn);
            self.stream_type = e.stream_type.as_str().to_owned();
            self.platform.clone_from(&e.platform);
            self.stream_id.clone_from(&e.stream_id);
            self.player.clone_from(&e.player);
            self.protocol.clone_from(&e.protocol);
        }
        self.first_event_time = self.first_event_time.min(e.event_time);
        self.last_event_time = self.last_event_time.max(e.event_time);
        if e.started == Some(true) {
            self.started = true;
        }
        match e.kind {
            EventType::FirstFrame => self.startup_ms = e.startup_ms.unwrap_or(0),
            EventType::StallStart => self.stalls += 1,
            EventType::Error => {
                self.errors += 1;
                if e.event_time >= self.error_time {
                    self.error_code = e.code.clone().unwrap_or_else(|| "unknown".into());
                    self.error_time = e.event_time;
                }
            }
            EventType::ViewEnd => {
                if let Some(r) = e.reason {
                    self.end_reason = r.as_str().to_owned();
                    self.end_time = e.event_time;
                }
            }
            _ => {}
        }
        if let Some(p) = e.playing_ms {
            self.playing_ms += u64::from(p);
            if let Some(b) = e.bitrate_kbps {
                self.bitrate_kbps_ms += u64::from(b) * u64::from(p);
            }
        }
        if let Some(s) = e.stall_ms {
            self.stall_ms += u64::from(s);
        }
    }

    fn events_unset(&self) -> bool {
        self.first_event_time == 0 && self.last_event_time == 0 && self.region.is_empty()
    }
}

/// Rows accumulated since the last write of this partition.
#[derive(Debug, Default)]
pub struct Batch {
    pub windows: HashMap<(i64, Slice), WindowMetrics>,
    pub presence: HashSet<(i64, Slice, String)>,
    pub views: HashMap<String, ViewPartial>,
    pub messages: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn rows(&self) -> usize {
        self.windows.len() + self.presence.len() + self.views.len()
    }
}

/// Where a written batch leaves the partition; stored with the batch, read back on restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// First offset of the batch (the previous checkpoint's `next_offset`).
    pub from_offset: i64,
    /// Offset of the next message to process.
    pub next_offset: i64,
    /// Replay from here to rebuild duplicate-tracking state (first offset of an open window).
    pub state_offset: i64,
    /// Watermark input: the largest clamped event time seen.
    pub max_event_time: i64,
}

/// How one message was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Late,
    Duplicate,
}

#[derive(Debug, Default)]
struct OpenWindow {
    first_offset: i64,
    keys: Vec<(u64, u32)>,
}

/// State of one partition.
#[derive(Debug)]
pub struct PartitionState {
    config: WindowConfig,
    max_event_time: i64,
    open: BTreeMap<i64, OpenWindow>,
    seen: HashSet<(u64, u32)>,
    batch: Batch,
    batch_from: i64,
    next_offset: i64,
}

fn view_key(view_id: &str) -> u64 {
    // Fixed keys: the same view hashes the same in every process, which restores rely on.
    let mut h = DefaultHasher::new();
    view_id.hash(&mut h);
    h.finish()
}

impl PartitionState {
    /// A partition starting at `checkpoint` (or at `offset` 0 with nothing seen).
    pub fn new(config: WindowConfig, checkpoint: Option<Checkpoint>) -> Self {
        let (next, max) = checkpoint
            .map(|c| (c.next_offset, c.max_event_time))
            .unwrap_or((0, i64::MIN));
        PartitionState {
            config,
            max_event_time: max,
            open: BTreeMap::new(),
            seen: HashSet::new(),
            batch: Batch::default(),
            batch_from: next,
            next_offset: next,
        }
    }

    pub fn watermark(&self) -> i64 {
        self.max_event_time
            .saturating_sub(self.config.allowed_lateness_ms)
    }

    pub fn window_of(&self, event_time: i64) -> i64 {
        event_time.div_euclid(self.config.window_ms) * self.config.window_ms
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    pub fn tracked_events(&self) -> usize {
        self.seen.len()
    }

    pub fn pending(&self) -> &Batch {
        &self.batch
    }

    /// Rebuilds duplicate-tracking state from a message between the checkpoint's
    /// `state_offset` and `next_offset`; emits nothing. The watermark is the checkpoint's.
    pub fn restore(&mut self, offset: i64, e: &QoeEvent) {
        let window = self.window_of(e.event_time);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.track(offset, window, e);
    }

    /// Records `(view_id, seq)` as accepted in `window`; false if it already was.
    fn track(&mut self, offset: i64, window: i64, e: &QoeEvent) -> bool {
        let key = (view_key(&e.view_id), e.seq);
        if !self.seen.insert(key) {
            return false;
        }
        self.open
            .entry(window)
            .or_insert_with(|| OpenWindow {
                first_offset: offset,
                keys: Vec::new(),
            })
            .keys
            .push(key);
        true
    }

    /// Processes the message at `offset`.
    pub fn apply(&mut self, offset: i64, e: &QoeEvent) -> Outcome {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        let window = self.window_of(e.event_time);
        let slice = SliceRef::of(e, self.config.dimensions);
        let outcome = if window + self.config.window_ms <= self.watermark() {
            Outcome::Late
        } else if self.track(offset, window, e) {
            Outcome::Accepted
        } else {
            Outcome::Duplicate
        };
        match outcome {
            Outcome::Accepted => {
                self.batch.window_row(window, slice).add(e);
                let presence = PresenceKeyRef(window, slice, &e.view_id);
                if !self.batch.presence.contains(&presence) {
                    self.batch
                        .presence
                        .insert((window, slice.owned(), e.view_id.clone()));
                }
                match self.batch.views.get_mut(e.view_id.as_str()) {
                    Some(v) => v.add(e),
                    None => {
                        let mut v = ViewPartial::default();
                        v.add(e);
                        self.batch.views.insert(e.view_id.clone(), v);
                    }
                }
            }
            Outcome::Late => self.batch.window_row(window, slice).late_events += 1,
            Outcome::Duplicate => self.batch.window_row(window, slice).duplicate_events += 1,
        }
        self.max_event_time = self.max_event_time.max(e.event_time.min(e.received_at));
        outcome
    }

    /// Skips a message that is not a QoE event (it still moves the partition forward).
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
    }

    /// Closes windows the watermark has passed and hands over the batch with its checkpoint.
    pub fn take_batch(&mut self) -> (Batch, Checkpoint) {
        let watermark = self.watermark();
        let window_ms = self.config.window_ms;
        let closed: Vec<i64> = self
            .open
            .range(..)
            .take_while(|(start, _)| **start + window_ms <= watermark)
            .map(|(start, _)| *start)
            .collect();
        for start in closed {
            if let Some(w) = self.open.remove(&start) {
                for k in w.keys {
                    self.seen.remove(&k);
                }
            }
        }
        let state_offset = self
            .open
            .values()
            .map(|w| w.first_offset)
            .min()
            .unwrap_or(self.next_offset);
        let checkpoint = Checkpoint {
            from_offset: self.batch_from,
            next_offset: self.next_offset,
            state_offset,
            max_event_time: self.max_event_time,
        };
        self.batch_from = self.next_offset;
        (std::mem::take(&mut self.batch), checkpoint)
    }

    /// Puts back a batch whose write failed, so nothing is lost while ClickHouse is away.
    pub fn restore_batch(&mut self, batch: Batch, checkpoint: Checkpoint) {
        let newer = std::mem::replace(&mut self.batch, batch);
        for (k, m) in newer.windows {
            self.batch.windows.entry(k).or_default().merge(&m);
        }
        self.batch.presence.extend(newer.presence);
        for (view, p) in newer.views {
            merge_view(self.batch.views.entry(view).or_default(), p);
        }
        self.batch.messages += newer.messages;
        self.batch_from = checkpoint.from_offset;
    }
}

fn merge_view(into: &mut ViewPartial, later: ViewPartial) {
    if into.events_unset() {
        *into = later;
        return;
    }
    let first = into.first_event_time.min(later.first_event_time);
    let last = into.last_event_time.max(later.last_event_time);
    let started = into.started || later.started;
    let startup = if later.startup_ms > 0 {
        later.startup_ms
    } else {
        into.startup_ms
    };
    let (code, code_time) = if later.error_time >= into.error_time && !later.error_code.is_empty() {
        (later.error_code.clone(), later.error_time)
    } else {
        (into.error_code.clone(), into.error_time)
    };
    let (reason, reason_time) = if !later.end_reason.is_empty() {
        (later.end_reason.clone(), later.end_time)
    } else {
        (into.end_reason.clone(), into.end_time)
    };
    into.playing_ms += later.playing_ms;
    into.stall_ms += later.stall_ms;
    into.stalls += later.stalls;
    into.bitrate_kbps_ms += later.bitrate_kbps_ms;
    into.errors += later.errors;
    into.region = later.region;
    into.cdn = later.cdn;
    into.stream_type = later.stream_type;
    into.platform = later.platform;
    into.stream_id = later.stream_id;
    into.player = later.player;
    into.protocol = later.protocol;
    into.first_event_time = first;
    into.last_event_time = last;
    into.started = started;
    into.startup_ms = startup;
    into.error_code = code;
    into.error_time = code_time;
    into.end_reason = reason;
    into.end_time = reason_time;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(view: &str, seq: u32, kind: EventType, t: i64) -> QoeEvent {
        QoeEvent {
            received_at: t + 100,
            playing_ms: Some(1000),
            ..QoeEvent::blank(view, seq, kind, t)
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
        let (batch, cp) = p.take_batch();
        let w100 = &batch.windows[&(
            100_000,
            Slice::of(&ev("a", 0, EventType::ViewStart, 0), Dimensions::default()),
        )];
        assert_eq!((w100.attempts, w100.duplicate_events), (1, 1));
        let w60: u64 = batch
            .windows
            .iter()
            .filter(|((w, _), _)| *w == 60_000)
            .map(|(_, m)| m.late_events + m.events)
            .sum();
        assert_eq!(w60, 1);
        assert_eq!(
            cp,
            Checkpoint {
                from_offset: 0,
                next_offset: 4,
                state_offset: 0,
                max_event_time: 100_000
            }
        );
        assert_eq!(batch.presence.len(), 2);
    }

    #[test]
    fn future_client_clocks_do_not_advance_the_watermark() {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let mut e = ev("a", 0, EventType::ViewStart, 1_000_000);
        e.received_at = 700_000; // event time 5 minutes ahead of arrival
        p.apply(0, &e);
        assert_eq!(p.watermark(), 700_000 - 30_000);
    }

    #[test]
    fn restore_rebuilds_duplicate_state_exactly() {
        let config = WindowConfig::default();
        let events: Vec<QoeEvent> = (0..200)
            .map(|i| {
                ev(
                    &format!("v{}", i % 7),
                    i / 7,
                    EventType::Heartbeat,
                    1_000_000 + i64::from(i) * 700,
                )
            })
            .collect();
        // Uninterrupted run.
        let mut a = PartitionState::new(config, None);
        for (o, e) in events.iter().enumerate() {
            a.apply(o as i64, e);
        }
        // Run that checkpoints at 120, "crashes", restores and continues; then replays
        // duplicates of everything to compare classification.
        let mut b = PartitionState::new(config, None);
        for (o, e) in events.iter().enumerate().take(120) {
            b.apply(o as i64, e);
        }
        let (_, cp) = b.take_batch();
        let mut c = PartitionState::new(config, Some(cp));
        for o in cp.state_offset..cp.next_offset {
            c.restore(o, &events[o as usize]);
        }
        for (o, e) in events.iter().enumerate().skip(120) {
            c.apply(o as i64, e);
        }
        let _ = a.take_batch();
        let _ = c.take_batch();
        assert_eq!(a.seen, c.seen);
        assert_eq!(a.max_event_time, c.max_event_time);
        for (o, e) in events.iter().enumerate() {
            assert_eq!(
                a.apply(1000 + o as i64, e),
                c.apply(1000 + o as i64, e),
                "event {o}"
            );
        }
    }

    #[test]
    fn failed_batches_are_merged_back() {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        p.apply(0, &ev("a", 0, EventType::ViewStart, 100_000));
        let (batch, cp) = p.take_batch();
        p.apply(1, &ev("a", 1, EventType::Heartbeat, 100_500));
        p.restore_batch(batch, cp);
        let (batch, cp) = p.take_batch();
        assert_eq!(cp.from_offset, 0);
        assert_eq!(cp.next_offset, 2);
        let total: u64 = batch.windows.values().map(|m| m.events).sum();
        assert_eq!(total, 2);
        assert_eq!(batch.views["a"].playing_ms, 2000);
        assert_eq!(batch.messages, 2);
    }
}
