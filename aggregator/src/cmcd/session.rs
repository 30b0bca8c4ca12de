//! One CMCD session's state (the view it is in, what it has learnt of its context, the error
//! event it holds back, the report numbers delivered) and the events it makes. How a report
//! moves it is in [`super::take`]; the mapping is in the [module doc](super).

use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::{EventType, QoeEvent, StreamType, SCHEMA_VERSION};
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

/// How long an error event waits for the other report of the same failure (see the
/// [module doc](super)): players send both within milliseconds, on separate requests.
pub const HOLD_MS: i64 = 5_000;
/// The code of a fatal failure whose player sent none.
pub(super) const GENERIC_FATAL_CODE: &str = "cmcd_fatal";
/// The code of a non-fatal error whose player sent none.
pub(super) const GENERIC_ERROR_CODE: &str = "unknown";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Session {
    /// Largest report time seen.
    pub(super) last_ts: i64,
    /// Views opened while this state was held (the first is named after the sid, later ones
    /// `sid~2`, `sid~3`, ...).
    pub(super) views: u32,
    pub(super) view: Option<View>,
    /// When the last view ended (its reports after that open a new one).
    pub(super) ended_at: Option<i64>,
    /// Whether the last view ended in a fatal failure.
    pub(super) failed: bool,
    /// Dimensions learnt so far (kept across views of the session).
    pub(super) stream_id: Option<String>,
    pub(super) stream_type: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) cdn: Option<String>,
    /// The rank of the source that set `cdn` (`CmcdMessage::cdn_rank`).
    #[serde(default)]
    pub(super) cdn_rank: u8,
    pub(super) client: Client,
    /// An error event held back until its failure's other report (see the module doc).
    #[serde(default)]
    pub(super) held: Option<QoeEvent>,
    /// The report sequence numbers delivered, for the reports that never were.
    #[serde(default)]
    pub(super) sn: SnRuns,
}

/// The `sn` of a session's delivered reports (duplicates are dropped before): runs of
/// numbers, a new one each time `sn` restarts at 0 (a player's new source), as the lowest,
/// highest and how many; what is missing inside a run was lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnRuns {
    pub(super) lo: u64,
    pub(super) hi: u64,
    pub(super) count: u64,
    /// Lost in the runs closed before this one.
    pub(super) lost: u64,
}

impl SnRuns {
    pub(super) fn add(&mut self, sn: Option<i64>) {
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
pub(super) struct Client {
    pub(super) region: String,
    pub(super) platform: String,
    pub(super) player: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct View {
    pub(super) view_id: String,
    pub(super) seq: u32,
    pub(super) start_ts: i64,
    /// `view_start` not yet emitted (it waits for the next report, see the module doc).
    pub(super) start_pending: bool,
    pub(super) started: bool,
    /// Last play state and since when time is accounted.
    pub(super) state: Option<String>,
    pub(super) state_ts: i64,
    /// Time of the last play-state report applied.
    pub(super) last_ps_ts: i64,
    pub(super) in_stall: bool,
    pub(super) bitrate: Option<u32>,
    pub(super) dfa: Option<u32>,
    /// The CDN of the view's attempt: its first frame, startup and anything before them count
    /// there, whatever CDN later reports name (one moment, one slice).
    #[serde(default)]
    pub(super) start_cdn: Option<String>,
    /// The code of the view's last report when that was an error before the first frame
    /// (a start failure if the view goes silent or ends now).
    #[serde(default)]
    pub(super) last_error: Option<String>,
}

/// The protocol a CMCD streaming format token (`sf`) names.
pub(crate) fn protocol_of(sf: &str) -> &'static str {
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
    pub(super) fn forget(&self, sid: &str, lost: &mut Vec<(QoeEvent, u64)>) {
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
    pub(super) fn split_at_switch(
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
    pub(super) fn learn(&mut self, m: &CmcdMessage) -> bool {
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
    pub(super) fn release(&mut self, out: &mut Vec<QoeEvent>) {
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
    pub(super) fn emit_or_hold(&mut self, e: QoeEvent, out: &mut Vec<QoeEvent>) {
        if e.code.is_some() {
            out.push(e);
        } else {
            self.held = Some(e);
        }
    }

    /// Whether the held error is a non-fatal one of `view` (a failure's error report, sent
    /// before its `sta=f`).
    pub(super) fn holds_error_of(&self, view: &View) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.fatal == Some(false) && h.view_id == view.view_id)
    }

    /// A fatal failure of `view` reported at `r.ts` (`ps f`, or `e` with `sta=f`): one fatal
    /// error. A held non-fatal error of the same view is this failure's error report, sent
    /// first: it becomes the fatal error (keeping its code unless this report has one).
    /// An unrelated held error goes to `released`.
    pub(super) fn fail(
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
    pub(super) fn event_for_view(&self, view: &mut View, ts: i64) -> QoeEvent {
        let mut e = self.event_with(view, &self.client, EventType::Heartbeat, ts, ts);
        e.seq = u32::MAX;
        e
    }

    pub(super) fn event(
        &self,
        view: &mut View,
        m: &CmcdMessage,
        kind: EventType,
        ts: i64,
    ) -> QoeEvent {
        let client = Client {
            region: m.region.clone(),
            platform: m.platform.clone(),
            player: m.player.clone(),
        };
        self.event_with(view, &client, kind, ts, m.received_at)
    }

    pub(super) fn event_with(
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
        let mut e = qoe_schemas::event_measures!(none QoeEvent {
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
            code: None,
            reason: None,
        });
        // Every event says whether the view has started, as beacon players do.
        e.started = Some(view.started);
        e
    }
}
