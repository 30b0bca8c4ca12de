//! The beacon protocol v1 request body for one batch of a view's events.
//!
//! `sent_at` is left out of originals on purpose: the simulated clocks are exact, so without
//! it the collector takes each `ts` as the event time, and the ground truth knows every
//! event's window exactly (with it, the network delay of each request would shift event times
//! by a few milliseconds that no client can know). Late re-sends carry their original's
//! `sent_at`, which is what moves their events (see `simulation.rs`, `resend_shift`).

use crate::population::ViewContext;
use qoe_schemas::{QoeEvent, RawEvent};
use serde::Serialize;
use std::borrow::Cow;

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<i64>,
    view: View<'a>,
    events: Vec<RawEvent<'a>>,
}

#[derive(Serialize)]
struct View<'a> {
    view_id: &'a str,
    stream_id: &'a str,
    stream_type: &'a str,
    cdn: &'a str,
    platform: &'a str,
    player: &'a str,
    protocol: &'a str,
    region: &'a str,
}

/// The JSON body of a beacon carrying `events` of the view `ctx`.
pub fn body(ctx: &ViewContext, events: &[QoeEvent], sent_at: Option<i64>) -> Vec<u8> {
    let envelope = Envelope {
        sent_at,
        view: View {
            view_id: &ctx.view_id,
            stream_id: &ctx.stream_id,
            stream_type: ctx.stream_type.as_str(),
            cdn: ctx.cdn,
            platform: ctx.platform,
            player: ctx.player,
            protocol: ctx.protocol,
            region: ctx.region,
        },
        events: events
            .iter()
            .map(|e| {
                qoe_schemas::event_measures!(copy RawEvent {
                    seq: e.seq,
                    kind: Cow::Borrowed(e.kind.as_str()),
                    ts: e.ts,
                    code: e.code.as_deref().map(Cow::Borrowed),
                    reason: e.reason.map(|r| Cow::Borrowed(r.as_str())),
                } from e)
            })
            .collect(),
    };
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(&envelope).expect("beacon serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::player::{Conditions, Player};
    use crate::population::{baseline_quality, draw_context};
    use qoe_schemas::beacon::Envelope as Parsed;
    use qoe_schemas::validate::{validate_envelope, validate_event, Arrival, Limits};
    use qoe_schemas::QoeEvent;
    use rand::SeedableRng;

    /// Every event a view produces passes the collector's own validation unchanged.
    #[test]
    fn bodies_pass_the_collectors_validation_and_round_trip() {
        let cond = Conditions {
            quality: baseline_quality("ap-south", "cdn-c"),
            start_failure_floor: 0.1,
            start_failure_extra: 0.0,
            business_refusals: 0.0,
        };
        let limits = Limits::default();
        let mut checked = 0;
        for seed in 0..100 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let ctx = draw_context(&mut rng, "b", seed, false);
            let t0 = 1_763_721_600_000;
            let mut p = Player::new(ctx.clone(), seed, t0, &cond, 15_000);
            let mut t = t0;
            while !p.ended() {
                if let Some(events) = p.tick(t, t + 1000, &cond) {
                    let bytes = body(&ctx, &events, None);
                    let env = Parsed::parse(&bytes).unwrap();
                    assert!(env.sent_at.is_none());
                    let view = validate_envelope(&env, &limits).unwrap();
                    let context = view.into_context(ctx.region.to_owned());
                    let arrival = Arrival {
                        received_at: t + 1000,
                        sent_at: None,
                    };
                    for (raw, sent) in env.events.iter().zip(&events) {
                        let fields = validate_event(raw, &arrival, &limits).unwrap();
                        let got = QoeEvent::from_parts(&context, fields);
                        let mut want = sent.clone();
                        want.received_at = t + 1000;
                        assert_eq!(got, want);
                        checked += 1;
                    }
                }
                t += 1000;
            }
        }
        assert!(checked > 1000);
    }
}
