//! What one fetched message does to its partition's state: the per-message rules of the
//! consumer, pure (no Kafka, no metrics) so they are unit-tested on encoded messages.
//!
//! - Below the resume plan's range, or already aggregated: not looked at.
//! - In the restore range (after a restart, between the checkpoint's `state_offset` and
//!   `next_offset`): a CMCD report rebuilds duplicate tracking; a beacon message is not even
//!   decoded (views come whole from the state snapshot).
//! - Otherwise a CMCD report goes to its session, a beacon message's events are applied in
//!   order at the message's offset, and anything unreadable is skipped (it still moves the
//!   partition forward, so offsets stay exact).
//! - While the partition replays messages whose rows were written before
//!   ([`PartitionState::replaying`]) nothing is counted again.

use crate::source::{self, ResumePlan, Route};
use crate::window::{Outcome, PartitionState};
use qoe_schemas::cdn_log::{RequestMessage, REQUEST_MESSAGE_PREFIX};
use qoe_schemas::cmcd::{CmcdMessage, CMCD_MESSAGE_PREFIX};
use qoe_schemas::MessageRef;

/// Traces a batch's write span continues: the first as parent, the others as links. Bounded
/// because a batch holds up to hundreds of thousands of messages.
pub const MAX_TRACE_LINKS: usize = 32;

/// What a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatched {
    /// Outside the resume plan, or aggregated before: not looked at.
    Ignored,
    /// Rebuilt state only (restore range).
    Restored,
    /// Neither a QoE beacon message nor a CMCD report (`reason` says why): skipped.
    Invalid { cmcd: bool, reason: String },
    /// A beacon message without events: skipped.
    Empty,
    /// A CMCD report, with its outcome.
    Cmcd(Outcome),
    /// A request from a CDN or origin log, with its outcome.
    Request(Outcome),
    /// A beacon message's events, by outcome.
    Events(OutcomeCounts),
}

/// Events of one message by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub accepted: u64,
    pub late: u64,
    pub duplicate: u64,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Late => self.late += 1,
            Outcome::Duplicate => self.duplicate += 1,
        }
    }
}

/// A message's effect, and whether it counts in the outcome metrics (false while the
/// partition replays messages it counted before a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub dispatched: Dispatched,
    pub counted: bool,
}

/// The message of one partition at `offset`.
pub struct Fetched<'a> {
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    /// The `traceparent` header, if any.
    pub traceparent: Option<&'a str>,
}

/// Applies a fetched message to the partition's state. `traceparents` collects the distinct
/// trace contexts of the pending batch's first traced messages (at most
/// [`MAX_TRACE_LINKS`]).
pub fn dispatch(
    state: &mut PartitionState,
    plan: &ResumePlan,
    traceparents: &mut Vec<String>,
    m: &Fetched<'_>,
) -> Effect {
    let offset = m.offset;
    let route = source::route(offset, plan, state.next_offset());
    // Re-processed after a restart to rebuild state: counted before, not again.
    let counted = !state.replaying();
    let effect = |dispatched| Effect {
        dispatched,
        counted,
    };
    if matches!(route, Route::Ignore | Route::AlreadyProcessed) {
        return effect(Dispatched::Ignored);
    }
    if let Some(payload) = m.payload.filter(|p| p.starts_with(CMCD_MESSAGE_PREFIX)) {
        let decoded = CmcdMessage::decode(payload);
        if route == Route::Restore {
            // Sessions come from the checkpoint's snapshot; the replay rebuilds duplicate
            // tracking only (an unreadable report was skipped when it was aggregated).
            if let Ok(report) = decoded {
                state.restore_cmcd(offset, &report);
            }
            return effect(Dispatched::Restored);
        }
        return effect(match decoded {
            Ok(report) => Dispatched::Cmcd(state.apply_cmcd(offset, &report)),
            Err(e) => {
                state.skip(offset);
                Dispatched::Invalid {
                    cmcd: true,
                    reason: e.to_string(),
                }
            }
        });
    }
    if let Some(payload) = m.payload.filter(|p| p.starts_with(REQUEST_MESSAGE_PREFIX)) {
        let decoded = RequestMessage::decode(payload);
        if route == Route::Restore {
            if let Ok(request) = decoded {
                state.restore_request(offset, &request);
            }
            return effect(Dispatched::Restored);
        }
        return effect(match decoded {
            Ok(request) => Dispatched::Request(state.apply_request(offset, &request)),
            Err(e) => {
                state.skip(offset);
                Dispatched::Invalid {
                    cmcd: false,
                    reason: format!("unreadable CDN log request: {e}"),
                }
            }
        });
    }
    if route == Route::Restore {
        return effect(Dispatched::Restored);
    }
    let message = match m.payload.map(MessageRef::decode) {
        Some(Ok(message)) => message,
        Some(Err(e)) => {
            state.skip(offset);
            return effect(Dispatched::Invalid {
                cmcd: false,
                reason: e.to_string(),
            });
        }
        None => {
            state.skip(offset);
            return effect(Dispatched::Invalid {
                cmcd: false,
                reason: "no payload".into(),
            });
        }
    };
    if let Some(tp) = m.traceparent {
        // Events of one request share its traceparent: keep each once.
        if traceparents.len() < MAX_TRACE_LINKS && !traceparents.iter().any(|t| t == tp) {
            traceparents.push(tp.to_owned());
        }
    }
    if message.is_empty() {
        state.skip(offset);
        return effect(Dispatched::Empty);
    }
    // A beacon message's events are applied in order at the message's offset: the message
    // is consumed whole within one batch, so offsets stay exact.
    let mut counts = OutcomeCounts::default();
    message.for_each_event(|event| counts.add(state.apply(offset, event)));
    effect(Dispatched::Events(counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::source::resume_plan;
    use crate::window::WindowConfig;
    use qoe_schemas::cmcd::CmcdReport;
    use qoe_schemas::{EventType, QoeEvent};

    const T0: i64 = 1_700_000_000_000;

    fn event(view: &str, seq: u32, kind: EventType) -> Vec<u8> {
        QoeEvent {
            received_at: T0 + 100,
            ..QoeEvent::blank(view, seq, kind, T0)
        }
        .encode()
    }

    fn report(sn: i64) -> Vec<u8> {
        CmcdMessage {
            cmcd: CmcdReport {
                e: "ps".into(),
                ts: T0,
                sid: "s-1".into(),
                sn: Some(sn),
                sta: Some("s".into()),
                ..CmcdReport::default()
            },
            received_at: T0,
            region: "r".into(),
            cdn: "c".into(),
            platform: "web".into(),
            player: "p".into(),
            cdn_rank: 0,
        }
        .encode()
    }

    fn fetched(offset: i64, payload: &[u8]) -> Fetched<'_> {
        Fetched {
            offset,
            payload: Some(payload),
            traceparent: None,
        }
    }

    fn fresh() -> (PartitionState, ResumePlan) {
        (
            PartitionState::new(WindowConfig::default(), None),
            resume_plan(None, false),
        )
    }

    #[test]
    fn beacon_events_are_applied_and_copies_are_duplicates() {
        let (mut state, plan) = fresh();
        let mut tps = Vec::new();
        let start = event("v", 0, EventType::ViewStart);
        let got = dispatch(&mut state, &plan, &mut tps, &fetched(0, &start));
        let one = |accepted, duplicate| {
            Dispatched::Events(OutcomeCounts {
                accepted,
                late: 0,
                duplicate,
            })
        };
        assert_eq!(got.dispatched, one(1, 0));
        assert!(got.counted);
        let again = dispatch(&mut state, &plan, &mut tps, &fetched(1, &start));
        assert_eq!(again.dispatched, one(0, 1));
        assert_eq!(state.next_offset(), 2);
        assert_eq!(state.pending().messages, 2);
    }

    #[test]
    fn unreadable_messages_are_skipped_and_move_the_partition_forward() {
        let (mut state, plan) = fresh();
        let mut tps = Vec::new();
        let got = dispatch(&mut state, &plan, &mut tps, &fetched(0, b"not json"));
        assert!(matches!(
            got.dispatched,
            Dispatched::Invalid { cmcd: false, .. }
        ));
        let got = dispatch(&mut state, &plan, &mut tps, &fetched(1, b"{\"cmcd\":{bad"));
        assert!(matches!(
            got.dispatched,
            Dispatched::Invalid { cmcd: true, .. }
        ));
        let none = Fetched {
            offset: 2,
            payload: None,
            traceparent: None,
        };
        let got = dispatch(&mut state, &plan, &mut tps, &none);
        assert!(matches!(got.dispatched, Dispatched::Invalid { .. }));
        assert_eq!(state.next_offset(), 3, "each skipped message is consumed");
    }

    #[test]
    fn cmcd_reports_go_to_their_session_once() {
        let (mut state, plan) = fresh();
        let mut tps = Vec::new();
        let r = report(0);
        let got = dispatch(&mut state, &plan, &mut tps, &fetched(0, &r));
        assert_eq!(got.dispatched, Dispatched::Cmcd(Outcome::Accepted));
        let got = dispatch(&mut state, &plan, &mut tps, &fetched(1, &r));
        assert_eq!(got.dispatched, Dispatched::Cmcd(Outcome::Duplicate));
        assert_eq!(state.tracked_reports(), 1);
    }

    /// After a restart from a checkpoint: offsets below its `state_offset` are ignored, those
    /// up to `next_offset` rebuild CMCD tracking only (a beacon message there is not applied),
    /// and a CMCD copy of a restored report is then a duplicate.
    #[test]
    fn a_resumed_partition_restores_then_applies() {
        let checkpoint = Checkpoint {
            from_offset: 0,
            next_offset: 12,
            state_offset: 10,
            max_event_time: T0,
            snapshot_offset: 12,
            state: String::new(),
        };
        let plan = resume_plan(Some(&checkpoint), false);
        let mut state = PartitionState::new(WindowConfig::default(), Some(checkpoint));
        let mut tps = Vec::new();
        let r = report(0);
        let beacon = event("v", 0, EventType::ViewStart);
        let ignored = dispatch(&mut state, &plan, &mut tps, &fetched(9, &beacon));
        assert_eq!(ignored.dispatched, Dispatched::Ignored);
        let restored = dispatch(&mut state, &plan, &mut tps, &fetched(10, &r));
        assert_eq!(restored.dispatched, Dispatched::Restored);
        let restored = dispatch(&mut state, &plan, &mut tps, &fetched(11, &beacon));
        assert_eq!(restored.dispatched, Dispatched::Restored);
        assert_eq!(state.views(), 0, "a restored beacon message is not applied");
        let copy = dispatch(&mut state, &plan, &mut tps, &fetched(12, &r));
        assert_eq!(copy.dispatched, Dispatched::Cmcd(Outcome::Duplicate));
        let new = dispatch(&mut state, &plan, &mut tps, &fetched(13, &beacon));
        assert!(matches!(new.dispatched, Dispatched::Events(c) if c.accepted == 1));
    }

    #[test]
    fn replayed_messages_are_not_counted_again() {
        let (state, plan) = fresh();
        let mut state = state.discarding_until(1);
        let mut tps = Vec::new();
        let start = event("v", 0, EventType::ViewStart);
        let replayed = dispatch(&mut state, &plan, &mut tps, &fetched(0, &start));
        assert!(!replayed.counted);
        let bad = dispatch(&mut state, &plan, &mut tps, &fetched(1, b"x"));
        assert!(bad.counted);
    }

    #[test]
    fn trace_contexts_are_kept_once_and_bounded() {
        let (mut state, plan) = fresh();
        let mut tps = Vec::new();
        let ids: Vec<String> = (0..MAX_TRACE_LINKS + 5)
            .map(|i| format!("00-{i:032x}-{i:016x}-01"))
            .collect();
        for (i, tp) in ids.iter().enumerate() {
            let payload = event("v", i as u32, EventType::Heartbeat);
            for copy in 0..2 {
                let m = Fetched {
                    offset: (2 * i + copy) as i64,
                    payload: Some(&payload),
                    traceparent: Some(tp),
                };
                dispatch(&mut state, &plan, &mut tps, &m);
            }
        }
        assert_eq!(tps, ids[..MAX_TRACE_LINKS]);
    }
}
