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

mod error_codes;
mod reports;
mod requests;
#[cfg(test)]
mod tests;

use crate::batch::Batch;
use crate::checkpoint::Checkpoint;
use crate::cmcd::{SessionConfig, Sessions};
use crate::context::{ContextRef, Dimensions};
use crate::metrics::add_request;
use crate::views::{SilentView, ViewConfig, Views};
use error_codes::ErrorCodeNames;
use hashbrown::DefaultHashBuilder;
use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::errors::BusinessCodes;
use qoe_schemas::{EventRef, EventType, QoeEvent};
use reports::ReportTracker;
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;
use std::sync::Arc;

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

/// State of one partition. `S` hashes view ids and sids (tests use a hasher under which
/// every id collides).
#[derive(Debug)]
pub struct PartitionState<S = DefaultHashBuilder> {
    config: WindowConfig,
    max_event_time: i64,
    /// CMCD reports of the open windows, for duplicates.
    reports: ReportTracker<S>,
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
            reports: ReportTracker::default(),
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
        self.reports.open_windows()
    }

    /// Beacon views held.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// CMCD reports tracked for duplicates.
    pub fn tracked_reports(&self) -> usize {
        self.reports.len()
    }

    /// Views dropped by the `max_views` bound since the last call.
    pub fn take_evicted_views(&mut self) -> u64 {
        self.views.take_evicted()
    }

    pub fn pending(&self) -> &Batch {
        &self.batch
    }

    /// Rebuilds CMCD duplicate tracking from a report between the checkpoint's `state_offset`
    /// and `next_offset` (sessions themselves come from the snapshot); emits nothing.
    pub fn restore_cmcd(&mut self, offset: i64, m: &CmcdMessage) {
        let window = self.window_of(m.cmcd.ts);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.reports.track(offset, window, m);
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
        } else if !self.reports.track(offset, window, m) {
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
            self.batch.count_error(key);
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
        self.reports.close_until(watermark, window_ms);
        let state_offset = self.reports.first_offset().unwrap_or(self.next_offset);
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
