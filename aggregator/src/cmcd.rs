//! CMCD sessions become views: the pure state machine that turns the CMCD v2 reports of one
//! session (`sid`) into the QoE events of SPEC §4, so that a CMCD view and a beacon view of the
//! same experience count the same.
//!
//! Why here: durations (startup, stalls, playing time) are differences between consecutive
//! reports of a session. Every report is keyed by `sid`, so a session's reports are in one
//! partition, in order, and the aggregator already owns per-partition state that it restores
//! exactly after a crash; the collector stays stateless and freely scaled out. The session
//! table is part of the partition's checkpoint ([`Sessions::snapshot`]), so a restart resumes
//! every session where it was, however long it has been playing.
//!
//! The mapping (PLAYERS.md §3):
//! - the first report of a session opens a view (`view_start` at the first report's time; it
//!   is emitted with the first request report or play state beyond "starting", at most 2 s
//!   later, so that the CDN learnt from the first segment request is the view's and attempts
//!   land in the right slice);
//! - first `ps p`: `first_frame`, startup = `p.ts - start.ts` (`msd` only when within 50 ms or a
//!   tenth of it: dash.js sends a wrong one);
//! - `ps r` after the first frame, not right after a seek: `stall_start`; leaving `r`:
//!   `stall_end`; time in `p` is playing time, time in a stall is stall time, both carried by
//!   the event of the report that ends the interval (`t` reports are heartbeats);
//! - `ps a` pause, `p` after `a` resume, `ps k` seek; `bc` or a changed `br`: `bitrate_change`;
//! - `e` error (`ec` the code); `ps f` (or `e` with `sta=f`): a fatal error and
//!   `view_end(error)`; `ps e`: `view_end(completed)`; `ps q`: `view_end(exit)`;
//! - one failure is one error with the player's code (SPEC §3b): players report a fatal
//!   failure as `ps f` and as `e` with `ec`, in either order, in one body or two. So an error
//!   event is held back (in the session, so in its checkpointed state) for up to
//!   [`HOLD_MS`] of the partition's event time: a fatal one without a code waits for the
//!   `e` report that carries it, a non-fatal one waits to learn whether a `sta=f` follows (then
//!   it is that failure's one fatal error, with its code). Released by the partner report, by
//!   a later report of the session, or when the partition's clock passes it
//!   ([`Sessions::release_due`], before the watermark moves, so never late); a fatal error
//!   whose player never sent a code gets `cmcd_fatal`, a non-fatal one `unknown`. The code is the player's `ec` as sent (bounded by the
//!   collector, 128 characters, no control characters): hls.js names (`manifestLoadError`),
//!   Shaka and dash.js numbers (`1001`, `25`);
//! - a view that never started and whose last report was an error fails to start when it
//!   goes silent or the player leaves (`ps q`/`ps e`): dash.js reports a missing manifest
//!   only as `e=e,ec=25` with `sta=s`. Its `view_end(error)` carries `fatal` and the error's
//!   code, and counts the start failure without counting the error again;
//! - a report more than the session timeout after the previous one, or after the view ended,
//!   opens a new view (players reuse `sid` across sources), named `sid~2`, `sid~3`, ... (a sid
//!   reused after its state was dropped, silent past the timeout, starts over at `sid`);
//! - `ltc` is latency, `dfa` deltas are dropped frames.
//!
//! Duplicates (`(sid, sn, ts, e)`: players restart `sn`) are dropped before a report gets here,
//! by the partition's window-keyed tracking (`window.rs`), like beacon events: a copy whose
//! window is final is late anyway, so the keys live only as long as their windows are open and
//! are rebuilt by the same replay, instead of growing every session's stored state.

use crate::views::SilentView;
use crate::window::ContextRef;
use qoe_schemas::cmcd::{CmcdMessage, CmcdReport};
use qoe_schemas::{EndReason, EventType, QoeEvent, StreamType, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Session bookkeeping limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// A report this long after the previous one opens a new view; state of a session silent
    /// for this long (plus the window length) after the watermark is dropped.
    pub timeout_ms: i64,
    /// Most sessions held per partition; beyond it the least recently heard one is dropped.
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            timeout_ms: 120_000,
            max_sessions: 200_000,
        }
    }
}

/// `msd` is believed when it is within this many ms, or a tenth, of the timestamps' startup.
const MSD_TOLERANCE_MS: i64 = 50;
/// How long a view's start waits for a report that tells its CDN (a segment request) or
/// more than "starting".
const START_WAIT_MS: i64 = 2_000;
/// How long an error event waits for the other report of the same failure (see the module
/// doc): players send both within milliseconds, on separate requests.
pub const HOLD_MS: i64 = 5_000;
/// The code of a fatal failure whose player sent none.
const GENERIC_FATAL_CODE: &str = "cmcd_fatal";
/// The code of a non-fatal error whose player sent none.
const GENERIC_ERROR_CODE: &str = "unknown";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Session {
    /// Largest report time seen.
    last_ts: i64,
    /// Views opened while this state was held (the first is named after the sid, later ones
    /// `sid~2`, `sid~3`, ...).
    views: u32,
    view: Option<View>,
    /// When the last view ended (its reports after that open a new one).
    ended_at: Option<i64>,
    /// Whether the last view ended in a fatal failure.
    failed: bool,
    /// Dimensions learnt so far (kept across views of the session).
    stream_id: Option<String>,
    stream_type: Option<String>,
    protocol: Option<String>,
    cdn: Option<String>,
    /// The rank of the source that set `cdn` (`CmcdMessage::cdn_rank`).
    #[serde(default)]
    cdn_rank: u8,
    client: Client,
    /// An error event held back until its failure's other report (see the module doc).
    #[serde(default)]
    held: Option<QoeEvent>,
    /// The report sequence numbers delivered, for the reports that never were.
    #[serde(default)]
    sn: SnRuns,
}

/// The `sn` of a session's delivered reports (duplicates are dropped before): runs of
/// numbers, a new one each time `sn` restarts at 0 (a player's new source), as the lowest,
/// highest and how many; what is missing inside a run was lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SnRuns {
    lo: u64,
    hi: u64,
    count: u64,
    /// Lost in the runs closed before this one.
    lost: u64,
}

impl SnRuns {
    fn add(&mut self, sn: Option<i64>) {
        let Some(sn) = sn.and_then(|s| u64::try_from(s).ok()) else {
            return;
        };
        if self.count > 0 && sn == 0 && self.lo == 0 {
            self.lost += self.open_lost();
            *self = SnRuns {
                lost: self.lost,
                ..SnRuns::default()
            };
        }
        if self.count == 0 {
            (self.lo, self.hi) = (sn, sn);
        }
        self.lo = self.lo.min(sn);
        self.hi = self.hi.max(sn);
        self.count += 1;
    }

    fn open_lost(&self) -> u64 {
        if self.count == 0 {
            return 0;
        }
        (self.hi - self.lo + 1).saturating_sub(self.count)
    }

    fn lost(&self) -> u64 {
        self.lost + self.open_lost()
    }
}

/// What the collector resolved for the session's client (from its latest report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Client {
    region: String,
    platform: String,
    player: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct View {
    view_id: String,
    seq: u32,
    start_ts: i64,
    /// `view_start` not yet emitted (it waits for the next report, see the module doc).
    start_pending: bool,
    started: bool,
    /// Last play state and since when time is accounted.
    state: Option<String>,
    state_ts: i64,
    /// Time of the last play-state report applied.
    last_ps_ts: i64,
    in_stall: bool,
    bitrate: Option<u32>,
    dfa: Option<u32>,
    /// The CDN of the view's attempt: its first frame, startup and anything before them count
    /// there, whatever CDN later reports name (one moment, one slice).
    #[serde(default)]
    start_cdn: Option<String>,
    /// The code of the view's last report when that was an error before the first frame
    /// (a start failure if the view goes silent or ends now).
    #[serde(default)]
    last_error: Option<String>,
}

/// The CMCD sessions of one partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sessions {
    by_sid: BTreeMap<String, Session>,
    /// No held error is due before this clock (0 after a restore: the first check scans).
    #[serde(skip)]
    next_release: i64,
    /// Sessions forgotten with reports that never came: a probe event with the session's
    /// context at its last report, and how many ([`Self::take_lost`]).
    #[serde(skip)]
    lost: Vec<(QoeEvent, u64)>,
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.by_sid == other.by_sid
    }
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sid.is_empty()
    }

    /// The table as stored with a checkpoint.
    pub fn snapshot(&self) -> String {
        if self.by_sid.is_empty() {
            return String::new();
        }
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A table from a checkpoint's snapshot (empty for none).
    pub fn restore(snapshot: &str) -> Result<Self, serde_json::Error> {
        if snapshot.is_empty() {
            return Ok(Sessions::default());
        }
        serde_json::from_str(snapshot)
    }

    /// Drops sessions no report that is not late can continue any more: silent for the
    /// timeout, plus a window, before the watermark (a later report of such a session opens a
    /// new view anyway). The partition calls it each time its watermark enters a new window,
    /// while processing messages, so which sessions are held, and so how views are named, is a
    /// function of the messages, not of flush timing.
    ///
    /// A silent view that never started after an error ends as a start failure, at the
    /// watermark (the earliest time still counted), into `out`.
    pub fn expire(
        &mut self,
        watermark: i64,
        window_ms: i64,
        config: &SessionConfig,
        silent_views: &mut Vec<SilentView>,
        out: &mut Vec<QoeEvent>,
    ) {
        let lost = &mut self.lost;
        self.by_sid.retain(|sid, s| {
            let keep = s.last_ts + config.timeout_ms + window_ms > watermark;
            if !keep {
                s.forget(sid, lost);
                s.release(out);
                if let Some(mut view) = s.view.take() {
                    if let Some(code) = view.last_error.take().filter(|_| !view.started) {
                        let at = watermark.max(s.last_ts);
                        let mut end =
                            s.event_with(&mut view, &s.client.clone(), EventType::ViewEnd, at, at);
                        end.started = Some(false);
                        end.reason = Some(EndReason::Error);
                        end.fatal = Some(true);
                        end.code = Some(code);
                        out.push(end);
                        return false;
                    }
                    // Carries the view's context and its last report's time; the view's
                    // summary ends with reason `timeout`.
                    let last = s.last_ts;
                    let probe = s.event_for_view(&mut view, last);
                    silent_views.push(SilentView {
                        context: std::sync::Arc::new(ContextRef::of(&probe.borrowed()).owned()),
                        view_id: probe.view_id,
                        last_time: last,
                    });
                }
            }
            keep
        });
    }

    /// The reports lost by the sessions forgotten since the last call.
    pub fn take_lost(&mut self) -> Vec<(QoeEvent, u64)> {
        std::mem::take(&mut self.lost)
    }

    /// Whether a held error event is due at `clock` (cheap; see [`Self::release_due`]).
    pub fn has_due(&self, clock: i64) -> bool {
        self.next_release <= clock
    }

    /// Releases, into `out`, the held error events that the partition's clock (its largest
    /// event time) has passed by [`HOLD_MS`]. The partition calls it before its watermark
    /// moves to `clock`, so a released event is never late: it was held for less than the
    /// allowed lateness.
    pub fn release_due(&mut self, clock: i64, out: &mut Vec<QoeEvent>) {
        if !self.has_due(clock) {
            return;
        }
        let mut next = i64::MAX;
        for s in self.by_sid.values_mut() {
            if let Some(due) = s.held.as_ref().map(|h| h.ts + HOLD_MS) {
                if due <= clock {
                    s.release(out);
                } else {
                    next = next.min(due);
                }
            }
        }
        self.next_release = next;
    }

    /// An event carrying the context the session gives this report, for counting it in its
    /// slice when it makes no event itself (a request report, a late or duplicate report);
    /// the session is not changed.
    pub fn probe_event(&self, m: &CmcdMessage) -> QoeEvent {
        let fresh;
        let session = match self.by_sid.get(&m.cmcd.sid) {
            Some(s) if m.cdn.is_empty() || s.cdn.as_deref() == Some(m.cdn.as_str()) => s,
            _ => {
                let mut s = self.by_sid.get(&m.cmcd.sid).cloned().unwrap_or_default();
                s.learn(m);
                fresh = s;
                &fresh
            }
        };
        let mut view = View {
            view_id: session
                .view
                .as_ref()
                .map_or_else(|| m.cmcd.sid.clone(), |v| v.view_id.clone()),
            ..View::default()
        };
        session.event(&mut view, m, EventType::Heartbeat, m.cmcd.ts)
    }

    /// Takes one report (already known not to be a duplicate or late); the events it makes
    /// are appended to `out`. True when the report moved its view to another CDN mid-view
    /// (see [`Session::learn`]), to be counted in the new CDN's `cdn_switches`.
    pub fn on_report(
        &mut self,
        m: &CmcdMessage,
        config: &SessionConfig,
        out: &mut Vec<QoeEvent>,
    ) -> bool {
        let r = &m.cmcd;
        if !self.by_sid.contains_key(&r.sid) && self.by_sid.len() >= config.max_sessions {
            if let Some(oldest) = self
                .by_sid
                .iter()
                .min_by_key(|(_, s)| s.last_ts)
                .map(|(k, _)| k.clone())
            {
                if let Some(mut s) = self.by_sid.remove(&oldest) {
                    s.forget(&oldest, &mut self.lost);
                    s.release(out);
                }
            }
        }
        let session = self.by_sid.entry(r.sid.clone()).or_default();
        session.sn.add(r.sn);
        let before = session.cdn.clone();
        let switched = session.learn(m);
        if switched {
            session.split_at_switch(m, before, out);
        }
        session.take(m, config, out);
        session.last_ts = session.last_ts.max(r.ts);
        if let Some(held) = &session.held {
            self.next_release = self.next_release.min(held.ts + HOLD_MS);
        }
        switched
    }
}

fn protocol_of(sf: &str) -> &'static str {
    match sf {
        "h" => "hls",
        "d" => "dash",
        "s" => "smooth",
        "e" => "hesp",
        _ => "other",
    }
}

impl Session {
    /// The session is forgotten: the reports it never delivered go to `lost`, with a probe
    /// carrying its context at its last report.
    fn forget(&self, sid: &str, lost: &mut Vec<(QoeEvent, u64)>) {
        let n = self.sn.lost();
        if n == 0 {
            return;
        }
        let mut view = View {
            view_id: self
                .view
                .as_ref()
                .map_or_else(|| sid.to_owned(), |v| v.view_id.clone()),
            ..View::default()
        };
        let probe = self.event_with(
            &mut view,
            &self.client,
            EventType::Heartbeat,
            self.last_ts,
            self.last_ts,
        );
        lost.push((probe, n));
    }

    /// A mid-view CDN switch at the report's time (for a request report, when the request to
    /// the new CDN started): the time played or stalled since the last state report was
    /// served by the CDN before, so a heartbeat carrying it is counted there; the view's later
    /// time goes to the new CDN.
    fn split_at_switch(
        &mut self,
        m: &CmcdMessage,
        before: Option<String>,
        out: &mut Vec<QoeEvent>,
    ) {
        let Some(mut view) = self.view.take() else {
            return;
        };
        let ts = m.cmcd.ts;
        if ts > view.state_ts {
            let elapsed = u32::try_from(ts - view.state_ts).unwrap_or(u32::MAX);
            let (playing, stall) = match view.state.as_deref() {
                Some("p") => (elapsed, 0),
                Some("r") if view.in_stall => (0, elapsed),
                _ => (0, 0),
            };
            if playing > 0 || stall > 0 {
                let new = std::mem::replace(&mut self.cdn, before);
                let mut e = self.event(&mut view, m, EventType::Heartbeat, ts);
                self.cdn = new;
                if playing > 0 {
                    e.playing_ms = Some(playing);
                    e.bitrate_kbps = view.bitrate;
                }
                if stall > 0 {
                    e.stall_ms = Some(stall);
                }
                view.state_ts = ts;
                out.push(e);
            }
        }
        self.view = Some(view);
    }

    /// Updates the dimensions the report tells. True for a real mid-view CDN switch: the
    /// view's attempt is counted and a source as strong as the one that named its CDN now
    /// names another (a stronger source correcting a weaker one is knowledge, not a switch).
    fn learn(&mut self, m: &CmcdMessage) -> bool {
        let mut switched = false;
        let r = &m.cmcd;
        if let Some(cid) = &r.cid {
            self.stream_id = Some(cid.clone());
        }
        if let Some(st) = &r.st {
            self.stream_type = Some(st.clone());
        }
        if let Some(sf) = &r.sf {
            self.protocol = Some(protocol_of(sf).to_owned());
        }
        // One rule for every report of the view: a CDN from a weaker source (the page's
        // `?cdn=`) does not override one from a stronger (the host that served a request,
        // the report's `cdn` key).
        if !m.cdn.is_empty() && m.cdn_rank >= self.cdn_rank {
            if self.cdn.as_deref() != Some(m.cdn.as_str()) {
                switched = self.cdn.is_some()
                    && m.cdn_rank == self.cdn_rank
                    && self.view.as_ref().is_some_and(|v| v.start_cdn.is_some());
                self.cdn = Some(m.cdn.clone());
            }
            self.cdn_rank = m.cdn_rank;
        }
        if self.client.region != m.region
            || self.client.platform != m.platform
            || self.client.player != m.player
        {
            self.client = Client {
                region: m.region.clone(),
                platform: m.platform.clone(),
                player: m.player.clone(),
            };
        }
        switched
    }

    /// Emits the held error event, if any, with a generic code when the player sent none.
    fn release(&mut self, out: &mut Vec<QoeEvent>) {
        if let Some(mut e) = self.held.take() {
            if e.code.is_none() {
                let generic = if e.fatal == Some(true) {
                    GENERIC_FATAL_CODE
                } else {
                    GENERIC_ERROR_CODE
                };
                e.code = Some(generic.to_owned());
            }
            out.push(e);
        }
    }

    /// Emits `e`, or holds it when it still lacks the player's code.
    fn emit_or_hold(&mut self, e: QoeEvent, out: &mut Vec<QoeEvent>) {
        if e.code.is_some() {
            out.push(e);
        } else {
            self.held = Some(e);
        }
    }

    /// Whether the held error is a non-fatal one of `view` (a failure's error report, sent
    /// before its `sta=f`).
    fn holds_error_of(&self, view: &View) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.fatal == Some(false) && h.view_id == view.view_id)
    }

    /// A fatal failure of `view` reported at `r.ts` (`ps f`, or `e` with `sta=f`): one fatal
    /// error. A held non-fatal error of the same view is this failure's error report, sent
    /// first: it becomes the fatal error (keeping its code unless this report has one).
    /// An unrelated held error goes to `released`.
    fn fail(
        &mut self,
        view: &mut View,
        m: &CmcdMessage,
        out: &mut Vec<QoeEvent>,
        released: &mut Vec<QoeEvent>,
    ) {
        let r = &m.cmcd;
        view.last_error = None;
        let merged = if self.holds_error_of(view) {
            self.held.take()
        } else {
            None
        };
        let e = match merged {
            Some(mut h) => {
                h.fatal = Some(true);
                h.started = Some(view.started);
                if r.ec.is_some() {
                    h.code = r.ec.clone();
                }
                h
            }
            None => {
                self.release(released);
                let mut e = self.event(view, m, EventType::Error, r.ts);
                e.fatal = Some(true);
                e.started = Some(view.started);
                e.code = r.ec.clone();
                e
            }
        };
        self.emit_or_hold(e, out);
    }

    /// A heartbeat of the view at `ts` with the session's last known context, for marking the
    /// view's summary (no message at hand).
    fn event_for_view(&self, view: &mut View, ts: i64) -> QoeEvent {
        let mut e = self.event_with(view, &self.client, EventType::Heartbeat, ts, ts);
        e.seq = u32::MAX;
        e
    }

    fn event(&self, view: &mut View, m: &CmcdMessage, kind: EventType, ts: i64) -> QoeEvent {
        let client = Client {
            region: m.region.clone(),
            platform: m.platform.clone(),
            player: m.player.clone(),
        };
        self.event_with(view, &client, kind, ts, m.received_at)
    }

    fn event_with(
        &self,
        view: &mut View,
        client: &Client,
        kind: EventType,
        ts: i64,
        received_at: i64,
    ) -> QoeEvent {
        let seq = view.seq;
        view.seq += 1;
        let cdn = match &view.start_cdn {
            Some(start) if !view.started || kind == EventType::FirstFrame => start.clone(),
            _ => self.cdn.clone().unwrap_or_else(|| "unknown".into()),
        };
        QoeEvent {
            v: SCHEMA_VERSION,
            view_id: view.view_id.clone(),
            stream_id: self.stream_id.clone().unwrap_or_else(|| "unknown".into()),
            stream_type: match self.stream_type.as_deref() {
                Some("v") => StreamType::Vod,
                _ => StreamType::Live,
            },
            cdn,
            platform: client.platform.clone(),
            player: client.player.clone(),
            protocol: self.protocol.clone().unwrap_or_else(|| "unknown".into()),
            region: client.region.clone(),
            custom: BTreeMap::new(),
            seq,
            kind,
            ts,
            event_time: ts,
            received_at,
            // Every event says whether the view has started, as beacon players do.
            started: Some(view.started),
            playing_ms: None,
            stall_ms: None,
            bitrate_kbps: None,
            prev_bitrate_kbps: None,
            startup_ms: None,
            latency_ms: None,
            dropped_frames: None,
            code: None,
            fatal: None,
            reason: None,
        }
    }

    fn take(&mut self, m: &CmcdMessage, config: &SessionConfig, out: &mut Vec<QoeEvent>) {
        let r: &CmcdReport = &m.cmcd;
        let sta = if r.e == "ps" { r.sta.as_deref() } else { None };
        if self.held.as_ref().is_some_and(|h| r.ts - h.ts > HOLD_MS) {
            self.release(out);
        }
        // An error report right after a fatal failure is that failure's own report: it adds
        // only the player's code, when the failure is still held for want of one (a second
        // `sta=f` may carry it too).
        if let Some(ended) = self.ended_at {
            if self.view.is_none()
                && matches!(r.e.as_str(), "e" | "ps")
                && self.failed
                && r.ts - ended <= HOLD_MS
                && (r.e == "e" || r.sta.as_deref() == Some("f"))
            {
                if let Some(held) = self.held.as_mut().filter(|h| h.fatal == Some(true)) {
                    if held.code.is_none() {
                        held.code.clone_from(&r.ec);
                    }
                    if r.e == "e" {
                        // The failure's error report came: no code will follow.
                        self.release(out);
                    }
                }
                return;
            }
        }
        // Players post each report on its own request, so reports sent together can arrive in
        // any order. A report older than the end of the session's last view belongs to it.
        if self.view.is_none() && self.ended_at.is_some_and(|end| r.ts < end) {
            return;
        }
        let silent = self.view.is_some() && r.ts > self.last_ts + config.timeout_ms;
        if self.view.is_none() || silent {
            // What may open a view: after an earlier one of this session ended, only a play
            // state that is not terminal (hls.js keeps sending interval reports with `sta=f`
            // after a failure), and after a failure only a new start (`s`, `d`): Shaka goes on
            // reporting seeking and paused states for the stream that failed; for a session's
            // first view, any report but a request (`rr`: requests of a page that never
            // reports a state are not an attempt).
            let terminal = matches!(r.sta.as_deref(), Some("f" | "e" | "q"));
            let starts = matches!(r.sta.as_deref(), Some("s" | "d"));
            let opens = if self.ended_at.is_some() && !silent {
                r.e == "ps" && !terminal && (!self.failed || starts)
            } else {
                r.e != "rr" && !terminal || r.e == "ps" && r.sta.as_deref() == Some("f")
            };
            if !opens {
                return;
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
        if view.start_pending && r.ts < view.start_ts {
            view.start_ts = r.ts;
            view.state_ts = view.state_ts.min(r.ts);
        }
        // The start waits, at most START_WAIT_MS, for a report that tells the CDN (a request)
        // or more than "starting" (hls.js sends an interval report and its first bitrate
        // choice before any request).
        let tells = match r.e.as_str() {
            "rr" | "e" => true,
            "ps" => !matches!(sta, Some("s" | "d" | "w")),
            _ => false,
        };
        let waits = !tells && r.ts - view.start_ts < START_WAIT_MS;
        if view.start_pending && !waits {
            view.start_cdn = Some(self.cdn.clone().unwrap_or_else(|| "unknown".into()));
            let start_ts = view.start_ts;
            let start = self.event(&mut view, m, EventType::ViewStart, start_ts);
            out.push(start);
            view.start_pending = false;
        }
        let primary_from = out.len();
        // Held errors released by this report: appended after its own events, so that the
        // first of those carries the report's time (playing time, latency).
        let mut released = Vec::new();

        // Time accounting since the previous state report (not for `rr`: its ts is the
        // request's start, not monotonic).
        let (mut playing, mut stall) = (0u32, 0u32);
        if matches!(r.e.as_str(), "ps" | "t") && r.ts > view.state_ts {
            let elapsed = u32::try_from(r.ts - view.state_ts).unwrap_or(u32::MAX);
            match view.state.as_deref() {
                Some("p") => playing = elapsed,
                Some("r") if view.in_stall => stall = elapsed,
                _ => {}
            }
            view.state_ts = r.ts;
        }
        let old_bitrate = view.bitrate;
        // The view's last report was an error before the first frame (see the module doc).
        let error_before_start = if r.e == "e" {
            None
        } else {
            view.last_error.take().filter(|_| !view.started)
        };

        let mut ended = None;
        // Set when the view ends by failing to start after an error already counted.
        let mut end_fatal_code = None;
        match (r.e.as_str(), sta) {
            ("ps", Some("p")) => {
                if !view.started {
                    let by_ts = r.ts - view.start_ts;
                    let startup = match r.msd.map(i64::from) {
                        Some(msd) if (msd - by_ts).abs() <= MSD_TOLERANCE_MS.max(by_ts / 10) => msd,
                        _ => by_ts,
                    };
                    view.started = true;
                    let mut e = self.event(&mut view, m, EventType::FirstFrame, r.ts);
                    e.startup_ms = Some(u32::try_from(startup.max(0)).unwrap_or(u32::MAX));
                    out.push(e);
                } else if view.state.as_deref() == Some("r") && view.in_stall {
                    out.push(self.event(&mut view, m, EventType::StallEnd, r.ts));
                } else if view.state.as_deref() == Some("a") {
                    out.push(self.event(&mut view, m, EventType::Resume, r.ts));
                }
                view.in_stall = false;
            }
            ("ps", Some("r")) => {
                let rebuffer = view.started && view.state.as_deref() != Some("k");
                if rebuffer && !view.in_stall {
                    out.push(self.event(&mut view, m, EventType::StallStart, r.ts));
                }
                view.in_stall = rebuffer;
            }
            ("ps", Some("a")) => {
                out.push(self.event(&mut view, m, EventType::Pause, r.ts));
                view.in_stall = false;
            }
            ("ps", Some("k")) => {
                out.push(self.event(&mut view, m, EventType::Seek, r.ts));
                view.in_stall = false;
            }
            // Leaving, or the stream ending, right after an error before the first frame: the
            // view failed to start.
            ("ps", Some("e" | "q")) if error_before_start.is_some() => {
                if self.holds_error_of(&view) {
                    self.fail(&mut view, m, out, &mut released);
                } else {
                    end_fatal_code = error_before_start;
                }
                ended = Some(EndReason::Error);
            }
            ("ps", Some("e")) => ended = Some(EndReason::Completed),
            ("ps", Some("q")) => ended = Some(EndReason::Exit),
            // hls.js's error report of a fatal failure says `sta=f` itself, and may arrive
            // before its `ps f`: it is the failure (the `ps f` then adds nothing).
            ("ps", Some("f")) | ("e", _) if r.sta.as_deref() == Some("f") => {
                self.fail(&mut view, m, out, &mut released);
                ended = Some(EndReason::Error);
            }
            ("e", _) => {
                // Held: a `sta=f` may follow and make it the failure's one error.
                self.release(&mut released);
                let mut e = self.event(&mut view, m, EventType::Error, r.ts);
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
        // A new bitrate: `bc` reports, or a changed `br` on any report (dash.js sends no `bc`).
        // Its event follows the one that carries the time played at the old bitrate.
        let mut switch = None;
        if let Some(br) = r.br.filter(|_| r.e != "rr") {
            if let Some(prev) = view.bitrate.filter(|p| *p != br) {
                switch = Some((prev, br));
            }
            view.bitrate = Some(br);
        }
        let dropped = r.dfa.map(|now| {
            let delta = now.saturating_sub(view.dfa.unwrap_or(0));
            view.dfa = Some(now);
            delta
        });
        let latency = r.ltc.filter(|_| r.e != "rr");
        let carries =
            playing > 0 || stall > 0 || dropped.is_some_and(|d| d > 0) || latency.is_some();
        if carries {
            if out.len() == primary_from {
                let kind = if ended.is_some() {
                    EventType::ViewEnd
                } else {
                    EventType::Heartbeat
                };
                out.push(self.event(&mut view, m, kind, r.ts));
            }
            let e = &mut out[primary_from];
            if playing > 0 {
                e.playing_ms = Some(playing);
                // Time played since the last report was at the bitrate before this report.
                e.bitrate_kbps = old_bitrate;
            }
            if stall > 0 {
                e.stall_ms = Some(stall);
            }
            e.latency_ms = latency;
            e.dropped_frames = dropped.filter(|d| *d > 0);
        }
        if let Some((prev, br)) = switch {
            let mut e = self.event(&mut view, m, EventType::BitrateChange, r.ts);
            e.bitrate_kbps = Some(br);
            e.prev_bitrate_kbps = Some(prev);
            out.push(e);
        }
        match ended {
            Some(reason) => {
                // The view_end already made to carry this report's time, or a new one.
                let carried_end =
                    out.len() > primary_from && out[primary_from].kind == EventType::ViewEnd;
                if !carried_end {
                    out.push(self.event(&mut view, m, EventType::ViewEnd, r.ts));
                }
                let end = if carried_end {
                    &mut out[primary_from]
                } else {
                    out.last_mut().expect("just pushed")
                };
                end.started = Some(view.started);
                end.reason = Some(reason);
                if let Some(code) = end_fatal_code {
                    end.fatal = Some(true);
                    end.code = Some(code);
                }
                self.ended_at = Some(r.ts);
                self.failed = reason == EndReason::Error;
            }
            None => self.view = Some(view),
        }
        out.append(&mut released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
