//! The two formats of a QoE event message on Kafka, and the decoder that reads either.
//!
//! - Version 1 ([`crate::SCHEMA_VERSION`]): one message per event, the view's context copied
//!   into each ([`QoeEvent`]).
//! - Version 2 ([`BEACON_MESSAGE_VERSION`]): one message per accepted beacon, the context
//!   once and the beacon's valid events in order under `events`. Same key (`view_id`), same
//!   order and acknowledgement rule; a consumer reads its events exactly as if they had come
//!   one per message, at the message's offset.
//!
//! Both are self-describing JSON with `v` first. The collector writes the format it is told
//! to; every consumer reads both.

use crate::event::{DecodeError, EventContext, EventFields, EventRef};
use crate::{QoeEvent, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};

/// Version of the message format carrying one beacon's events.
pub const BEACON_MESSAGE_VERSION: u8 = 2;

/// Encodes the events of one context as Kafka message values, serializing the context once
/// per beacon and cloning nothing (the collector's hot path): one message per event
/// ([`MessageEncoder::encode`], byte for byte what [`QoeEvent::encode`] gives for the
/// assembled event), or one message for all of a beacon's events
/// ([`MessageEncoder::encode_beacon`], see the module doc).
#[derive(Debug, Clone)]
pub struct MessageEncoder {
    /// The encoded context without its closing brace: every message begins with it.
    prefix: Vec<u8>,
}

/// The context as [`QoeEvent`] serializes it: `v` first, `custom` left out when empty.
#[derive(Serialize)]
struct ContextWire<'a> {
    v: u8,
    #[serde(flatten)]
    context: &'a EventContext,
}

impl MessageEncoder {
    /// An encoder of one message per event (format version [`SCHEMA_VERSION`]).
    pub fn new(context: &EventContext) -> Self {
        Self::with_version(context, SCHEMA_VERSION)
    }

    /// An encoder of one message per beacon (format version
    /// [`BEACON_MESSAGE_VERSION`]).
    pub fn for_beacon(context: &EventContext) -> Self {
        Self::with_version(context, BEACON_MESSAGE_VERSION)
    }

    fn with_version(context: &EventContext, v: u8) -> Self {
        let wire = ContextWire { v, context };
        // Strings, numbers and string-keyed maps always serialize.
        let mut prefix = serde_json::to_vec(&wire).expect("context serializes");
        prefix.pop(); // the closing '}'
        MessageEncoder { prefix }
    }

    pub fn encode(&self, fields: &EventFields) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 192);
        out.extend_from_slice(&self.prefix);
        let start = out.len();
        serde_json::to_writer(&mut out, fields).expect("event fields serialize");
        // The fields' object opens with '{' (never empty: `seq` is always there); it becomes
        // the comma after the context's last field.
        out[start] = b',';
        out
    }

    /// The beacon's events as messages of the per-beacon format: the context, then
    /// `"events": [fields, ...]`. One message, unless the events do not fit in `max_bytes`:
    /// then as many messages as needed, in order, each with at least one event.
    pub fn encode_beacon(&self, events: &[EventFields], max_bytes: usize) -> Vec<Vec<u8>> {
        let open = |capacity: usize| {
            let mut out = Vec::with_capacity(capacity);
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b",\"events\":[");
            out
        };
        let mut messages = Vec::new();
        let mut out = open(self.prefix.len() + 16 + 160 * events.len());
        let mut scratch = Vec::with_capacity(256);
        let mut in_message = 0;
        for fields in events {
            scratch.clear();
            serde_json::to_writer(&mut scratch, fields).expect("event fields serialize");
            if in_message > 0 && out.len() + 1 + scratch.len() + 2 > max_bytes {
                out.extend_from_slice(b"]}");
                messages.push(std::mem::replace(&mut out, open(max_bytes.min(1 << 16))));
                in_message = 0;
            }
            if in_message > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&scratch);
            in_message += 1;
        }
        out.extend_from_slice(b"]}");
        messages.push(out);
        messages
    }
}

event_measures! {
    declare_context_read
    /// One beacon's events as a consumer reads them, borrowed from the message bytes (`ts` and
    /// `custom` are skipped, as in [`EventRef`]).
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    pub struct BeaconRef<'a> {
        #[serde(borrow)]
        pub events: Vec<FieldsRef<'a>>,
    }
}

event_measures! {
    declare_read
    /// The fields of one event of a [`BeaconRef`] that aggregation reads.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    pub struct FieldsRef<'a> {}
}

impl<'a> BeaconRef<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let beacon: BeaconRef<'a> = serde_json::from_slice(bytes)?;
        if beacon.v != BEACON_MESSAGE_VERSION {
            return Err(DecodeError::Version(beacon.v));
        }
        Ok(beacon)
    }

    /// Event `i` with the beacon's context, borrowing this beacon.
    pub fn event(&self, i: usize) -> Option<EventRef<'_>> {
        let f = self.events.get(i)?;
        Some(view_context!(borrow self, f => EventRef { v: SCHEMA_VERSION }))
    }
}

/// A QoE event message of either format, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageRef<'a> {
    Event(EventRef<'a>),
    Beacon(BeaconRef<'a>),
}

/// The format version a message declares. What the collector writes starts with it, so
/// that is read without parsing; anything else is parsed for `v` first.
fn version(bytes: &[u8]) -> Result<u8, DecodeError> {
    if bytes.starts_with(b"{\"v\":1,") {
        return Ok(SCHEMA_VERSION);
    }
    if bytes.starts_with(b"{\"v\":2,") {
        return Ok(BEACON_MESSAGE_VERSION);
    }
    #[derive(Deserialize)]
    struct Version {
        v: u8,
    }
    Ok(serde_json::from_slice::<Version>(bytes)?.v)
}

impl<'a> MessageRef<'a> {
    /// Decodes either format, as its `v` says.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match version(bytes)? {
            SCHEMA_VERSION => EventRef::decode(bytes).map(MessageRef::Event),
            BEACON_MESSAGE_VERSION => BeaconRef::decode(bytes).map(MessageRef::Beacon),
            v => Err(DecodeError::Version(v)),
        }
    }

    /// How many events the message carries.
    pub fn len(&self) -> usize {
        match self {
            MessageRef::Event(_) => 1,
            MessageRef::Beacon(b) => b.events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each event, in order.
    pub fn for_each_event(&self, mut f: impl FnMut(&EventRef<'_>)) {
        match self {
            MessageRef::Event(e) => f(e),
            MessageRef::Beacon(b) => {
                for i in 0..b.events.len() {
                    if let Some(e) = b.event(i) {
                        f(&e);
                    }
                }
            }
        }
    }
}

/// A beacon message, owned and whole (`ts` and `custom` included): for tests and tools.
#[derive(Debug, Deserialize)]
struct BeaconMessage {
    v: u8,
    #[serde(flatten)]
    context: EventContext,
    events: Vec<EventFields>,
}

/// Every event of a message of either format, owned and whole.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<QoeEvent>, DecodeError> {
    match version(bytes)? {
        SCHEMA_VERSION => Ok(vec![QoeEvent::decode(bytes)?]),
        BEACON_MESSAGE_VERSION => {
            let b: BeaconMessage = serde_json::from_slice(bytes)?;
            if b.v != BEACON_MESSAGE_VERSION {
                return Err(DecodeError::Version(b.v));
            }
            Ok(b.events
                .into_iter()
                .map(|f| QoeEvent::from_parts(&b.context, f))
                .collect())
        }
        v => Err(DecodeError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::{MessageEncoder, StreamType};
    use std::collections::BTreeMap;

    fn context() -> EventContext {
        let mut custom = BTreeMap::new();
        custom.insert("tier".to_owned(), "gold \"x\"".to_owned());
        EventContext {
            view_id: "view-1".into(),
            stream_id: "line\nbreak".into(),
            stream_type: StreamType::Live,
            cdn: "cdn-a".into(),
            platform: "web".into(),
            player: "hls.js".into(),
            protocol: "hls".into(),
            region: "eu-west".into(),
            custom,
        }
    }

    fn fields() -> Vec<EventFields> {
        let e0 = QoeEvent::blank("x", 0, EventType::ViewStart, 1_000);
        let mut e1 = QoeEvent::blank("x", 1, EventType::Error, 2_000);
        (e1.code, e1.fatal, e1.playing_ms) = (Some("E\"2\"".into()), Some(true), Some(7));
        [e0, e1]
            .into_iter()
            .map(|e| {
                let (_, mut f) = e.parts();
                (f.ts, f.received_at) = (f.ts - 3, f.received_at + 5);
                f
            })
            .collect()
    }

    #[test]
    fn a_beacon_message_carries_the_same_events_as_one_message_each() {
        let (context, fields) = (context(), fields());
        let per_event: Vec<QoeEvent> = fields
            .iter()
            .map(|f| QoeEvent::from_parts(&context, f.clone()))
            .collect();
        let mut messages = MessageEncoder::for_beacon(&context).encode_beacon(&fields, 1 << 20);
        assert_eq!(messages.len(), 1);
        let bytes = messages.pop().unwrap();
        assert_eq!(decode_events(&bytes).unwrap(), per_event);

        let message = MessageRef::decode(&bytes).unwrap();
        assert_eq!(message.len(), 2);
        // Compared through Debug: the closure's events borrow the message only for the call.
        let mut seen = Vec::new();
        message.for_each_event(|e| seen.push(format!("{e:?}")));
        let expected: Vec<_> = per_event
            .iter()
            .map(|e| format!("{:?}", e.borrowed()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_beacon_too_big_for_one_message_is_split_in_order() {
        let context = context();
        let fields: Vec<EventFields> = (0..50)
            .map(|seq| {
                QoeEvent::blank("x", seq, EventType::Heartbeat, 1_000)
                    .parts()
                    .1
            })
            .collect();
        let messages = MessageEncoder::for_beacon(&context).encode_beacon(&fields, 1_000);
        assert!(messages.len() >= 4, "{} messages", messages.len());
        assert!(messages.iter().all(|m| m.len() <= 1_000));
        let seqs: Vec<u32> = messages
            .iter()
            .flat_map(|m| decode_events(m).unwrap())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        // A single event bigger than the bound still goes, alone.
        let one = MessageEncoder::for_beacon(&context).encode_beacon(&fields[..2], 10);
        assert_eq!(one.len(), 2);
    }

    #[test]
    fn either_format_decodes_and_unknown_versions_are_refused() {
        let (context, fields) = (context(), fields());
        let single = MessageEncoder::new(&context).encode(&fields[0]);
        assert!(matches!(
            MessageRef::decode(&single).unwrap(),
            MessageRef::Event(_)
        ));
        assert_eq!(decode_events(&single).unwrap().len(), 1);
        // `v` not first: still read by the version it declares.
        let reordered = br#"{"view_id":"a","v":2,"stream_id":"s","stream_type":"live","cdn":"c","platform":"p","player":"x","protocol":"h","region":"r","events":[]}"#;
        assert!(matches!(
            MessageRef::decode(reordered).unwrap(),
            MessageRef::Beacon(ref b) if b.events.is_empty()
        ));
        let future = br#"{"v":3,"view_id":"a"}"#;
        assert!(matches!(
            MessageRef::decode(future),
            Err(DecodeError::Version(3))
        ));
        assert!(MessageRef::decode(b"{\"v\":2,\"events\":[").is_err());
        assert!(decode_events(b"[]").is_err());
        assert!(matches!(
            decode_events(future),
            Err(DecodeError::Version(3))
        ));
    }
}
