//! Beacon views over their whole life (SPEC §4 per-view summaries, §5 duplicates): which
//! `(view_id, seq)` of each view were counted, and when a view went silent.
//!
//! Why per view and not per window: a client that re-sends a body minutes later (an offline
//! queue, a retried `sendBeacon`) gets its events' corrected time shifted by the delay, into a
//! window that is still open; only the view remembers that those sequence numbers were
//! counted. A view is held from its first counted event until the watermark has passed its
//! last one by the view timeout (2 minutes for live, 10 for VOD by default); then, unless it
//! ended with `view_end`, its summary ends with reason `timeout`. Which views are held is
//! decided while messages are processed (when the watermark enters a new window), never by
//! flush timing, so the table is a function of the partition's messages; it travels with the
//! partition's state snapshot (see `window.rs`).
//!
//! Bounds: sequence numbers cost one integer per view while they arrive in order (the counted
//! prefix) plus at most [`MAX_GAPPED`] numbers above a gap; a view that leaves more gaps than
//! that has its oldest gaps closed (a copy of an event from such a gap would count as a
//! duplicate, never twice). The table holds at most `max_views` views per partition; beyond
//! it the least recently heard eighth is dropped (counted; a dropped view that speaks again is
//! tracked afresh).

use crate::context::{Context, ContextRef};
use hashbrown::{DefaultHashBuilder, Equivalent, HashMap, HashSet};
use qoe_schemas::{EventRef, EventType, StreamType};
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;
use std::sync::Arc;

/// How long views are held, and how many.
#[derive(Debug, Clone, Copy)]
pub struct ViewConfig {
    /// A live view whose last event is this far behind the watermark has ended.
    pub live_timeout_ms: i64,
    /// The same for VOD (paused VOD players may stay silent for longer).
    pub vod_timeout_ms: i64,
    /// Most views held per partition.
    pub max_views: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            live_timeout_ms: 120_000,
            vod_timeout_ms: 600_000,
            max_views: 500_000,
        }
    }
}

impl ViewConfig {
    fn timeout_ms(&self, vod: bool) -> i64 {
        if vod {
            self.vod_timeout_ms
        } else {
            self.live_timeout_ms
        }
    }
}

/// Most sequence numbers held above a gap, per view.
pub const MAX_GAPPED: usize = 64;

/// The counted sequence numbers of a view: all below `below`, and those in `above` (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seqs {
    below: u64,
    above: Vec<u32>,
}

impl Seqs {
    /// Records `seq`; false if it was counted before.
    fn insert(&mut self, seq: u32) -> bool {
        let s = u64::from(seq);
        if s < self.below {
            return false;
        }
        if s == self.below {
            self.below += 1;
        } else {
            match self.above.binary_search(&seq) {
                Ok(_) => return false,
                Err(i) => self.above.insert(i, seq),
            }
            if self.above.len() > MAX_GAPPED {
                // Close the oldest gaps: what is below the middle counts as seen.
                let k = MAX_GAPPED / 2;
                self.below = u64::from(self.above[k]) + 1;
                self.above.drain(..=k);
            }
        }
        let contiguous = self
            .above
            .iter()
            .zip(self.below..)
            .take_while(|(a, b)| u64::from(**a) == *b)
            .count();
        self.above.drain(..contiguous);
        self.below += contiguous as u64;
        true
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    /// The context of the view's latest counted event.
    context: Arc<Context>,
    /// Largest event time counted.
    last_time: i64,
    /// Whether a `view_end` was counted (the view is held for duplicates, but does not time
    /// out).
    ended: bool,
    seqs: Seqs,
    /// Sequence numbers counted, and the highest: what is missing below it was lost.
    counted: u32,
    max_seq: u32,
    /// The caller's token for `context` (see [`Views::track`]): equal tokens, equal contexts.
    token: u64,
}

impl Tracked {
    /// Sequence numbers below the highest counted that never counted.
    fn lost(&self) -> u64 {
        (u64::from(self.max_seq) + 1).saturating_sub(u64::from(self.counted))
    }
}

/// A view forgotten with gaps in its sequence numbers: `lost` events never counted, in the
/// window of its last event and the slice of its context.
#[derive(Debug, Clone, PartialEq)]
pub struct LostEvents {
    pub context: Arc<Context>,
    pub last_time: i64,
    pub lost: u64,
}

/// A view that went silent: its summary ends with reason `timeout` at its last event.
#[derive(Debug, Clone, PartialEq)]
pub struct SilentView {
    pub view_id: String,
    pub context: Arc<Context>,
    pub last_time: i64,
}

/// The views of one partition. `S` hashes view ids (tests use one under which all collide).
#[derive(Debug)]
pub struct Views<S = DefaultHashBuilder> {
    by_id: HashMap<Box<str>, Tracked, S>,
    /// Each distinct context of a held view, once.
    contexts: HashSet<Arc<Context>, DefaultHashBuilder>,
    evicted: u64,
}

impl<S: Default> Default for Views<S> {
    fn default() -> Self {
        Views {
            by_id: HashMap::default(),
            contexts: HashSet::default(),
            evicted: 0,
        }
    }
}

impl Equivalent<Arc<Context>> for ContextRef<'_> {
    fn equivalent(&self, c: &Arc<Context>) -> bool {
        Equivalent::<Context>::equivalent(self, &**c)
    }
}

fn intern(
    contexts: &mut HashSet<Arc<Context>, DefaultHashBuilder>,
    e: &EventRef<'_>,
) -> Arc<Context> {
    let key = ContextRef::of(e);
    if let Some(c) = contexts.get(&key) {
        return c.clone();
    }
    let c = Arc::new(key.owned());
    contexts.insert(c.clone());
    c
}

impl<S: BuildHasher> Views<S> {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Views dropped by the bound since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Records an event that is not late; false if its `(view_id, seq)` was counted before.
    /// `token` names the event's context for the caller (the partition passes its batch's
    /// context index with the batch number): while it is unchanged, the view's context is
    /// known to be the same and is not compared (0: always compare).
    pub fn track(&mut self, e: &EventRef<'_>, config: &ViewConfig, token: u64) -> bool {
        if let Some(v) = self.by_id.get_mut(&*e.view_id) {
            if !v.seqs.insert(e.seq) {
                return false;
            }
            v.last_time = v.last_time.max(e.event_time);
            v.ended |= e.kind == EventType::ViewEnd;
            v.counted = v.counted.saturating_add(1);
            v.max_seq = v.max_seq.max(e.seq);
            if (token == 0 || token != v.token)
                && !Equivalent::<Context>::equivalent(&ContextRef::of(e), &*v.context)
            {
                v.context = intern(&mut self.contexts, e);
            }
            v.token = token;
            return true;
        }
        if self.by_id.len() >= config.max_views.max(1) {
            self.evict(config.max_views.max(1));
        }
        let mut seqs = Seqs::default();
        seqs.insert(e.seq);
        let tracked = Tracked {
            context: intern(&mut self.contexts, e),
            last_time: e.event_time,
            ended: e.kind == EventType::ViewEnd,
            seqs,
            counted: 1,
            max_seq: e.seq,
            token,
        };
        self.by_id.insert(e.view_id.as_ref().into(), tracked);
        true
    }

    /// Drops the least recently heard eighth of `max` views. The victims are the smallest by
    /// `(last event time, view id)`, a total order, so a replay drops the same ones.
    fn evict(&mut self, max: usize) {
        let n = (max / 8).max(1).min(self.by_id.len());
        let mut order: Vec<(i64, &str)> = self
            .by_id
            .iter()
            .map(|(id, v)| (v.last_time, &**id))
            .collect();
        order.select_nth_unstable(n - 1);
        let victims: Vec<Box<str>> = order[..n].iter().map(|(_, id)| (*id).into()).collect();
        for id in victims {
            self.by_id.remove(&id);
        }
        self.evicted += n as u64;
        self.contexts.retain(|c| Arc::strong_count(c) > 1);
    }

    /// Ends and forgets the views whose last event is the timeout behind `watermark`; the
    /// silent ones (no `view_end`) are appended to `silent`, those with gaps in their sequence
    /// numbers to `lost`.
    pub fn expire(
        &mut self,
        watermark: i64,
        config: &ViewConfig,
        silent: &mut Vec<SilentView>,
        lost: &mut Vec<LostEvents>,
    ) {
        let before = self.by_id.len();
        self.by_id.retain(|id, v| {
            let vod = v.context.stream_type == StreamType::Vod;
            let keep = v.last_time.saturating_add(config.timeout_ms(vod)) > watermark;
            if !keep && !v.ended {
                silent.push(SilentView {
                    view_id: id.to_string(),
                    context: v.context.clone(),
                    last_time: v.last_time,
                });
            }
            if !keep && v.lost() > 0 {
                lost.push(LostEvents {
                    context: v.context.clone(),
                    last_time: v.last_time,
                    lost: v.lost(),
                });
            }
            keep
        });
        if self.by_id.len() < before {
            self.contexts.retain(|c| Arc::strong_count(c) > 1);
        }
    }
}

/// Why a stored view table cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum StoredViewsError {
    #[error("the views' counts do not match the views")]
    Counts,
    #[error("view {view:?} refers to context {context}, which is not stored")]
    Context { view: String, context: u32 },
    #[error("view {0:?} has a malformed sequence set")]
    Seqs(String),
}

/// The table as stored: contexts once, views referring to them by index.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    contexts: Vec<Context>,
    /// `(view_id, context index, last event time, ended, counted below, counted above)`.
    views: Vec<(String, u32, i64, bool, u64, Vec<u32>)>,
    /// Per view, in the same order: `(sequence numbers counted, highest)`. Absent in
    /// snapshots written before lost events were counted (then: nothing lost so far).
    #[serde(default)]
    counts: Vec<(u32, u32)>,
}

impl<S: BuildHasher + Default> Views<S> {
    /// The table in a canonical form: views by id, contexts in order of first use.
    pub fn to_stored(&self) -> Stored {
        let mut held: Vec<(&str, &Tracked)> = self.by_id.iter().map(|(id, v)| (&**id, v)).collect();
        held.sort_unstable_by_key(|(id, _)| *id);
        let mut index: HashMap<*const Context, u32> = HashMap::new();
        let mut contexts = Vec::new();
        let counts = held.iter().map(|(_, v)| (v.counted, v.max_seq)).collect();
        let views = held
            .into_iter()
            .map(|(id, v)| {
                let i = *index.entry(Arc::as_ptr(&v.context)).or_insert_with(|| {
                    contexts.push((*v.context).clone());
                    (contexts.len() - 1) as u32
                });
                (
                    id.to_owned(),
                    i,
                    v.last_time,
                    v.ended,
                    v.seqs.below,
                    v.seqs.above.clone(),
                )
            })
            .collect();
        Stored {
            contexts,
            views,
            counts,
        }
    }

    pub fn from_stored(stored: Stored) -> Result<Self, StoredViewsError> {
        let mut table = Views::<S>::default();
        let contexts: Vec<Arc<Context>> = stored.contexts.into_iter().map(Arc::new).collect();
        if !stored.counts.is_empty() && stored.counts.len() != stored.views.len() {
            return Err(StoredViewsError::Counts);
        }
        for (i, (id, ctx, last_time, ended, below, above)) in stored.views.into_iter().enumerate() {
            // Without counts (an older snapshot): the counted prefix is taken as complete
            // (closed gaps included); the gaps above it still count.
            let (counted, max_seq) = stored.counts.get(i).copied().unwrap_or_else(|| {
                let max = above
                    .last()
                    .copied()
                    .map_or(below.saturating_sub(1), u64::from);
                let n = below + above.len() as u64;
                (
                    n.min(u64::from(u32::MAX)) as u32,
                    max.min(u64::from(u32::MAX)) as u32,
                )
            });
            let context = contexts
                .get(ctx as usize)
                .ok_or_else(|| StoredViewsError::Context {
                    view: id.to_string(),
                    context: ctx,
                })?
                .clone();
            if above.len() > MAX_GAPPED || !above.is_sorted() {
                return Err(StoredViewsError::Seqs(id.to_string()));
            }
            table.by_id.insert(
                id.into(),
                Tracked {
                    context,
                    last_time,
                    ended,
                    seqs: Seqs { below, above },
                    counted,
                    max_seq,
                    token: 0,
                },
            );
        }
        table.contexts = contexts
            .into_iter()
            .filter(|c| Arc::strong_count(c) > 1)
            .collect();
        Ok(table)
    }
}

#[cfg(test)]
impl<S: BuildHasher> Views<S> {
    /// `(view_id, last_time, ended)` of every held view, sorted.
    pub fn held(&self) -> Vec<(String, i64, bool)> {
        let mut v: Vec<_> = self
            .by_id
            .iter()
            .map(|(id, t)| (id.to_string(), t.last_time, t.ended))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::QoeEvent;

    fn ev(view: &str, seq: u32, kind: EventType, t: i64) -> EventRef<'static> {
        let e = QoeEvent {
            received_at: t,
            ..QoeEvent::blank(view, seq, kind, t)
        };
        Box::leak(Box::new(e)).borrowed()
    }

    #[test]
    fn sequence_numbers_count_once_in_any_order_within_bounds() {
        let mut s = Seqs::default();
        assert!(s.insert(0) && s.insert(2) && s.insert(1));
        assert_eq!(
            (s.below, s.above.len()),
            (3, 0),
            "a filled gap folds into the prefix"
        );
        assert!(!s.insert(0) && !s.insert(2));
        assert!(s.insert(10) && !s.insert(10));
        // Many gaps: the oldest are closed, so memory stays bounded and nothing counts twice.
        for seq in (20..2000).step_by(2) {
            s.insert(seq);
        }
        assert!(s.above.len() <= MAX_GAPPED);
        assert!(
            !s.insert(21),
            "an old gap closed by the bound counts as seen"
        );
        assert!(s.insert(1999), "a recent gap is still open");
        assert!(!s.insert(1998));
        assert!(s.insert(u32::MAX) && !s.insert(u32::MAX));
    }

    #[test]
    fn views_are_held_until_the_timeout_after_their_last_event() {
        let config = ViewConfig {
            live_timeout_ms: 60_000,
            ..ViewConfig::default()
        };
        let mut v = Views::<DefaultHashBuilder>::default();
        assert!(v.track(&ev("a", 0, EventType::ViewStart, 0), &config, 0));
        assert!(v.track(&ev("b", 0, EventType::ViewStart, 0), &config, 0));
        assert!(v.track(&ev("b", 1, EventType::ViewEnd, 5_000), &config, 0));
        assert!(v.track(&ev("a", 1, EventType::Heartbeat, 10_000), &config, 0));
        // Seq 2 and 3 of a never arrive.
        assert!(v.track(&ev("a", 4, EventType::Heartbeat, 9_000), &config, 0));
        let (mut silent, mut lost) = (Vec::new(), Vec::new());
        v.expire(65_000, &config, &mut silent, &mut lost);
        assert!(silent.is_empty() && lost.is_empty());
        assert_eq!(
            v.len(),
            1,
            "b ended 60 s before the watermark: forgotten quietly"
        );
        // A copy arriving minutes later, shifted into an open window, is still a duplicate.
        assert!(!v.track(&ev("a", 0, EventType::ViewStart, 60_000), &config, 0));
        v.expire(70_000, &config, &mut silent, &mut lost);
        assert_eq!(silent.len(), 1);
        assert_eq!(
            lost.iter()
                .map(|l| (l.last_time, l.lost))
                .collect::<Vec<_>>(),
            [(10_000, 2)],
            "a's seq 2 and 3; b lost nothing"
        );
        assert_eq!(
            (silent[0].view_id.as_str(), silent[0].last_time),
            ("a", 10_000)
        );
        assert_eq!(&*silent[0].context.region, "r");
        assert!(v.is_empty());
    }

    #[test]
    fn the_bound_drops_the_least_recently_heard_deterministically() {
        let config = ViewConfig {
            max_views: 16,
            ..ViewConfig::default()
        };
        let mut v = Views::<DefaultHashBuilder>::default();
        for i in 0..16 {
            v.track(
                &ev(&format!("v{i:02}"), 0, EventType::ViewStart, 1000 * i),
                &config,
                0,
            );
        }
        v.track(&ev("new", 0, EventType::ViewStart, 99_000), &config, 0);
        assert_eq!(v.len(), 15);
        assert_eq!(v.take_evicted(), 2);
        let held: Vec<String> = v.held().into_iter().map(|h| h.0).collect();
        assert!(!held.contains(&"v00".to_owned()) && !held.contains(&"v01".to_owned()));
        assert!(held.contains(&"v02".to_owned()) && held.contains(&"new".to_owned()));
    }

    #[test]
    fn stored_tables_round_trip() {
        let config = ViewConfig::default();
        let mut v = Views::<DefaultHashBuilder>::default();
        v.track(&ev("a", 0, EventType::ViewStart, 0), &config, 0);
        v.track(&ev("a", 5, EventType::Heartbeat, 9), &config, 0);
        v.track(&ev("b", 0, EventType::ViewEnd, 3), &config, 0);
        let json = serde_json::to_string(&v.to_stored()).unwrap();
        let w =
            Views::<DefaultHashBuilder>::from_stored(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(v.held(), w.held());
        assert_eq!(w.contexts.len(), 1, "one shared context");
        let mut w = w;
        assert!(!w.track(&ev("a", 5, EventType::Heartbeat, 9), &config, 0));
        assert!(w.track(&ev("a", 4, EventType::Heartbeat, 9), &config, 0));
        let bad: Stored =
            serde_json::from_str(r#"{"contexts":[],"views":[["a",0,0,false,0,[]]]}"#).unwrap();
        assert!(Views::<DefaultHashBuilder>::from_stored(bad).is_err());
    }
}
