//! Property-based fuzzing of the beacon parser and validator (`ingest::process`): whatever the
//! body, it never panics, and every reason it gives is short (an answer never echoes a large
//! input back). Runs briefly in `make test` (256 cases per property); for a longer run:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p qoe-collector --test fuzz_ingest
//! ```

use proptest::prelude::*;
use qoe_collector::ingest::{self, MAX_REASON_BYTES};
use qoe_schemas::Limits;
use serde_json::{json, Map, Value};

const NOW: i64 = 1_763_721_600_000;

fn check(body: &[u8]) {
    let limits = Limits::default();
    match ingest::process(body, NOW, None, &limits) {
        Ok(accepted) => {
            assert!(accepted.events.len() + accepted.rejected.len() <= limits.max_events);
            for r in &accepted.rejected {
                assert!(
                    r.reason.len() <= MAX_REASON_BYTES,
                    "reason of {} bytes",
                    r.reason.len()
                );
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.len() <= MAX_REASON_BYTES + 64,
                "error of {} bytes",
                text.len()
            );
        }
    }
}

/// Any JSON value, a few levels deep, with long and odd strings now and then.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        (1usize..5000).prop_map(|n| Value::String("9".repeat(n))),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const EVENT_KEYS: &[&str] = &[
    "seq",
    "type",
    "ts",
    "started",
    "playing_ms",
    "stall_ms",
    "bitrate_kbps",
    "prev_bitrate_kbps",
    "startup_ms",
    "latency_ms",
    "dropped_frames",
    "code",
    "fatal",
    "reason",
];
const TYPES: &[&str] = &[
    "view_start",
    "first_frame",
    "heartbeat",
    "stall_start",
    "stall_end",
    "bitrate_change",
    "pause",
    "resume",
    "seek",
    "error",
    "view_end",
    "warp",
];

/// Envelopes close to valid ones: the right keys, with values that are right or anything.
fn near_envelope() -> impl Strategy<Value = Value> {
    let value_or_junk =
        |good: BoxedStrategy<Value>| prop_oneof![4 => good, 1 => any_json()].boxed();
    let event = (
        prop::sample::subsequence(EVENT_KEYS, 0..EVENT_KEYS.len()),
        prop::sample::select(TYPES),
        any::<u32>(),
        -10_000_000i64..10_000_000,
        any_json(),
    )
        .prop_map(|(keys, kind, n, dt, junk)| {
            let mut e = Map::new();
            for k in keys {
                let v = match k {
                    "type" => json!(kind),
                    "ts" => json!(NOW + dt),
                    "code" | "reason" => json!(kind),
                    "started" | "fatal" => json!(n % 2 == 0),
                    _ if n % 7 == 0 => junk.clone(),
                    _ => json!(n % 100_000),
                };
                e.insert(k.to_owned(), v);
            }
            Value::Object(e)
        });
    (
        value_or_junk(Just(json!(NOW)).boxed()),
        value_or_junk("[A-Za-z0-9_.:-]{0,70}".prop_map(Value::String).boxed()),
        value_or_junk(
            prop::sample::select(&["live", "vod", "LIVE"][..])
                .prop_map(|s| json!(s))
                .boxed(),
        ),
        value_or_junk(".{0,140}".prop_map(Value::String).boxed()),
        prop::collection::vec(event, 0..40),
    )
        .prop_map(|(sent_at, view_id, stream_type, dim, events)| {
            json!({
                "sent_at": sent_at,
                "view": {"view_id": view_id, "stream_id": dim, "stream_type": stream_type,
                         "cdn": dim, "platform": "web", "custom": {"k": dim}},
                "events": events,
            })
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in any_json()) {
        check(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn near_valid_envelopes_never_panic_and_reasons_stay_short(v in near_envelope()) {
        check(&serde_json::to_vec(&v).unwrap());
    }
}
