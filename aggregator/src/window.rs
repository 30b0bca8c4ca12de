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
//!
//! - A CMCD report is turned into events by its session ([`crate::cmcd`]); each event counts
//!   in its own window. The session table travels with the checkpoint.
//!
//! Speed: this runs once per message, so the hot path allocates nothing for events whose
//! context, window and view the batch already holds. A batch interns each distinct context
//! (region, CDN, stream, platform, player, protocol) once and keys its rows by small indices;
//! events are read borrowed from the message bytes ([`EventRef`]).

use crate::cmcd::{SessionConfig, Sessions};
use crate::metrics::{add_request, AddEvent, WindowMetrics};
use hashbrown::{DefaultHashBuilder, HashMap, HashSet};
use indexmap::{Equivalent, IndexMap, IndexSet};
use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::QoeEvent;
use qoe_schemas::{EventRef, EventType, StreamType};
use std::collections::BTreeMap;
use std::hash::BuildHasher;

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

/// Why a window length cannot be used: the 1-minute and 1-hour tables are rolled up from the
/// base rows by the minute and hour that contain each window's start, so a base window must
/// fit whole into a minute (a length that divides 60 s), and the base table is the 10 s one.
pub fn check_window_secs(secs: u32) -> Result<(), String> {
    if secs == 0 || 60 % secs != 0 {
        return Err(format!(
            "--window-secs {secs} must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60): \
             windows are rolled up into minutes and hours, and a window that straddles a minute \
             would be counted in the wrong one"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    pub dimensions: Dimensions,
    /// CMCD session timeout and bound.
    pub sessions: SessionConfig,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: 10_000,
            allowed_lateness_ms: 30_000,
            dimensions: Dimensions::default(),
            sessions: SessionConfig::default(),
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
    pub fn of(c: &Context, d: Dimensions) -> Slice {
        let optional = |on: bool, value: &str| if on { value.to_owned() } else { String::new() };
        Slice {
            region: c.region.clone(),
            cdn: c.cdn.clone(),
            stream_type: optional(d.stream_type, c.stream_type.as_str()),
            platform: optional(d.platform, &c.platform),
            stream_id: optional(d.stream_id, &c.stream_id),
        }
    }
}

/// Where and how a view plays: the context the collector copies into each of its events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Context {
    pub region: String,
    pub cdn: String,
    pub stream_type: StreamType,
    pub platform: String,
    pub stream_id: String,
    pub player: String,
    pub protocol: String,
}

/// A [`Context`] borrowed from an event: finding a known one allocates nothing. Hashes like
/// `Context` (same fields, same order; `String` hashes like `str`).
#[derive(Hash)]
struct ContextRef<'a> {
    region: &'a str,
    cdn: &'a str,
    stream_type: StreamType,
    platform: &'a str,
    stream_id: &'a str,
    player: &'a str,
    protocol: &'a str,
}

impl<'a> ContextRef<'a> {
    fn of(e: &'a EventRef<'_>) -> Self {
        ContextRef {
            region: &e.region,
            cdn: &e.cdn,
            stream_type: e.stream_type,
            platform: &e.platform,
            stream_id: &e.stream_id,
            player: &e.player,
            protocol: &e.protocol,
        }
    }

    fn owned(&self) -> Context {
        Context {
            region: self.region.to_owned(),
            cdn: self.cdn.to_owned(),
            stream_type: self.stream_type,
            platform: self.platform.to_owned(),
            stream_id: self.stream_id.to_owned(),
            player: self.player.to_owned(),
            protocol: self.protocol.to_owned(),
        }
    }
}

impl Equivalent<Context> for ContextRef<'_> {
    fn equivalent(&self, c: &Context) -> bool {
        self.region == c.region
            && self.cdn == c.cdn
            && self.stream_type == c.stream_type
            && self.platform == c.platform
            && self.stream_id == c.stream_id
            && self.player == c.player
            && self.protocol == c.protocol
    }
}

/// What a view did within one batch; partials of a view add up in ClickHouse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewPartial {
    /// The batch's index of the context of the view's first event in it.
    context: u32,
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
    pub end_reason: &'static str,
    pub end_time: i64,
}

impl ViewPartial {
    fn new(context: u32, e: &EventRef<'_>) -> Self {
        let mut v = ViewPartial {
            context,
            first_event_time: e.event_time,
            last_event_time: e.event_time,
            ..ViewPartial::default()
        };
        v.add(e);
        v
    }

    fn add(&mut self, e: &EventRef<'_>) {
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
                    self.error_code = e.code.as_deref().unwrap_or("unknown").to_owned();
                    self.error_time = e.event_time;
                }
            }
            EventType::ViewEnd => {
                if let Some(r) = e.reason {
                    self.end_reason = r.as_str();
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
}

/// Rows accumulated since the last write of this partition.
///
/// Rows refer to contexts, slices and views by their index in this batch, so the hot path
/// hashes small integers; the strings exist once per batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each distinct context of the batch's events, with the index of its slice.
    contexts: IndexMap<Context, u32, DefaultHashBuilder>,
    slices: IndexSet<Slice, DefaultHashBuilder>,
    /// `(window_start, slice)` -> metrics.
    windows: HashMap<(i64, u32), WindowMetrics>,
    /// `(window_start, slice, view)` for every view with an accepted event there.
    presence: HashSet<(i64, u32, u32)>,
    views: IndexMap<String, ViewPartial, DefaultHashBuilder>,
    pub messages: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn rows(&self) -> usize {
        self.windows.len() + self.presence.len() + self.views.len()
    }

    /// Metrics per `(window_start, slice)`.
    pub fn window_rows(&self) -> impl Iterator<Item = (i64, &Slice, &WindowMetrics)> {
        self.windows
            .iter()
            .map(|(&(w, s), m)| (w, &self.slices[s as usize], m))
    }

    /// `(window_start, slice, view_id)` of every view with an accepted event there.
    pub fn presence_rows(&self) -> impl Iterator<Item = (i64, &Slice, &str)> {
        self.presence.iter().map(|&(w, s, v)| {
            let (view_id, _) = &self
                .views
                .get_index(v as usize)
                .expect("view of a presence row");
            (w, &self.slices[s as usize], view_id.as_str())
        })
    }

    /// What each view did in this batch, with the context of its first event in it.
    pub fn view_rows(&self) -> impl Iterator<Item = (&str, &Context, &ViewPartial)> {
        self.views.iter().map(|(id, v)| {
            let (context, _) = self
                .contexts
                .get_index(v.context as usize)
                .expect("context of a view");
            (id.as_str(), context, v)
        })
    }

    /// Indices of the event's context and slice, interned on first use.
    fn intern(&mut self, e: &EventRef<'_>, d: Dimensions) -> (u32, u32) {
        let key = ContextRef::of(e);
        if let Some((i, _, &slice)) = self.contexts.get_full(&key) {
            return (i as u32, slice);
        }
        let context = key.owned();
        let (slice, _) = self.slices.insert_full(Slice::of(&context, d));
        let (i, _) = self.contexts.insert_full(context, slice as u32);
        (i as u32, slice as u32)
    }

    fn window_row(&mut self, window: i64, slice: u32) -> &mut WindowMetrics {
        self.windows.entry((window, slice)).or_default()
    }

    /// Marks a view that went silent as ended by `timeout` in its summary (no window metric:
    /// silence is not an event). `e` carries the view's context and its last report's time.
    fn end_silent_view(&mut self, context: u32, e: &EventRef<'_>) {
        let view = match self.views.get_full_mut(&*e.view_id) {
            Some((_, _, v)) => v,
            None => {
                let (i, _) = self
                    .views
                    .insert_full(e.view_id.to_string(), ViewPartial::new(context, e));
                &mut self.views[i]
            }
        };
        if view.end_reason.is_empty() {
            view.end_reason = "timeout";
            view.end_time = e.event_time;
        }
    }

    /// Adds an accepted event to its window row, its view and the window's presence.
    fn accept(&mut self, window: i64, context: u32, slice: u32, e: &EventRef<'_>) {
        self.window_row(window, slice).add(e);
        let view = match self.views.get_full_mut(&*e.view_id) {
            Some((i, _, v)) => {
                v.add(e);
                i
            }
            None => {
                self.views
                    .insert_full(e.view_id.to_string(), ViewPartial::new(context, e))
                    .0
            }
        };
        self.presence.insert((window, slice, view as u32));
    }
}

/// Where a written batch leaves the partition; stored with the batch, read back on restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// First offset of the batch (the previous checkpoint's `next_offset`).
    pub from_offset: i64,
    /// Offset of the next message to process.
    pub next_offset: i64,
    /// Replay from here to rebuild duplicate-tracking state (first offset of an open window).
    pub state_offset: i64,
    /// Watermark input: the largest clamped event time seen.
    pub max_event_time: i64,
    /// The CMCD session table ([`Sessions::snapshot`]); empty without CMCD traffic.
    pub sessions: String,
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
    keys: Vec<(u32, u32)>,
    /// CMCD reports accepted in this window, for deduplication.
    reports: Vec<ReportKey>,
}

/// A CMCD report's identity (players restart `sn` with a new source, so `ts` and `e` are in
/// it): the interned sid, `ts`, `sn` and the event type.
type ReportKey = (u32, i64, i64, Box<str>);

/// The view ids of tracked events, interned: duplicate tracking compares the ids themselves,
/// so no hash collision (crafted or accidental) can make one view's events pass for another's,
/// while each tracked `(view, seq)` costs two integers. An id is held while any of its events
/// is tracked; the hasher only places ids in the table.
#[derive(Debug)]
struct ViewIds<S> {
    table: hashbrown::HashTable<u32>,
    /// Per slot: the id and how many tracked events refer to it (0: free).
    slots: Vec<(Box<str>, u32)>,
    free: Vec<u32>,
    hasher: S,
}

impl<S: BuildHasher + Default> Default for ViewIds<S> {
    fn default() -> Self {
        ViewIds {
            table: hashbrown::HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hasher: S::default(),
        }
    }
}

impl<S: BuildHasher> ViewIds<S> {
    /// The slot of `id`, with one more reference.
    fn acquire(&mut self, id: &str) -> u32 {
        let hash = self.hasher.hash_one(id);
        let slots = &mut self.slots;
        if let Some(&i) = self.table.find(hash, |&i| &*slots[i as usize].0 == id) {
            slots[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                slots[i as usize] = (id.into(), 1);
                i
            }
            None => {
                slots.push((id.into(), 1));
                (slots.len() - 1) as u32
            }
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(&*slots[j as usize].0));
        i
    }

    /// Drops one reference; the id is forgotten with its last.
    fn release(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.1 -= 1;
        if slot.1 > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&*slot.0);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        slot.0 = Box::default();
        self.free.push(i);
    }

    #[cfg(test)]
    fn id(&self, i: u32) -> &str {
        &self.slots[i as usize].0
    }
}

/// State of one partition. `S` hashes view ids into the interning table (tests use a hasher
/// under which every id collides).
#[derive(Debug)]
pub struct PartitionState<S = DefaultHashBuilder> {
    config: WindowConfig,
    max_event_time: i64,
    open: BTreeMap<i64, OpenWindow>,
    views: ViewIds<S>,
    seen: HashSet<(u32, u32)>,
    reports_seen: HashSet<ReportKey>,
    batch: Batch,
    batch_from: i64,
    next_offset: i64,
    sessions: Sessions,
    /// The watermark's window index when sessions were last expired.
    expired_at: i64,
    /// Events made from one CMCD report (reused buffer).
    derived: Vec<QoeEvent>,
}

impl PartitionState {
    /// A partition starting at `checkpoint` (or at `offset` 0 with nothing seen).
    pub fn new(config: WindowConfig, checkpoint: Option<Checkpoint>) -> Self {
        Self::with_hasher(config, checkpoint)
    }
}

impl<S: BuildHasher + Default> PartitionState<S> {
    /// As [`PartitionState::new`], with `S` hashing the interned view ids.
    pub fn with_hasher(config: WindowConfig, checkpoint: Option<Checkpoint>) -> Self {
        let (next, max, sessions) = checkpoint
            .map(|c| {
                // A snapshot this build cannot read is a bug or a downgrade: start the
                // sessions afresh rather than refuse to consume (their next reports open views).
                let sessions = Sessions::restore(&c.sessions).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "unreadable CMCD session snapshot; sessions start afresh");
                    Sessions::default()
                });
                (c.next_offset, c.max_event_time, sessions)
            })
            .unwrap_or((0, i64::MIN, Sessions::default()));
        PartitionState {
            config,
            max_event_time: max,
            open: BTreeMap::new(),
            views: ViewIds::default(),
            seen: HashSet::new(),
            reports_seen: HashSet::new(),
            batch: Batch::default(),
            batch_from: next,
            next_offset: next,
            sessions,
            expired_at: i64::MIN,
            derived: Vec::new(),
        }
        .with_expiry_mark()
    }

    /// Where the last expiry happened, as of the restored watermark: the run that wrote the
    /// checkpoint expired sessions when its watermark entered that window.
    fn with_expiry_mark(mut self) -> Self {
        self.expired_at = self.watermark().div_euclid(self.config.window_ms);
        self
    }

    /// Moves the watermark input and expires CMCD sessions when the watermark enters a new
    /// window.
    fn advance(&mut self, event_time: i64, received_at: i64) {
        self.max_event_time = self.max_event_time.max(event_time.min(received_at));
        let mark = self.watermark().div_euclid(self.config.window_ms);
        if mark > self.expired_at {
            self.expired_at = mark;
            if !self.sessions.is_empty() {
                let mut silent = std::mem::take(&mut self.derived);
                silent.clear();
                self.sessions.expire(
                    self.watermark(),
                    self.config.window_ms,
                    &self.config.sessions,
                    &mut silent,
                );
                for e in &silent {
                    let e = e.borrowed();
                    let (context, _) = self.batch.intern(&e, self.config.dimensions);
                    self.batch.end_silent_view(context, &e);
                }
                self.derived = silent;
            }
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
        self.seen.len() + self.reports_seen.len()
    }

    pub fn pending(&self) -> &Batch {
        &self.batch
    }

    /// Rebuilds duplicate-tracking state from a message between the checkpoint's
    /// `state_offset` and `next_offset`; emits nothing. The watermark is the checkpoint's.
    pub fn restore(&mut self, offset: i64, e: &EventRef<'_>) {
        let window = self.window_of(e.event_time);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.track(offset, window, e);
    }

    /// Records `(view_id, seq)` as accepted in `window`; false if it already was.
    fn track(&mut self, offset: i64, window: i64, e: &EventRef<'_>) -> bool {
        let view = self.views.acquire(&e.view_id);
        let key = (view, e.seq);
        if !self.seen.insert(key) {
            self.views.release(view);
            return false;
        }
        self.open_window(window, offset).keys.push(key);
        true
    }

    /// The open window's tracking state, created with `offset` as its first message.
    fn open_window(&mut self, window: i64, offset: i64) -> &mut OpenWindow {
        self.open.entry(window).or_insert_with(|| OpenWindow {
            first_offset: offset,
            keys: Vec::new(),
            reports: Vec::new(),
        })
    }

    /// Records a CMCD report as accepted in `window`; false if it already was.
    fn track_report(&mut self, offset: i64, window: i64, m: &CmcdMessage) -> bool {
        let r = &m.cmcd;
        let sid = self.views.acquire(&r.sid);
        let key: ReportKey = (sid, r.ts, r.sn.unwrap_or(-1), r.e.as_str().into());
        if self.reports_seen.contains(&key) {
            self.views.release(sid);
            return false;
        }
        self.reports_seen.insert(key.clone());
        self.open_window(window, offset).reports.push(key);
        true
    }

    /// Rebuilds CMCD duplicate tracking from a report between the checkpoint's `state_offset`
    /// and `next_offset` (sessions themselves come from the checkpoint); emits nothing.
    pub fn restore_cmcd(&mut self, offset: i64, m: &CmcdMessage) {
        let window = self.window_of(m.cmcd.ts);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.track_report(offset, window, m);
    }

    /// Processes the message at `offset`.
    pub fn apply(&mut self, offset: i64, e: &EventRef<'_>) -> Outcome {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        let window = self.window_of(e.event_time);
        let (context, slice) = self.batch.intern(e, self.config.dimensions);
        let outcome = if window + self.config.window_ms <= self.watermark() {
            Outcome::Late
        } else if self.track(offset, window, e) {
            Outcome::Accepted
        } else {
            Outcome::Duplicate
        };
        match outcome {
            Outcome::Accepted => self.batch.accept(window, context, slice, e),
            Outcome::Late => self.batch.window_row(window, slice).late_events += 1,
            Outcome::Duplicate => self.batch.window_row(window, slice).duplicate_events += 1,
        }
        self.advance(e.event_time, e.received_at);
        outcome
    }

    /// Processes the CMCD report at `offset`: the session turns it into events, each counted
    /// in its own window (late when that window is final). A report whose own window is final
    /// is late as a whole and leaves the session untouched, so session state never depends on
    /// when windows closed. Duplicates count once, in the report's window.
    pub fn apply_cmcd(&mut self, offset: i64, m: &CmcdMessage) -> Outcome {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        let window = self.window_of(m.cmcd.ts);
        let watermark = self.watermark();
        let outcome = if window + self.config.window_ms <= watermark {
            Outcome::Late
        } else if !self.track_report(offset, window, m) {
            Outcome::Duplicate
        } else {
            let mut derived = std::mem::take(&mut self.derived);
            derived.clear();
            self.sessions
                .on_report(m, &self.config.sessions, &mut derived);
            for e in &derived {
                let e = e.borrowed();
                let w = self.window_of(e.event_time);
                let (context, slice) = self.batch.intern(&e, self.config.dimensions);
                if w + self.config.window_ms <= watermark {
                    self.batch.window_row(w, slice).late_events += 1;
                } else {
                    self.batch.accept(w, context, slice, &e);
                }
            }
            self.derived = derived;
            if m.cmcd.e == "rr" {
                let probe = self.sessions.probe_event(m);
                let (_, slice) = self.batch.intern(&probe.borrowed(), self.config.dimensions);
                add_request(self.batch.window_row(window, slice), m.cmcd.rc, m.cmcd.ttfb);
            }
            Outcome::Accepted
        };
        if outcome != Outcome::Accepted {
            let probe = self.sessions.probe_event(m);
            let e = probe.borrowed();
            let (_, slice) = self.batch.intern(&e, self.config.dimensions);
            let row = self.batch.window_row(window, slice);
            match outcome {
                Outcome::Late => row.late_events += 1,
                _ => row.duplicate_events += 1,
            }
        }
        self.advance(m.cmcd.ts, m.received_at);
        outcome
    }

    /// CMCD sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
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
                    self.views.release(k.0);
                }
                for k in w.reports {
                    self.views.release(k.0);
                    self.reports_seen.remove(&k);
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
            sessions: self.sessions.snapshot(),
        };
        self.batch_from = self.next_offset;
        (std::mem::take(&mut self.batch), checkpoint)
    }
}

#[cfg(test)]
impl<S: BuildHasher> PartitionState<S> {
    /// The tracked `(view_id, seq)` pairs, by id (slot numbers depend on arrival order).
    fn tracked(&self) -> std::collections::BTreeSet<(String, u32)> {
        self.seen
            .iter()
            .map(|&(v, seq)| (self.views.id(v).to_owned(), seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::QoeEvent;

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
        assert_eq!(p.tracked_events(), 3);
        // Interned ids are released with the windows that hold them.
        let far = t + 10 * 60_000;
        p.apply(4, &ev("view-d", 0, EventType::ViewStart, far));
        let _ = p.take_batch();
        assert_eq!(p.tracked_events(), 1);
        assert_eq!(p.views.table.len(), 1);
        assert_eq!(
            p.apply(5, &ev("view-e", 0, EventType::ViewStart, far)),
            Outcome::Accepted
        );
        assert_eq!(p.views.slots.len(), 4, "freed slots are reused");
    }

    fn ev(view: &str, seq: u32, kind: EventType, t: i64) -> EventRef<'static> {
        let e = QoeEvent {
            received_at: t + 100,
            playing_ms: Some(1000),
            ..QoeEvent::blank(view, seq, kind, t)
        };
        Box::leak(Box::new(e)).borrowed()
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
        let (_, cp) = a.take_batch();
        assert!(
            !cp.sessions.is_empty(),
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
        let (batch, cp) = p.take_batch();
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
                state_offset: 0,
                max_event_time: 100_000,
                sessions: String::new(),
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

    #[test]
    fn restore_rebuilds_duplicate_state_exactly() {
        let config = WindowConfig::default();
        let events: Vec<EventRef<'static>> = (0..200)
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
        let mut c = PartitionState::new(config, Some(cp.clone()));
        for o in cp.state_offset..cp.next_offset {
            c.restore(o, &events[o as usize]);
        }
        for (o, e) in events.iter().enumerate().skip(120) {
            c.apply(o as i64, e);
        }
        let _ = a.take_batch();
        let _ = c.take_batch();
        assert_eq!(a.tracked(), c.tracked());
        assert_eq!(a.max_event_time, c.max_event_time);
        for (o, e) in events.iter().enumerate() {
            assert_eq!(
                a.apply(1000 + o as i64, e),
                c.apply(1000 + o as i64, e),
                "event {o}"
            );
        }
    }
}
