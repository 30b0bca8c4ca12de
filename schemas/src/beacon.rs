//! Beacon protocol v1: the JSON envelope players post to `POST /v1/beacons`.
//!
//! Parsing is two-staged on purpose. The envelope (its `sent_at` and `view`) must parse, or
//! the whole request is unusable; each entry of `events` is kept as raw JSON and parsed on
//! its own, so that one bad event is rejected with a reason while its siblings go through.
//! Unknown fields are ignored everywhere (forward compatibility).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The request body. Borrows the raw events from the input buffer.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// Client clock when the beacon was sent (ms since the epoch); enables skew correction.
    #[serde(default)]
    pub sent_at: Option<i64>,
    pub view: ViewContext,
    #[serde(borrow)]
    pub events: Vec<&'a RawValue>,
}

/// The view's context, sent once per request and copied into every published event.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewContext {
    pub view_id: String,
    pub stream_id: String,
    pub stream_type: String,
    pub cdn: String,
    pub platform: String,
    #[serde(default)]
    pub player: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub custom: Option<BTreeMap<String, String>>,
}

event_measures! {
    declare
    /// One event of a beacon as it travels on the wire, before validation: what the collector
    /// reads, and what clients (the simulator, the load generator) write.
    ///
    /// `type` is kept as a string so that an unknown type yields a precise rejection reason.
    /// Strings borrow from the request body unless they contain JSON escapes.
    #[derive(Debug, Clone, Deserialize, Serialize)]
    pub struct RawEvent<'a> {
        pub seq: u32,
        #[serde(rename = "type", borrow)]
        pub kind: Cow<'a, str>,
        pub ts: i64,
    } {
        #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
        pub code: Option<Cow<'a, str>>,
        #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
        pub reason: Option<Cow<'a, str>>,
    }
}

impl<'a> RawEvent<'a> {
    /// An event with only the fields every type has; set the others as the type requires.
    pub fn new(seq: u32, kind: &'a str, ts: i64) -> Self {
        event_measures!(none RawEvent {
            seq,
            kind: Cow::Borrowed(kind),
            ts,
            code: None,
            reason: None,
        })
    }
}

impl<'a> Envelope<'a> {
    /// Parses a request body. The error text is safe to return to the client (callers bound
    /// its length). Only a JSON object is an envelope: serde would also take the struct from a
    /// JSON array of its fields in order, which the protocol does not allow.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(serde::de::Error::custom(
                "the envelope must be a JSON object",
            ));
        }
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::Envelope;

    #[test]
    fn only_an_object_is_an_envelope() {
        let array = br#"[1763721600000, {"view_id": "v"}, []]"#;
        let err = Envelope::parse(array).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("JSON object"), "{err}");
        assert!(Envelope::parse(b"  \n\"x\"").is_err());
    }
}
