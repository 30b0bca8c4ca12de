//! Validation and enrichment rules of beacon protocol v1.
//!
//! Turns a parsed [`Envelope`] into publishable events: one [`EventContext`] per beacon and
//! the [`EventFields`] of each event. Envelope-level problems make
//! the whole request unusable ([`EnvelopeError`], HTTP 400/413); event-level problems reject
//! only that event ([`Rejection`], reported back by index). Every string and count is bounded
//! here, so nothing a client sends can grow the pipeline's memory or its ClickHouse keys
//! without limit.

use crate::beacon::{Envelope, RawEvent, ViewContext};
use crate::event::{EndReason, EventContext, EventFields, EventType, StreamType};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Bounds applied to every beacon. Defaults are what a production collector would use.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_events: usize,
    /// Dimension strings (stream_id, cdn, platform, player, protocol, region).
    pub max_dimension_len: usize,
    pub max_custom_keys: usize,
    pub max_custom_key_len: usize,
    pub max_custom_value_len: usize,
    pub max_code_len: usize,
    /// Events whose corrected time is further ahead of the server clock are rejected.
    pub max_future_ms: i64,
    /// Events whose corrected time is older than this are rejected.
    pub max_age_ms: i64,
    /// Upper bound of any per-interval duration (playing_ms, stall_ms, startup_ms, latency_ms).
    pub max_duration_ms: u32,
    pub max_bitrate_kbps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 1000,
            max_dimension_len: 128,
            max_custom_keys: 16,
            max_custom_key_len: 64,
            max_custom_value_len: 256,
            max_code_len: 128,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 60 * 60 * 1000,
            max_duration_ms: 24 * 60 * 60 * 1000,
            max_bitrate_kbps: 1_000_000,
        }
    }
}

/// Why a whole request is unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    #[error("no events")]
    NoEvents,
    #[error("too many events: {count} (limit {limit})")]
    TooManyEvents { count: usize, limit: usize },
    #[error("invalid view context: {0}")]
    View(String),
}

/// Machine-readable rejection class (also a Prometheus label, so the set is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Malformed,
    UnknownType,
    MissingField,
    OutOfRange,
    TooLong,
    InFuture,
    TooOld,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::TooLong => "too_long",
            RejectReason::InFuture => "in_future",
            RejectReason::TooOld => "too_old",
        }
    }
}

/// Why one event was rejected; `detail` is human-readable and safe to return to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// A view context that passed validation, ready to be copied into events once the collector
/// has resolved its region.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidView {
    /// Every field but `region`, which is empty until [`ValidView::into_context`].
    context: EventContext,
    /// The region the envelope claims, if any; the collector decides what to trust.
    pub claimed_region: Option<String>,
}

impl ValidView {
    /// The context copied into every event of the beacon, with the region the collector
    /// resolved (which may or may not be the claimed one).
    pub fn into_context(self, region: String) -> EventContext {
        EventContext {
            region,
            ..self.context
        }
    }
}

/// `view_id`: 1-64 characters of `[A-Za-z0-9_.:-]`.
pub fn is_valid_view_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether `s` has more than `max` characters. String limits count characters, as the JSON
/// Schema's `maxLength` does; a character is at most 4 bytes, so memory stays bounded.
pub fn longer_than(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

/// Control characters, and the Unicode bidirectional formatting characters that can make a
/// value display as something else in a dashboard (U+061C, U+200E/F, U+202A-E, U+2066-9).
pub fn has_unsafe_chars(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

/// The one normal form of a dimension value, whatever its source (envelope, edge header,
/// GeoIP): trimmed and lower-case, so `EU-West`, `eu-west ` and `eu-west` are one slice.
pub fn normalize_dimension(value: &str) -> String {
    let trimmed = value.trim();
    if trimmed
        .bytes()
        .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
    {
        trimmed.to_lowercase()
    } else {
        trimmed.to_owned()
    }
}

fn dimension(name: &str, value: &str, limits: &Limits) -> Result<String, EnvelopeError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(EnvelopeError::View(format!("view.{name} is empty")));
    }
    if longer_than(value, limits.max_dimension_len) {
        return Err(EnvelopeError::View(format!(
            "view.{name} is longer than {} characters",
            limits.max_dimension_len
        )));
    }
    if has_unsafe_chars(value) {
        return Err(EnvelopeError::View(format!(
            "view.{name} contains control or bidirectional formatting characters"
        )));
    }
    Ok(normalize_dimension(value))
}

/// Validates the envelope-level parts of a beacon.
pub fn validate_envelope(env: &Envelope<'_>, limits: &Limits) -> Result<ValidView, EnvelopeError> {
    if env.events.is_empty() {
        return Err(EnvelopeError::NoEvents);
    }
    if env.events.len() > limits.max_events {
        return Err(EnvelopeError::TooManyEvents {
            count: env.events.len(),
            limit: limits.max_events,
        });
    }
    validate_view(&env.view, limits)
}

fn validate_view(view: &ViewContext, limits: &Limits) -> Result<ValidView, EnvelopeError> {
    if !is_valid_view_id(&view.view_id) {
        return Err(EnvelopeError::View(
            "view.view_id must be 1-64 characters of [A-Za-z0-9_.:-]".into(),
        ));
    }
    let stream_type = match view.stream_type.as_str() {
        "live" => StreamType::Live,
        "vod" => StreamType::Vod,
        other => {
            return Err(EnvelopeError::View(format!(
                "view.stream_type must be \"live\" or \"vod\", got {:?}",
                truncate(other, 32)
            )))
        }
    };
    let optional = |name: &str, v: &Option<String>| -> Result<String, EnvelopeError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok("unknown".to_owned()),
            Some(s) => dimension(name, s, limits),
        }
    };
    let claimed_region = match view.region.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(dimension("region", r, limits)?),
    };
    let mut custom = BTreeMap::new();
    if let Some(map) = &view.custom {
        if map.len() > limits.max_custom_keys {
            return Err(EnvelopeError::View(format!(
                "view.custom has {} keys (limit {})",
                map.len(),
                limits.max_custom_keys
            )));
        }
        for (k, v) in map {
            if k.is_empty() || longer_than(k, limits.max_custom_key_len) {
                return Err(EnvelopeError::View(format!(
                    "view.custom keys must be 1-{} characters",
                    limits.max_custom_key_len
                )));
            }
            if has_unsafe_chars(k) || has_unsafe_chars(v) {
                return Err(EnvelopeError::View(
                    "view.custom contains control or bidirectional formatting characters".into(),
                ));
            }
            if longer_than(v, limits.max_custom_value_len) {
                return Err(EnvelopeError::View(format!(
                    "view.custom[{:?}] is longer than {} characters",
                    truncate(k, 32),
                    limits.max_custom_value_len
                )));
            }
            custom.insert(k.clone(), v.clone());
        }
    }
    Ok(ValidView {
        context: EventContext {
            view_id: view.view_id.clone(),
            stream_id: dimension("stream_id", &view.stream_id, limits)?,
            stream_type,
            cdn: dimension("cdn", &view.cdn, limits)?,
            platform: dimension("platform", &view.platform, limits)?,
            player: optional("player", &view.player)?,
            protocol: optional("protocol", &view.protocol)?,
            region: String::new(),
            custom,
        },
        claimed_region,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Server-side facts about the request that every event inherits.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Collector clock, ms since the epoch.
    pub received_at: i64,
    /// Client clock when sent, from the envelope.
    pub sent_at: Option<i64>,
}

/// Clock-skew correction: `event_time = ts + (received_at - sent_at)`, or `ts` without `sent_at`.
pub fn corrected_time(ts: i64, received_at: i64, sent_at: Option<i64>) -> i64 {
    match sent_at {
        Some(sent) => ts.saturating_add(received_at.saturating_sub(sent)),
        None => ts,
    }
}

/// Validates and enriches one raw event of a beacon. The result is the event's own fields;
/// its context is the beacon's ([`ValidView::into_context`]), shared by all its events.
pub fn validate_event(
    raw: &RawValue,
    arrival: &Arrival,
    limits: &Limits,
) -> Result<EventFields, Rejection> {
    let ev: RawEvent = serde_json::from_str(raw.get())
        .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
    let kind = EventType::parse(&ev.kind).ok_or_else(|| {
        Rejection::new(
            RejectReason::UnknownType,
            format!("unknown event type {:?}", truncate(&ev.kind, 32)),
        )
    })?;

    let event_time = corrected_time(ev.ts, arrival.received_at, arrival.sent_at);
    if event_time > arrival.received_at.saturating_add(limits.max_future_ms) {
        return Err(Rejection::new(
            RejectReason::InFuture,
            format!(
                "event time is {} ms ahead of the server clock (limit {} ms)",
                event_time - arrival.received_at,
                limits.max_future_ms
            ),
        ));
    }
    if event_time < arrival.received_at.saturating_sub(limits.max_age_ms) {
        return Err(Rejection::new(
            RejectReason::TooOld,
            format!("event is older than {} ms", limits.max_age_ms),
        ));
    }

    for (name, value) in [
        ("playing_ms", ev.playing_ms),
        ("stall_ms", ev.stall_ms),
        ("startup_ms", ev.startup_ms),
        ("latency_ms", ev.latency_ms),
    ] {
        if value.is_some_and(|v| v > limits.max_duration_ms) {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format!("{name} exceeds {} ms", limits.max_duration_ms),
            ));
        }
    }
    for (name, value) in [
        ("bitrate_kbps", ev.bitrate_kbps),
        ("prev_bitrate_kbps", ev.prev_bitrate_kbps),
    ] {
        if value.is_some_and(|v| v > limits.max_bitrate_kbps) {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format!("{name} exceeds {} kbps", limits.max_bitrate_kbps),
            ));
        }
    }
    if let Some(code) = &ev.code {
        if longer_than(code, limits.max_code_len) {
            return Err(Rejection::new(
                RejectReason::TooLong,
                format!("code is longer than {} characters", limits.max_code_len),
            ));
        }
    }

    let missing = |field: &str| {
        Rejection::new(
            RejectReason::MissingField,
            format!("{} requires {field}", kind.as_str()),
        )
    };
    let mut started = ev.started;
    let mut reason = None;
    match kind {
        // A first_frame without startup_ms is still a play (its startup is unknown, counted in
        // `startup_unknown`); an error without fatal is not fatal; a view_end without reason
        // has an unknown one. `started` is required where the spec requires it.
        EventType::FirstFrame => {
            if ev.started == Some(false) {
                return Err(Rejection::new(
                    RejectReason::OutOfRange,
                    "first_frame cannot have started = false",
                ));
            }
            started = Some(true);
        }
        EventType::Error if ev.started.is_none() => return Err(missing("started")),
        EventType::ViewEnd => {
            if ev.started.is_none() {
                return Err(missing("started"));
            }
            reason = match ev.reason.as_deref() {
                None => None,
                Some("completed") => Some(EndReason::Completed),
                Some("exit") => Some(EndReason::Exit),
                Some("error") => Some(EndReason::Error),
                Some(other) => {
                    return Err(Rejection::new(
                        RejectReason::OutOfRange,
                        format!(
                            "reason must be completed, exit or error, got {:?}",
                            truncate(other, 32)
                        ),
                    ))
                }
            };
        }
        EventType::BitrateChange => {
            if ev.bitrate_kbps.is_none() {
                return Err(missing("bitrate_kbps"));
            }
            if ev.prev_bitrate_kbps.is_none() {
                return Err(missing("prev_bitrate_kbps"));
            }
        }
        _ => {}
    }

    let mut fields = event_measures!(copy EventFields {
        seq: ev.seq,
        kind,
        ts: ev.ts,
        event_time,
        received_at: arrival.received_at,
        code: ev.code.map(Cow::into_owned),
        reason,
    } from ev);
    fields.started = started;
    // Only an error is fatal or not (a `view_end` that says fatal would count a failure).
    fields.fatal = fields.fatal.filter(|_| kind == EventType::Error);
    Ok(fields)
}

#[cfg(test)]
mod tests;
