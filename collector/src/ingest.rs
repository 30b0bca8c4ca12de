//! The pure part of handling a beacon: media type check, envelope parsing, per-event
//! validation and enrichment. No I/O here, so every rule is unit-tested directly.

use qoe_schemas::validate::{validate_envelope, validate_event, Arrival, EnvelopeError};
use qoe_schemas::{Envelope, EventContext, EventFields, Limits};
use serde::Serialize;

/// Why a request cannot be used at all; maps to an HTTP status.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("unsupported content type {0:?}: send application/json or text/plain")]
    UnsupportedMediaType(String),
    #[error("body is not a beacon: {0}")]
    BadEnvelope(String),
    #[error("{0}")]
    TooManyEvents(String),
}

/// One rejected event, reported back to the client by its index in `events`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectedEvent {
    pub index: usize,
    pub reason: String,
    #[serde(skip)]
    pub class: &'static str,
}

/// The result of a usable beacon: the context shared by its events, and each accepted event's
/// own fields (a message is the two together).
#[derive(Debug)]
pub struct Accepted {
    pub context: EventContext,
    pub events: Vec<EventFields>,
    pub rejected: Vec<RejectedEvent>,
}

/// Longest reason in an error body or a rejected event's entry.
pub const MAX_REASON_BYTES: usize = 256;

/// `s` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn truncate_reason(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `application/json` and `text/plain` (what `navigator.sendBeacon` sends for strings), with
/// any parameters; a missing type is treated as JSON.
pub fn check_content_type(value: Option<&str>) -> Result<(), IngestError> {
    let Some(value) = value else { return Ok(()) };
    match media_type_essence(value).as_str() {
        "application/json" | "text/plain" | "" => Ok(()),
        _ => Err(IngestError::UnsupportedMediaType(
            value.chars().take(64).collect(),
        )),
    }
}

/// A Content-Type without its parameters, lower-cased: `Text/Plain; charset=utf-8` is
/// `text/plain`.
pub fn media_type_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Where the collector's own region knowledge comes from; the envelope's claim is the fallback.
pub fn resolve_region(server_side: Option<&str>, claimed: Option<&str>) -> String {
    server_side
        .filter(|r| !r.is_empty())
        .or(claimed)
        .unwrap_or("unknown")
        .to_owned()
}

/// Parses and validates a decompressed body received at `received_at` (ms since the epoch).
pub fn process(
    body: &[u8],
    received_at: i64,
    server_region: Option<&str>,
    limits: &Limits,
) -> Result<Accepted, IngestError> {
    // Parser errors can quote the input (a 700 KB string in a field of the wrong type): cut.
    let bounded = |e: String| truncate_reason(&e, MAX_REASON_BYTES - 32);
    let envelope =
        Envelope::parse(body).map_err(|e| IngestError::BadEnvelope(bounded(e.to_string())))?;
    let view = validate_envelope(&envelope, limits).map_err(|e| match e {
        EnvelopeError::TooManyEvents { .. } => IngestError::TooManyEvents(bounded(e.to_string())),
        other => IngestError::BadEnvelope(bounded(other.to_string())),
    })?;
    let region = resolve_region(server_region, view.claimed_region.as_deref());
    let context = view.into_context(region);
    let arrival = Arrival {
        received_at,
        sent_at: envelope.sent_at,
    };
    let mut events = Vec::with_capacity(envelope.events.len());
    let mut rejected = Vec::new();
    for (index, raw) in envelope.events.iter().enumerate() {
        match validate_event(raw, &arrival, limits) {
            Ok(event) => events.push(event),
            Err(r) => rejected.push(RejectedEvent {
                index,
                reason: truncate_reason(&r.detail, MAX_REASON_BYTES),
                class: r.reason.as_str(),
            }),
        }
    }
    Ok(Accepted {
        context,
        events,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_721_600_000;

    fn beacon(region: &str, events: &str) -> String {
        format!(
            r#"{{"sent_at":{NOW},"view":{{"view_id":"v1","stream_id":"s","stream_type":"live","cdn":"c","platform":"web"{region}}},"events":[{events}]}}"#
        )
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("text/plain;charset=UTF-8")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        assert!(matches!(
            check_content_type(Some("application/x-www-form-urlencoded")),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn region_precedence() {
        assert_eq!(resolve_region(Some("edge"), Some("claimed")), "edge");
        assert_eq!(resolve_region(None, Some("claimed")), "claimed");
        assert_eq!(resolve_region(Some(""), None), "unknown");
    }

    #[test]
    fn partial_batches_keep_the_valid_events() {
        let body = beacon(
            r#","region":"eu-west""#,
            &format!(
                r#"{{"seq":0,"type":"view_start","ts":{NOW}}},{{"seq":1,"type":"bogus","ts":{NOW}}},{{"seq":2,"type":"heartbeat","ts":{NOW},"playing_ms":100}}"#
            ),
        );
        let out = process(body.as_bytes(), NOW + 50, None, &Limits::default()).unwrap();
        assert_eq!(out.context.view_id, "v1");
        assert_eq!(
            out.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(out.context.region, "eu-west");
        assert_eq!(out.events[0].event_time, NOW + 50);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, 1);
        assert_eq!(out.rejected[0].class, "unknown_type");
    }

    #[test]
    fn unusable_envelopes() {
        let limits = Limits::default();
        assert!(matches!(
            process(b"{", NOW, None, &limits),
            Err(IngestError::BadEnvelope(_))
        ));
        assert!(matches!(
            process(beacon("", "").as_bytes(), NOW, None, &limits),
            Err(IngestError::BadEnvelope(_))
        ));
        let many = vec![r#"{"seq":0,"type":"pause","ts":0}"#; 1001].join(",");
        assert!(matches!(
            process(beacon("", &many).as_bytes(), NOW, None, &limits),
            Err(IngestError::TooManyEvents(_))
        ));
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_reason("short", 256), "short");
        let long = "é".repeat(500);
        let cut = truncate_reason(&long, 256);
        assert!(cut.len() <= 256 && cut.ends_with("..."), "{}", cut.len());
    }
}
