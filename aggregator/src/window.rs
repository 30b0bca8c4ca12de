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
//! - An event whose `(view_id, seq)` was already counted in the view's life is a *duplicate*
//!   ([`crate::views`]): it only adds to `duplicate_events` of its own window.
//! - Windows are never "held open" for output: every batch writes partial rows that add up;
//!   the watermark decides lateness, when views and CMCD sessions time out, and when CMCD
//!   duplicate keys are dropped.
//!
//! - A CMCD report is turned into events by its session ([`crate::cmcd`]); each event counts
//!   in its own window.
//! - Views and sessions are the partition's long-lived state: a checkpoint carries it every
//!   few seconds ([`PartitionState::snapshot`]), and a restart from an older snapshot
//!   re-processes the messages after it without output ([`PartitionState::discarding_until`]).
//!
//! Speed: this runs once per message, so the hot path allocates nothing for events whose
//! context, window and view the batch already holds. A batch interns each distinct context
//! (region, CDN, stream, platform, player, protocol) once and keys its rows by small indices;
//! events are read borrowed from the message bytes ([`EventRef`]).

use crate::cmcd::{SessionConfig, Sessions};
use crate::metrics::{add_request, AddEvent, WindowMetrics};
use crate::views::{SilentView, ViewConfig, Views};
use hashbrown::{DefaultHashBuilder, HashMap, HashSet};
use indexmap::{Equivalent, IndexMap, IndexSet};
use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::errors::{stored_code, BusinessCodes, CODES_PER_HOUR, OTHER_CODE};
use qoe_schemas::QoeEvent;
use qoe_schemas::{EventRef, EventType, StreamType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

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
pub fn check_window_secs(secs: u32) -> Result<(), WindowSecsError> {
    if secs == 0 || 60 % secs != 0 {
        return Err(WindowSecsError(secs));
    }
    Ok(())
}

/// A `--window-secs` that does not divide a minute ([`check_window_secs`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "--window-secs {0} must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60): windows are \
     rolled up into minutes and hours, and a window that straddles a minute would be counted in \
     the wrong one"
)]
pub struct WindowSecsError(pub u32);

#[derive(Debug, Clone)]
pub struct WindowConfig {
    pub window_ms: i64,
    pub allowed_lateness_ms: i64,
    pub dimensions: Dimensions,
    /// CMCD session timeout and bound.
    pub sessions: SessionConfig,
    /// Beacon view timeouts and bound.
    pub views: ViewConfig,
    /// Error codes that are business errors: counted apart, no failure.
    pub business: Arc<BusinessCodes>,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            window_ms: 10_000,
            allowed_lateness_ms: 30_000,
            dimensions: Dimensions::default(),
            sessions: SessionConfig::default(),
            views: ViewConfig::default(),
            business: Arc::default(),
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
pub(crate) struct ContextRef<'a> {
    region: &'a str,
    cdn: &'a str,
    stream_type: StreamType,
    platform: &'a str,
    stream_id: &'a str,
    player: &'a str,
    protocol: &'a str,
}

impl<'a> ContextRef<'a> {
    pub(crate) fn from_context(c: &'a Context) -> Self {
        ContextRef {
            region: &c.region,
            cdn: &c.cdn,
            stream_type: c.stream_type,
            platform: &c.platform,
            stream_id: &c.stream_id,
            player: &c.player,
            protocol: &c.protocol,
        }
    }

    pub(crate) fn of(e: &'a EventRef<'_>) -> Self {
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

    pub(crate) fn owned(&self) -> Context {
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
                // A view that failed to start after an error already counted (CMCD): the
                // end names that error's code.
                if let Some(code) = e.code.as_deref().filter(|_| e.fatal == Some(true)) {
                    if e.event_time >= self.error_time {
                        self.error_code = code.to_owned();
                        self.error_time = e.event_time;
                    }
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
    /// Error events per window, context and code, and attempts per window and context
    /// (under the empty code) ([`ErrorKey`]).
    errors: HashMap<ErrorKey, ErrorCounts>,
    pub messages: u64,
}

/// `(window_start, context, code as named, fatal, started, business)`.
type ErrorKey = (i64, u32, Box<str>, bool, bool, bool);

/// Counts of one errors-by-code row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub errors: u64,
    /// Play attempts of the slice and player (rows of the empty code, all flags false): the
    /// denominator of an error's share, which the window tables cannot give per player.
    pub attempts: u64,
    /// Beacon events and CMCD reports lost, per player (rows of the empty code).
    pub events_lost: u64,
    pub reports_lost: u64,
}

/// One row of errors by code: how many error events of a window, slice and player carried
/// the code (as named: see [`ErrorCodeNames`]) with these flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRow<'a> {
    pub window_start: i64,
    pub slice: &'a Slice,
    pub player: &'a str,
    pub code: &'a str,
    pub fatal: bool,
    pub started: bool,
    pub business: bool,
    pub errors: u64,
    pub attempts: u64,
    pub events_lost: u64,
    pub reports_lost: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn rows(&self) -> usize {
        self.windows.len() + self.presence.len() + self.views.len() + self.errors.len()
    }

    /// Errors by code. Contexts that share a slice and player give rows with the same key,
    /// which the table sums.
    pub fn error_rows(&self) -> impl Iterator<Item = ErrorRow<'_>> {
        self.errors
            .iter()
            .map(|((w, c, code, fatal, started, business), n)| {
                let (context, &slice) = self
                    .contexts
                    .get_index(*c as usize)
                    .expect("context of an error row");
                ErrorRow {
                    window_start: *w,
                    slice: &self.slices[slice as usize],
                    player: &context.player,
                    code,
                    fatal: *fatal,
                    started: *started,
                    business: *business,
                    errors: n.errors,
                    attempts: n.attempts,
                    events_lost: n.events_lost,
                    reports_lost: n.reports_lost,
                }
            })
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
        self.intern_context(ContextRef::of(e), d)
    }

    fn intern_context(&mut self, key: ContextRef<'_>, d: Dimensions) -> (u32, u32) {
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

    /// The errors-by-code row of the empty code for a window and context: the counts kept
    /// per player (attempts, lost events and reports).
    fn per_player(&mut self, window: i64, context: u32) -> &mut ErrorCounts {
        self.errors
            .entry((window, context, "".into(), false, false, false))
            .or_default()
    }

    /// Marks a view that went silent as ended by `timeout` at `last_time` in its summary (no
    /// window metric: silence is not an event, and no EBVS).
    fn end_silent_view(&mut self, view_id: &str, context: u32, last_time: i64) {
        let view = match self.views.get_full_mut(view_id) {
            Some((_, _, v)) => v,
            None => {
                let partial = ViewPartial {
                    context,
                    first_event_time: last_time,
                    last_event_time: last_time,
                    ..ViewPartial::default()
                };
                let (i, _) = self.views.insert_full(view_id.to_owned(), partial);
                &mut self.views[i]
            }
        };
        if view.end_reason.is_empty() {
            view.end_reason = "timeout";
            view.end_time = last_time;
        }
    }

    /// Adds an accepted event to its window row, its view and the window's presence;
    /// `business` says its code is a business error.
    fn accept(&mut self, window: i64, context: u32, slice: u32, e: &EventRef<'_>, business: bool) {
        self.window_row(window, slice).add_classified(e, business);
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
    /// Replay from here to rebuild CMCD duplicate tracking (first offset of an open window).
    pub state_offset: i64,
    /// Watermark input: the largest clamped event time seen.
    pub max_event_time: i64,
    /// `next_offset` of the latest checkpoint that carries a state snapshot (this one's own
    /// when `state` is set).
    pub snapshot_offset: i64,
    /// The partition's state as of `next_offset` ([`PartitionState::snapshot`]): beacon views
    /// and CMCD sessions. Written every few seconds, not with every batch; empty in between.
    pub state: String,
}

impl Checkpoint {
    pub fn has_snapshot(&self) -> bool {
        !self.state.is_empty()
    }
}

/// The long-lived state of a partition, as stored in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    views: crate::views::Stored,
    sessions: Sessions,
    /// Absent in snapshots written before errors were counted by code.
    #[serde(default)]
    codes: ErrorCodeNames,
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
    /// CMCD reports accepted in this window, for deduplication.
    reports: Vec<ReportKey>,
}

/// A CMCD report's identity (players restart `sn` with a new source, so `ts` and `e` are in
/// it): the interned sid, `ts`, `sn` and the event type.
type ReportKey = (u32, i64, i64, Box<str>);

/// The sids of tracked CMCD reports, interned: duplicate tracking compares the ids
/// themselves, so no hash collision (crafted or accidental) can make one session's reports
/// pass for another's. An id is held while any of its reports is tracked; the hasher only
/// places ids in the table.
#[derive(Debug)]
struct Sids<S> {
    table: hashbrown::HashTable<u32>,
    /// Per slot: the id and how many tracked reports refer to it (0: free).
    slots: Vec<(Box<str>, u32)>,
    free: Vec<u32>,
    hasher: S,
}

impl<S: BuildHasher + Default> Default for Sids<S> {
    fn default() -> Self {
        Sids {
            table: hashbrown::HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hasher: S::default(),
        }
    }
}

impl<S: BuildHasher> Sids<S> {
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
}

/// State of one partition. `S` hashes view ids and sids (tests use a hasher under which
/// every id collides).
#[derive(Debug)]
pub struct PartitionState<S = DefaultHashBuilder> {
    config: WindowConfig,
    max_event_time: i64,
    /// Windows with tracked CMCD reports.
    open: BTreeMap<i64, OpenWindow>,
    sids: Sids<S>,
    reports_seen: HashSet<ReportKey>,
    /// Beacon views: duplicates over their whole life, timeouts.
    views: Views<S>,
    batch: Batch,
    /// Number of the current batch (context indices are per batch).
    batch_number: u32,
    batch_from: i64,
    next_offset: i64,
    sessions: Sessions,
    /// The watermark's window index when views and sessions were last expired.
    expired_at: i64,
    /// Messages below this offset are re-processed to rebuild state after a restart from an
    /// older snapshot; their rows were written before and are discarded.
    discard_until: i64,
    snapshot_offset: i64,
    /// Events made from one CMCD report (reused buffer).
    derived: Vec<QoeEvent>,
    silent: Vec<SilentView>,
    /// The error codes named so far per hour (the bound on stored codes).
    codes: ErrorCodeNames,
}

/// The distinct error codes a partition has named per hour of event time: the first
/// [`CODES_PER_HOUR`] keep their name, later ones are [`OTHER_CODE`]. Part of the state
/// snapshot, so a restart names codes as an uninterrupted run does; an hour is forgotten once
/// the watermark has passed it (its windows are final).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ErrorCodeNames {
    hours: BTreeMap<i64, std::collections::BTreeSet<String>>,
}

const HOUR_MS: i64 = 3_600_000;

impl ErrorCodeNames {
    /// The name `code` is counted under in the hour of `event_time`.
    fn name(&mut self, event_time: i64, code: &str) -> Box<str> {
        let code = stored_code(code);
        let named = self
            .hours
            .entry(event_time.div_euclid(HOUR_MS))
            .or_default();
        if named.contains(code) {
            return code.into();
        }
        if named.len() < CODES_PER_HOUR {
            named.insert(code.to_owned());
            return code.into();
        }
        OTHER_CODE.into()
    }

    /// Forgets the hours whose windows are all final at `watermark`.
    fn expire(&mut self, watermark: i64) {
        while let Some((&hour, _)) = self.hours.first_key_value() {
            if (hour + 1) * HOUR_MS > watermark {
                break;
            }
            self.hours.remove(&hour);
        }
    }
}

/// A view table token for a batch's context index: never 0 (0 means "unknown").
fn context_token(batch: u32, context: u32) -> u64 {
    (u64::from(batch) << 32 | u64::from(context)) + 1
}

/// Why a stored state cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("unreadable partition state snapshot: {0}")]
pub struct SnapshotError(String);

impl From<crate::views::StoredViewsError> for SnapshotError {
    fn from(e: crate::views::StoredViewsError) -> Self {
        SnapshotError(e.to_string())
    }
}

impl PartitionState {
    /// A partition starting at `checkpoint` (or at `offset` 0 with nothing seen).
    pub fn new(config: WindowConfig, checkpoint: Option<Checkpoint>) -> Self {
        Self::with_hasher(config, checkpoint)
    }
}

impl<S: BuildHasher + Default> PartitionState<S> {
    /// As [`PartitionState::new`], with `S` hashing the interned ids. The checkpoint's state
    /// snapshot, if any, is restored; one this build cannot read (a bug or a downgrade) is
    /// logged and the state starts afresh rather than refusing to consume.
    pub fn with_hasher(config: WindowConfig, checkpoint: Option<Checkpoint>) -> Self {
        let mut p = PartitionState {
            config,
            max_event_time: i64::MIN,
            open: BTreeMap::new(),
            sids: Sids::default(),
            reports_seen: HashSet::new(),
            views: Views::default(),
            batch: Batch::default(),
            batch_number: 0,
            batch_from: 0,
            next_offset: 0,
            sessions: Sessions::default(),
            expired_at: i64::MIN,
            discard_until: 0,
            snapshot_offset: 0,
            derived: Vec::new(),
            silent: Vec::new(),
            codes: ErrorCodeNames::default(),
        };
        if let Some(c) = checkpoint {
            p.max_event_time = c.max_event_time;
            p.next_offset = c.next_offset;
            p.batch_from = c.next_offset;
            if c.has_snapshot() {
                if let Err(e) = p.restore_snapshot(&c.state) {
                    tracing::error!(error = %e, "partition state starts afresh");
                }
                p.snapshot_offset = c.next_offset;
            }
        }
        p.expired_at = p.watermark().div_euclid(p.config.window_ms);
        p
    }

    fn restore_snapshot(&mut self, state: &str) -> Result<(), SnapshotError> {
        match serde_json::from_str::<Snapshot>(state) {
            Ok(s) => {
                self.views = Views::from_stored(s.views)?;
                self.sessions = s.sessions;
                self.codes = s.codes;
                Ok(())
            }
            // Checkpoints written before views were tracked hold the CMCD sessions alone.
            Err(e) => match Sessions::restore(state) {
                Ok(sessions) => {
                    self.sessions = sessions;
                    Ok(())
                }
                Err(_) => Err(SnapshotError(e.to_string())),
            },
        }
    }

    /// The partition's long-lived state (views and sessions), as stored in a checkpoint.
    pub fn snapshot(&self) -> String {
        let s = Snapshot {
            views: self.views.to_stored(),
            sessions: self.sessions.clone(),
            codes: self.codes.clone(),
        };
        // Plain data (strings, numbers, maps with string keys) always serializes.
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// Re-processes the messages below `offset` without output: after a restart from a
    /// snapshot older than the latest checkpoint, they rebuild the state that checkpoint
    /// had, and their rows are in ClickHouse already.
    pub fn discarding_until(mut self, offset: i64) -> Self {
        self.discard_until = offset;
        self
    }

    /// Whether the next message only rebuilds state (see [`Self::discarding_until`]).
    pub fn replaying(&self) -> bool {
        self.next_offset < self.discard_until
    }

    /// Ends a message's processing: while replaying, what it added to the batch goes.
    fn settle(&mut self) {
        if self.next_offset <= self.discard_until {
            self.batch = Batch::default();
            self.batch_number = self.batch_number.wrapping_add(1);
            self.batch_from = self.next_offset;
        }
    }

    /// Moves the watermark input; when the watermark enters a new window, views and CMCD
    /// sessions silent for their timeout end (so which are held is a function of the
    /// messages, never of flush timing).
    fn advance(&mut self, event_time: i64, received_at: i64) {
        let clock = self.max_event_time.max(event_time.min(received_at));
        if self.sessions.has_due(clock) {
            // Before the watermark moves: held for less than the allowed lateness, a released
            // error is on time whatever gap in the partition's traffic preceded this message.
            let mut derived = std::mem::take(&mut self.derived);
            derived.clear();
            self.sessions.release_due(clock, &mut derived);
            self.accept_derived(&derived, self.watermark());
            self.derived = derived;
        }
        self.max_event_time = clock;
        let mark = self.watermark().div_euclid(self.config.window_ms);
        if mark <= self.expired_at {
            return;
        }
        self.expired_at = mark;
        let watermark = self.watermark();
        self.codes.expire(watermark);
        let mut silent = std::mem::take(&mut self.silent);
        silent.clear();
        if !self.views.is_empty() {
            let mut lost = Vec::new();
            self.views
                .expire(watermark, &self.config.views, &mut silent, &mut lost);
            for l in lost {
                let (context, slice) = self
                    .batch
                    .intern_context(ContextRef::from_context(&l.context), self.config.dimensions);
                let window = self.window_of(l.last_time);
                self.batch.window_row(window, slice).events_lost += l.lost;
                self.batch.per_player(window, context).events_lost += l.lost;
            }
        }
        if !self.sessions.is_empty() {
            let mut derived = std::mem::take(&mut self.derived);
            derived.clear();
            self.sessions.expire(
                watermark,
                self.config.window_ms,
                &self.config.sessions,
                &mut silent,
                &mut derived,
            );
            self.accept_derived(&derived, watermark);
            self.derived = derived;
            self.count_lost_reports();
        }
        for v in &silent {
            let (context, _) = self
                .batch
                .intern_context(ContextRef::from_context(&v.context), self.config.dimensions);
            self.batch.end_silent_view(&v.view_id, context, v.last_time);
        }
        self.silent = silent;
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

    /// Beacon views held.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// CMCD reports tracked for duplicates.
    pub fn tracked_reports(&self) -> usize {
        self.reports_seen.len()
    }

    /// Views dropped by the `max_views` bound since the last call.
    pub fn take_evicted_views(&mut self) -> u64 {
        self.views.take_evicted()
    }

    pub fn pending(&self) -> &Batch {
        &self.batch
    }

    /// The open window's tracking state, created with `offset` as its first message.
    fn open_window(&mut self, window: i64, offset: i64) -> &mut OpenWindow {
        self.open.entry(window).or_insert_with(|| OpenWindow {
            first_offset: offset,
            reports: Vec::new(),
        })
    }

    /// Records a CMCD report as accepted in `window`; false if it already was.
    fn track_report(&mut self, offset: i64, window: i64, m: &CmcdMessage) -> bool {
        let r = &m.cmcd;
        let sid = self.sids.acquire(&r.sid);
        let key: ReportKey = (sid, r.ts, r.sn.unwrap_or(-1), r.e.as_str().into());
        if self.reports_seen.contains(&key) {
            self.sids.release(sid);
            return false;
        }
        self.reports_seen.insert(key.clone());
        self.open_window(window, offset).reports.push(key);
        true
    }

    /// Rebuilds CMCD duplicate tracking from a report between the checkpoint's `state_offset`
    /// and `next_offset` (sessions themselves come from the snapshot); emits nothing.
    pub fn restore_cmcd(&mut self, offset: i64, m: &CmcdMessage) {
        let window = self.window_of(m.cmcd.ts);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.track_report(offset, window, m);
    }

    /// Processes the message at `offset`. An event whose window is final is late; one whose
    /// `(view_id, seq)` was counted before in the view's life is a duplicate (in whatever
    /// window its copy falls).
    pub fn apply(&mut self, offset: i64, e: &EventRef<'_>) -> Outcome {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        let window = self.window_of(e.event_time);
        let (context, slice) = self.batch.intern(e, self.config.dimensions);
        let outcome = if window + self.config.window_ms <= self.watermark() {
            Outcome::Late
        } else if self.views.track(
            e,
            &self.config.views,
            context_token(self.batch_number, context),
        ) {
            Outcome::Accepted
        } else {
            Outcome::Duplicate
        };
        match outcome {
            Outcome::Accepted => self.accept(window, context, slice, e),
            Outcome::Late => self.batch.window_row(window, slice).late_events += 1,
            Outcome::Duplicate => self.batch.window_row(window, slice).duplicate_events += 1,
        }
        self.advance(e.event_time, e.received_at);
        self.settle();
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
            let switched = self
                .sessions
                .on_report(m, &self.config.sessions, &mut derived);
            self.accept_derived(&derived, watermark);
            self.derived = derived;
            // A session evicted by the bound on sessions.
            self.count_lost_reports();
            if m.cmcd.e == "rr" || switched {
                let probe = self.sessions.probe_event(m);
                let (_, slice) = self.batch.intern(&probe.borrowed(), self.config.dimensions);
                let row = self.batch.window_row(window, slice);
                if m.cmcd.e == "rr" {
                    add_request(row, m.cmcd.rc, m.cmcd.ttfb);
                }
                row.cdn_switches += u64::from(switched);
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
        self.settle();
        outcome
    }

    /// Counts the events CMCD sessions made, each in its own window (late when that window
    /// is final at `watermark`).
    fn accept_derived(&mut self, derived: &[QoeEvent], watermark: i64) {
        for e in derived {
            let e = e.borrowed();
            let w = self.window_of(e.event_time);
            let (context, slice) = self.batch.intern(&e, self.config.dimensions);
            if w + self.config.window_ms <= watermark {
                self.batch.window_row(w, slice).late_events += 1;
            } else {
                self.accept(w, context, slice, &e);
            }
        }
    }

    /// Counts the reports that sessions forgotten since the last call never delivered, in the
    /// window and slice of each session's last report.
    fn count_lost_reports(&mut self) {
        for (probe, lost) in self.sessions.take_lost() {
            let (context, slice) = self.batch.intern(&probe.borrowed(), self.config.dimensions);
            let window = self.window_of(probe.event_time);
            self.batch.window_row(window, slice).reports_lost += lost;
            self.batch.per_player(window, context).reports_lost += lost;
        }
    }

    /// Counts an accepted event in the batch; an error also by its code.
    fn accept(&mut self, window: i64, context: u32, slice: u32, e: &EventRef<'_>) {
        let business = matches!(e.kind, EventType::Error | EventType::ViewEnd)
            && self.config.business.contains(e.code.as_deref());
        self.batch.accept(window, context, slice, e, business);
        if e.kind == EventType::ViewStart {
            self.batch.per_player(window, context).attempts += 1;
        }
        if e.kind == EventType::Error {
            let code = self
                .codes
                .name(e.event_time, e.code.as_deref().unwrap_or(""));
            let key = (
                window,
                context,
                code,
                e.fatal == Some(true),
                e.started == Some(true),
                business,
            );
            self.batch.errors.entry(key).or_default().errors += 1;
        }
    }

    /// CMCD sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Skips a message that is not a QoE event (it still moves the partition forward).
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        self.settle();
    }

    /// Closes windows the watermark has passed and hands over the batch with its checkpoint;
    /// `with_snapshot` stores the partition's state in it (the caller decides how often: the
    /// state is the same whenever it is taken, only its size and a restart's replay differ).
    pub fn take_batch(&mut self, with_snapshot: bool) -> (Batch, Checkpoint) {
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
                for k in w.reports {
                    self.sids.release(k.0);
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
        let state = if with_snapshot {
            self.snapshot_offset = self.next_offset;
            self.snapshot()
        } else {
            String::new()
        };
        let checkpoint = Checkpoint {
            from_offset: self.batch_from,
            next_offset: self.next_offset,
            state_offset,
            max_event_time: self.max_event_time,
            snapshot_offset: self.snapshot_offset,
            state,
        };
        self.batch_from = self.next_offset;
        self.batch_number = self.batch_number.wrapping_add(1);
        (std::mem::take(&mut self.batch), checkpoint)
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
}
