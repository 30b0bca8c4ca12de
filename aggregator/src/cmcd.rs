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

mod session;
mod take;
#[cfg(test)]
mod tests;

pub(crate) use session::protocol_of;
pub use session::{SessionConfig, HOLD_MS};

use crate::context::ContextRef;
use crate::views::SilentView;
use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::{EndReason, EventType, QoeEvent};
use serde::{Deserialize, Serialize};
use session::{Session, View};
use std::collections::BTreeMap;

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
    /// (see `Session::learn`), to be counted in the new CDN's `cdn_switches`.
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
