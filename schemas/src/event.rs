//! The event as it travels through Kafka, with its view's context, so that no later stage
//! needs per-view state to know its dimensions.
//!
//! The JSON encoding of [`QoeEvent`] is a message value of format 1, one message per event
//! (key: `view_id`); the `message` module's encoder writes it without cloning, and format 2,
//! one message per beacon.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the Kafka message format, also sent as the `qoe-schema` message header.
pub const SCHEMA_VERSION: u8 = 1;

/// Kind of player event (beacon protocol v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ViewStart,
    FirstFrame,
    Heartbeat,
    StallStart,
    StallEnd,
    BitrateChange,
    Pause,
    Resume,
    Seek,
    Error,
    ViewEnd,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::ViewStart,
        EventType::FirstFrame,
        EventType::Heartbeat,
        EventType::StallStart,
        EventType::StallEnd,
        EventType::BitrateChange,
        EventType::Pause,
        EventType::Resume,
        EventType::Seek,
        EventType::Error,
        EventType::ViewEnd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ViewStart => "view_start",
            EventType::FirstFrame => "first_frame",
            EventType::Heartbeat => "heartbeat",
            EventType::StallStart => "stall_start",
            EventType::StallEnd => "stall_end",
            EventType::BitrateChange => "bitrate_change",
            EventType::Pause => "pause",
            EventType::Resume => "resume",
            EventType::Seek => "seek",
            EventType::Error => "error",
            EventType::ViewEnd => "view_end",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamType {
    Live,
    Vod,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Live => "live",
            StreamType::Vod => "vod",
        }
    }
}

/// Why a view ended (`view_end.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Exit,
    Error,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Exit => "exit",
            EndReason::Error => "error",
        }
    }
}

view_context! {
    declare_event
    /// One validated, enriched player event: the Kafka message value.
    ///
    /// Times are milliseconds since the Unix epoch, UTC. `event_time` is the client's `ts`
    /// corrected for clock skew; it is the time every window is computed on.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct QoeEvent {
        /// Message format version ([`SCHEMA_VERSION`]).
        pub v: u8,
    }
}

view_context! {
    declare
    /// What every event of one view shares: the view's context with the region the collector
    /// resolved. The collector validates it once per beacon and copies it into each message,
    /// serialized as in a [`QoeEvent`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct EventContext {}
}

event_measures! {
    declare_event
    /// The player's event itself: every field of a [`QoeEvent`] but the context, serialized in
    /// the same order and with the same names.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct EventFields {}
}

event_measures! {
    declare_read_in_context
    /// The fields of a [`QoeEvent`] that aggregation reads, borrowed from the message bytes.
    ///
    /// Decoding one allocates nothing unless a string contains JSON escapes (then that string
    /// is owned): this is the hot path of every consumer. `ts` and `custom` are not read (they
    /// are skipped while parsing). A test keeps it in step with [`QoeEvent`].
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    pub struct EventRef<'a> {}
}

impl<'a> EventRef<'a> {
    /// Decodes a Kafka message value without copying its strings, refusing versions this
    /// build does not understand.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let event: EventRef<'a> = serde_json::from_slice(bytes)?;
        if event.v != SCHEMA_VERSION {
            return Err(DecodeError::Version(event.v));
        }
        Ok(event)
    }
}

impl QoeEvent {
    /// The same event as an [`EventRef`] borrowing this one's strings.
    pub fn borrowed(&self) -> EventRef<'_> {
        view_context!(borrow self, self => EventRef { v: self.v })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not a QoE event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported message format version {0} (this build reads {SCHEMA_VERSION})")]
    Version(u8),
}

impl QoeEvent {
    /// Decodes a Kafka message value, refusing versions this build does not understand.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: QoeEvent = serde_json::from_slice(bytes)?;
        if event.v != SCHEMA_VERSION {
            return Err(DecodeError::Version(event.v));
        }
        Ok(event)
    }

    /// The event a context and an event's own fields make together.
    pub fn from_parts(context: &EventContext, fields: EventFields) -> Self {
        view_context!(clone context => event_measures!(copy QoeEvent {
            v: SCHEMA_VERSION,
            seq: fields.seq,
            kind: fields.kind,
            ts: fields.ts,
            event_time: fields.event_time,
            received_at: fields.received_at,
            code: fields.code,
            reason: fields.reason,
        } from fields))
    }

    /// The event's context and its own fields: what [`QoeEvent::from_parts`] puts together.
    pub fn parts(&self) -> (EventContext, EventFields) {
        let context = view_context!(clone self => EventContext {});
        let fields = event_measures!(copy EventFields {
            seq: self.seq,
            kind: self.kind,
            ts: self.ts,
            event_time: self.event_time,
            received_at: self.received_at,
            code: self.code.clone(),
            reason: self.reason,
        } from self);
        (context, fields)
    }

    /// An event with the given identity and time and no optional fields, in a fixed context
    /// (`region` "r", `cdn` "c", `platform` "p", `stream_id` "s", live): a starting point
    /// for tests and benchmarks, which then set what they need.
    pub fn blank(view_id: &str, seq: u32, kind: EventType, event_time: i64) -> Self {
        event_measures!(none QoeEvent {
            v: SCHEMA_VERSION,
            view_id: view_id.to_owned(),
            stream_id: "s".into(),
            stream_type: StreamType::Live,
            cdn: "c".into(),
            platform: "p".into(),
            player: "x".into(),
            protocol: "hls".into(),
            region: "r".into(),
            custom: BTreeMap::new(),
            seq,
            kind,
            ts: event_time,
            event_time,
            received_at: event_time,
            code: None,
            reason: None,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain struct of strings, numbers and maps with string keys cannot fail.
        serde_json::to_vec(self).expect("QoeEvent serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageEncoder;
    use std::borrow::Cow;

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("nope"), None);
    }

    #[test]
    fn decode_rejects_unknown_version() {
        let mut e = sample();
        e.v = 9;
        let bytes = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            QoeEvent::decode(&bytes),
            Err(DecodeError::Version(9))
        ));
        assert!(QoeEvent::decode(b"{not json").is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = sample();
        assert_eq!(QoeEvent::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn borrowed_decode_matches_the_owned_event() {
        let mut e = sample();
        e.custom.insert("k".into(), "v".into());
        let bytes = e.encode();
        let r = EventRef::decode(&bytes).unwrap();
        assert_eq!(r, e.borrowed());
        assert!(
            matches!(r.view_id, Cow::Borrowed(_)),
            "plain strings are not copied"
        );

        let mut err = QoeEvent::blank("v\"quoted\"", 1, EventType::Error, 5);
        (err.code, err.fatal, err.reason) = (Some("E1".into()), Some(true), Some(EndReason::Error));
        err.startup_ms = Some(3);
        let bytes = err.encode();
        let r = EventRef::decode(&bytes).unwrap();
        assert_eq!(r, err.borrowed(), "escaped strings decode owned and equal");

        let mut old = sample();
        old.v = 9;
        assert!(matches!(
            EventRef::decode(&old.encode()),
            Err(DecodeError::Version(9))
        ));
        assert!(EventRef::decode(b"{\"v\":1}").is_err());
    }

    #[test]
    fn message_encoder_writes_what_the_owned_event_encodes() {
        let plain = EventContext {
            view_id: "v1".into(),
            stream_id: "ch-1".into(),
            stream_type: StreamType::Vod,
            cdn: "cdn-a".into(),
            platform: "web".into(),
            player: "hls.js".into(),
            protocol: "hls".into(),
            region: "eu-west".into(),
            custom: BTreeMap::new(),
        };
        let mut custom = plain.clone();
        custom.custom.insert("exp".into(), "b".into());
        custom
            .custom
            .insert("tier".into(), "premium \"gold\"".into());
        let mut escaped = plain.clone();
        escaped.stream_id = "line\nbreak \u{e9}\u{1f600}".into();

        let minimal = EventFields {
            seq: 0,
            kind: EventType::ViewStart,
            ts: -5,
            event_time: 1_763_721_600_000,
            received_at: 1_763_721_600_100,
            started: None,
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
        };
        let full = EventFields {
            seq: u32::MAX,
            kind: EventType::ViewEnd,
            started: Some(false),
            playing_ms: Some(1),
            stall_ms: Some(2),
            bitrate_kbps: Some(3),
            prev_bitrate_kbps: Some(4),
            startup_ms: Some(5),
            latency_ms: Some(6),
            dropped_frames: Some(7),
            code: Some("E\"1\"".into()),
            fatal: Some(true),
            reason: Some(EndReason::Exit),
            ..minimal.clone()
        };
        for context in [&plain, &custom, &escaped] {
            let encoder = MessageEncoder::new(context);
            for fields in [&minimal, &full] {
                let owned = QoeEvent::from_parts(context, fields.clone());
                let bytes = encoder.encode(fields);
                assert_eq!(
                    String::from_utf8(bytes.clone()).unwrap(),
                    String::from_utf8(owned.encode()).unwrap()
                );
                assert_eq!(QoeEvent::decode(&bytes).unwrap(), owned);
            }
        }
    }

    pub(crate) fn sample() -> QoeEvent {
        let mut e = QoeEvent::blank("v1", 3, EventType::Heartbeat, 2);
        (e.platform, e.player, e.region) = ("web".into(), "p".into(), "eu".into());
        (e.ts, e.received_at) = (1, 3);
        (e.started, e.playing_ms, e.stall_ms, e.bitrate_kbps) =
            (Some(true), Some(10), Some(0), Some(2500));
        e
    }
}
