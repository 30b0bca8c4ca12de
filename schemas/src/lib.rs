//! The shared event model of the QoE pipeline.
//!
//! Everything that more than one process must agree on lives here, and nowhere else:
//!
//! - `measures`: the optional measurements of an event, declared once ([`event_measures!`]).
//! - [`view_context`]: the view's context every event carries, declared once
//!   ([`view_context!`]).
//! - [`beacon`]: the wire format players post (beacon protocol v1), parsed leniently
//!   (unknown fields are ignored) but bounded.
//! - [`validate`]: the per-event rules, clock-skew correction and age checks that turn a
//!   beacon into publishable events (one [`event::EventContext`] per beacon, the
//!   [`event::EventFields`] of each event), with a reason for every rejection.
//! - [`event`]: the self-describing event the collector publishes to Kafka and the
//!   aggregator consumes.
//! - [`message`]: the two formats of an event message on Kafka (one per event, one per
//!   beacon): [`message::MessageEncoder`], which writes them, and [`message::MessageRef`],
//!   which reads either.
//! - [`cmcd`]: CMCD v2 event-mode reports: parsing one line of a `POST /v1/cmcd` body, and
//!   the Kafka message that carries a report.
//! - [`cdn_log`]: CMCD v1 request mode from CDN and origin logs: one line of a `POST
//!   /v1/cdn-logs` body (JSON lines, CloudFront real-time logs) parsed into a request, and the
//!   Kafka message that carries it.
//! - [`score`]: the experience score (0-100) from a view's or a slice's additive totals.
//! - [`metrics`]: the metric catalogue, the one definition of every windowed metric (its
//!   columns, roll-up, unit and doc) from which the window row and `metrics.json` are made.
//! - [`errors`]: which error codes are business errors, and the bound on stored codes.
//! - [`migrations`]: the ClickHouse schema, as versioned SQL files embedded at build time;
//!   [`cluster`] rewrites them for a replicated, sharded cluster; [`window_sql`] generates the
//!   window tables' SQL, and a new metric's migration, from the catalogue.
//!
//! This crate does no I/O, so all of it is unit-testable and benchmarkable without servers.

#[macro_use]
mod measures;
#[macro_use]
pub mod view_context;

pub mod beacon;
pub mod cdn_log;
pub mod cluster;
pub mod cmcd;
pub mod errors;
pub mod event;
pub mod message;
pub mod metrics;
pub mod migrations;
pub mod score;
pub mod validate;
pub mod window_sql;

pub use beacon::{Envelope, RawEvent, ViewContext};
pub use event::{
    EndReason, EventContext, EventFields, EventRef, EventType, QoeEvent, StreamType, SCHEMA_VERSION,
};
pub use message::{MessageEncoder, MessageRef, BEACON_MESSAGE_VERSION};
pub use validate::{Limits, Rejection};

/// The JSON Schema of beacon protocol v1, as published to player developers.
pub const BEACON_JSON_SCHEMA: &str = include_str!("../beacon.v1.schema.json");

/// FNV-1a, 64 bits: a stable hash of bytes (migration checksums, request ids of log lines).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
