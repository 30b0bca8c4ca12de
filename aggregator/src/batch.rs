//! The batch: rows accumulated since a partition's last write (window metrics, presence,
//! per-view partials, errors by code), keyed by small per-batch indices so the hot path
//! hashes integers and each string exists once per batch. Filled by
//! [`crate::window::PartitionState`], read by the staging encoder.

use crate::context::{Context, ContextRef, Dimensions, Slice};
use crate::metrics::{AddEvent, TimeSums, WindowMetrics};
use hashbrown::{DefaultHashBuilder, HashMap, HashSet};
use indexmap::{IndexMap, IndexSet};
use qoe_schemas::{EventRef, EventType};

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
        let time = TimeSums::of(e);
        self.playing_ms += time.playing_ms;
        self.bitrate_kbps_ms += time.bitrate_kbps_ms;
        self.stall_ms += time.stall_ms;
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
    /// `(window_start, slice, sid)` for every session with a logged request there, the sid
    /// interned in `session_ids` (one copy per batch, not one per request).
    request_sessions: HashSet<(i64, u32, u32)>,
    session_ids: IndexSet<Box<str>, DefaultHashBuilder>,
    views: IndexMap<String, ViewPartial, DefaultHashBuilder>,
    /// Error events per window, context and code, and attempts per window and context
    /// (under the empty code) ([`ErrorKey`]).
    errors: HashMap<ErrorKey, ErrorCounts>,
    pub messages: u64,
}

/// `(window_start, context, code as named, fatal, started, business)`.
pub(crate) type ErrorKey = (i64, u32, Box<str>, bool, bool, bool);

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
/// the code (as named: see `window::error_codes`) with these flags.
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
        self.windows.len()
            + self.presence.len()
            + self.request_sessions.len()
            + self.views.len()
            + self.errors.len()
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

    /// `(window_start, slice, sid)` of every session with a logged request there.
    pub fn request_session_rows(&self) -> impl Iterator<Item = (i64, &Slice, &str)> {
        self.request_sessions.iter().map(|&(w, s, sid)| {
            let sid = self
                .session_ids
                .get_index(sid as usize)
                .expect("sid of a session row");
            (w, &self.slices[s as usize], &**sid)
        })
    }

    /// Records that session `sid` had a logged request in `window` and `slice`.
    pub(crate) fn request_session(&mut self, window: i64, slice: u32, sid: &str) {
        let sid = match self.session_ids.get_index_of(sid) {
            Some(i) => i,
            None => self.session_ids.insert_full(sid.into()).0,
        };
        self.request_sessions.insert((window, slice, sid as u32));
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
    pub(crate) fn intern(&mut self, e: &EventRef<'_>, d: Dimensions) -> (u32, u32) {
        self.intern_context(ContextRef::of(e), d)
    }

    pub(crate) fn intern_context(&mut self, key: ContextRef<'_>, d: Dimensions) -> (u32, u32) {
        if let Some((i, _, &slice)) = self.contexts.get_full(&key) {
            return (i as u32, slice);
        }
        let context = key.owned();
        let (slice, _) = self.slices.insert_full(Slice::of(&context, d));
        let (i, _) = self.contexts.insert_full(context, slice as u32);
        (i as u32, slice as u32)
    }

    pub(crate) fn window_row(&mut self, window: i64, slice: u32) -> &mut WindowMetrics {
        self.windows.entry((window, slice)).or_default()
    }

    /// The errors-by-code row of the empty code for a window and context: the counts kept
    /// per player (attempts, lost events and reports).
    pub(crate) fn per_player(&mut self, window: i64, context: u32) -> &mut ErrorCounts {
        self.errors
            .entry((window, context, "".into(), false, false, false))
            .or_default()
    }

    /// Marks a view that went silent as ended by `timeout` at `last_time` in its summary (no
    /// window metric: silence is not an event, and no EBVS).
    pub(crate) fn end_silent_view(&mut self, view_id: &str, context: u32, last_time: i64) {
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
    /// Counts an error event under its code (as named) and flags.
    pub(crate) fn count_error(&mut self, key: ErrorKey) {
        self.errors.entry(key).or_default().errors += 1;
    }

    pub(crate) fn accept(
        &mut self,
        window: i64,
        context: u32,
        slice: u32,
        e: &EventRef<'_>,
        business: bool,
    ) {
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
