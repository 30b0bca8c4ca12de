//! The optional measurements an event carries (startup, playing and stall time, bitrates,
//! latency, dropped frames, whether it started, whether an error is fatal), declared once.
//!
//! Every form of an event (the wire's [`crate::RawEvent`], the published [`crate::QoeEvent`]
//! and [`crate::EventFields`], the borrowed [`crate::EventRef`] and the per-beacon message's
//! `FieldsRef` and `BeaconRef`, whose fields and borrowed context are declared here whole)
//! declares these fields, and conversions between the forms copy them, through
//! [`event_measures!`]: a new measurement is one line in its list (then its validation rule,
//! the beacon JSON Schema and the metrics that read it). `code` and `reason` are not in the
//! list: each form gives them its own type (a raw string, an owned or borrowed one, an enum).

/// The list of measurements, and what is made of it. Every measurement is an `Option` of a
/// `Copy` type, serialized only when set.
///
/// - `event_measures!(declare $(#[attr])* pub struct Name<'a>? { fields before } { fields after })`:
///   the struct with the measurements between the two groups of fields.
/// - `event_measures!(declare_event $(#[attr])* pub struct Name { fields before })`: an
///   event's own fields after `fields before`: `seq`, `type`, the times, the measurements,
///   `code`, `reason`.
/// - The forms consumers decode, borrowing from the message bytes:
///   `event_measures!(declare_read $(#[attr])* pub struct Name<'a> {})`, the event's fields
///   as aggregation reads them (`seq`, `type`, the times, the measurements, a borrowed `code`,
///   `reason`); `declare_read_in_context`, the view's borrowed context (`v`, `view_id`, ...,
///   `region`) before them; `declare_context_read ... { fields }`, the context before `fields`.
/// - `event_measures!(copy Type { fields } from source)`: a struct literal of `Type` with the
///   given fields and every measurement copied from `source` (a place expression).
/// - `event_measures!(none Type { fields })`: the same with every measurement unset.
#[macro_export]
macro_rules! event_measures {
    (@ declare [$($m:ident: $t:ty),*]
        $(#[$attr:meta])* pub struct $name:ident $(<$lt:lifetime>)? { $($head:tt)* } { $($tail:tt)* }) => {
        $(#[$attr])*
        pub struct $name $(<$lt>)? {
            $($head)*
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $m: Option<$t>,
            )*
            $($tail)*
        }
    };
    // An event's own fields (all but the view's context), after `before`.
    (@ declare_event $list:tt
        $(#[$attr:meta])* pub struct $name:ident { $($before:tt)* }) => {
        $crate::event_measures! { @ declare $list $(#[$attr])* pub struct $name {
            $($before)*
            pub seq: u32,
            #[serde(rename = "type")]
            pub kind: $crate::event::EventType,
            /// Client clock, as sent.
            pub ts: i64,
            /// `ts` corrected for the client's clock skew.
            pub event_time: i64,
            /// Collector clock when the beacon arrived.
            pub received_at: i64,
        } {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub code: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reason: Option<$crate::event::EndReason>,
        } }
    };
    // The forms consumers decode, borrowing from the message bytes. Each part of their fields
    // is written once and handed on to the next step (`$k`: what to expand with the fields).
    (@ declare_read $list:tt
        $(#[$attr:meta])* pub struct $name:ident<$lt:lifetime> {}) => {
        $crate::event_measures! { @ read_event_fields $list $lt
            (@ emit $(#[$attr])* pub struct $name<$lt>) {} }
    };
    (@ declare_read_in_context $list:tt
        $(#[$attr:meta])* pub struct $name:ident<$lt:lifetime> {}) => {
        $crate::event_measures! { @ read_context $lt
            (@ read_event_fields $list $lt (@ emit $(#[$attr])* pub struct $name<$lt>)) {} }
    };
    (@ declare_context_read [$($m:ident: $t:ty),*]
        $(#[$attr:meta])* pub struct $name:ident<$lt:lifetime> { $($rest:tt)* }) => {
        $crate::event_measures! { @ read_context $lt
            (@ emit $(#[$attr])* pub struct $name<$lt>) { $($rest)* } }
    };
    // The view's context (the message format's version and the context fields), then `after`.
    (@ read_context $lt:lifetime ($($k:tt)*) { $($after:tt)* }) => {
        $crate::event_measures! { $($k)* {
            pub v: u8,
            #[serde(borrow)]
            pub view_id: ::std::borrow::Cow<$lt, str>,
            #[serde(borrow)]
            pub stream_id: ::std::borrow::Cow<$lt, str>,
            pub stream_type: $crate::event::StreamType,
            #[serde(borrow)]
            pub cdn: ::std::borrow::Cow<$lt, str>,
            #[serde(borrow)]
            pub platform: ::std::borrow::Cow<$lt, str>,
            #[serde(borrow)]
            pub player: ::std::borrow::Cow<$lt, str>,
            #[serde(borrow)]
            pub protocol: ::std::borrow::Cow<$lt, str>,
            #[serde(borrow)]
            pub region: ::std::borrow::Cow<$lt, str>,
            $($after)*
        } }
    };
    // `before`, then the event's fields as aggregation reads them.
    (@ read_event_fields [$($m:ident: $t:ty),*] $lt:lifetime ($($k:tt)*) { $($before:tt)* }) => {
        $crate::event_measures! { $($k)* {
            $($before)*
            pub seq: u32,
            #[serde(rename = "type")]
            pub kind: $crate::event::EventType,
            pub event_time: i64,
            pub received_at: i64,
            $(
                #[serde(default)]
                pub $m: Option<$t>,
            )*
            #[serde(default, borrow)]
            pub code: Option<::std::borrow::Cow<$lt, str>>,
            #[serde(default)]
            pub reason: Option<$crate::event::EndReason>,
        } }
    };
    (@ emit $(#[$attr:meta])* pub struct $name:ident<$lt:lifetime> { $($body:tt)* }) => {
        $(#[$attr])*
        pub struct $name<$lt> { $($body)* }
    };
    (@ copy [$($m:ident: $t:ty),*]
        $ty:ident { $($field:ident $(: $value:expr)?),* $(,)? } from $src:expr) => {
        $ty { $($field $(: $value)?,)* $($m: $src.$m,)* }
    };
    (@ none [$($m:ident: $t:ty),*] $ty:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
        $ty { $($field $(: $value)?,)* $($m: None,)* }
    };
    // The one list, in serialization order.
    ($mode:ident $($rest:tt)*) => {
        $crate::event_measures! { @ $mode [
            started: bool,
            playing_ms: u32,
            stall_ms: u32,
            bitrate_kbps: u32,
            prev_bitrate_kbps: u32,
            startup_ms: u32,
            latency_ms: u32,
            dropped_frames: u32,
            fatal: bool
        ] $($rest)* }
    };
}
