//! The view's context every event carries (`view_id`, the stream, the CDN, the platform, the
//! player, the protocol, the region; then `custom`), declared once.
//!
//! The owned forms ([`crate::QoeEvent`], [`crate::EventContext`]) declare these fields, and
//! conversions between the owned and borrowed forms copy them, through [`view_context!`]. The
//! forms consumers decode borrowing from message bytes declare them in `measures.rs`
//! (`read_context`), where serde must see each `Cow` written out to borrow it.

use crate::event::StreamType;
use std::borrow::Cow;

/// The list of context fields, and what is made of it.
///
/// - `view_context!(declare $(#[attr])* pub struct Name { before })`: the struct with `before`,
///   then the context fields and `custom`.
/// - `view_context!(declare_event $(#[attr])* pub struct Name { before })`: `before`, the
///   context, then an event's own fields ([`event_measures!`]`(declare_event ...)`).
/// - `view_context!(clone src => Type { fields })`: a struct literal of `Type` with `fields` and
///   every context field (and `custom`) cloned from `src`; `view_context!(clone src =>
///   event_measures!(copy Type { fields } from other))` the same with the measurements too.
/// - `view_context!(borrow src, event => Type { fields })`: the read form `Type` of an event
///   ([`crate::EventRef`]) with `fields`, the context borrowed from `src` ([`ContextField`],
///   `custom` left out) and the event's fields (`seq`, `type`, the times, the measurements,
///   `code`, `reason`) from `event`.
#[macro_export]
macro_rules! view_context {
    // The one list, in serialization order; `custom` follows it in the owned forms.
    (@list ($($k:tt)*)) => {
        $crate::view_context! { $($k)* [
            view_id: String,
            stream_id: String,
            stream_type: $crate::event::StreamType,
            cdn: String,
            platform: String,
            player: String,
            protocol: String,
            /// Resolved by the collector; `unknown` when nothing said.
            region: String
        ] }
    };
    (declare $(#[$attr:meta])* pub struct $name:ident { $($before:tt)* }) => {
        $crate::view_context! { @list (@fields (view_context, @emit $(#[$attr])* pub struct $name)
            { $($before)* }) }
    };
    (declare_event $(#[$attr:meta])* pub struct $name:ident { $($before:tt)* }) => {
        $crate::view_context! { @list (@fields
            (event_measures, declare_event $(#[$attr])* pub struct $name) { $($before)* }) }
    };
    // `before`, the context and `custom`, handed to `$mac!($($args)* { fields })`.
    (@fields ($mac:ident, $($args:tt)*) { $($before:tt)* }
        [$($(#[$fa:meta])* $f:ident: $t:ty),*]) => {
        $crate::$mac! { $($args)* {
            $($before)*
            $($(#[$fa])* pub $f: $t,)*
            #[serde(default, skip_serializing_if = "::std::collections::BTreeMap::is_empty")]
            pub custom: ::std::collections::BTreeMap<String, String>,
        } }
    };
    (@emit $(#[$attr:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$attr])*
        pub struct $name { $($body)* }
    };
    (clone $src:expr => $mac:ident!(copy $ty:ident { $($fields:tt)* } from $from:expr)) => {
        $crate::view_context! { @list (@clone_measured $src, $mac, $ty, $from, { $($fields)* }) }
    };
    (@clone_measured $src:expr, $mac:ident, $ty:ident, $from:expr, { $($fields:tt)* }
        [$($(#[$fa:meta])* $f:ident: $t:ty),*]) => {
        $mac!(copy $ty {
            $($f: ::std::clone::Clone::clone(&$src.$f),)*
            custom: ::std::clone::Clone::clone(&$src.custom),
            $($fields)*
        } from $from)
    };
    (clone $src:expr => $ty:ident { $($fields:tt)* }) => {
        $crate::view_context! { @list (@clone $src, $ty, { $($fields)* }) }
    };
    (@clone $src:expr, $ty:ident, { $($fields:tt)* } [$($(#[$fa:meta])* $f:ident: $t:ty),*]) => {
        $ty {
            $($f: ::std::clone::Clone::clone(&$src.$f),)*
            custom: ::std::clone::Clone::clone(&$src.custom),
            $($fields)*
        }
    };
    (borrow $src:expr, $event:expr => $ty:ident { $($fields:tt)* }) => {
        $crate::view_context! { @list (@borrow $src, $event, $ty, { $($fields)* }) }
    };
    (@borrow $src:expr, $event:expr, $ty:ident, { $($fields:tt)* }
        [$($(#[$fa:meta])* $f:ident: $t:ty),*]) => {
        $crate::event_measures!(copy $ty {
            $($f: $crate::view_context::ContextField::borrowed(&$src.$f),)*
            seq: $event.seq,
            kind: $event.kind,
            event_time: $event.event_time,
            received_at: $event.received_at,
            code: $event.code.as_deref().map(::std::borrow::Cow::Borrowed),
            reason: $event.reason,
            $($fields)*
        } from $event)
    };
}

/// A context field as the borrowed forms hold it: strings as `Cow::Borrowed`, the rest copied.
pub trait ContextField<'a> {
    type Borrowed;
    fn borrowed(&'a self) -> Self::Borrowed;
}

impl<'a> ContextField<'a> for String {
    type Borrowed = Cow<'a, str>;
    fn borrowed(&'a self) -> Cow<'a, str> {
        Cow::Borrowed(self)
    }
}

impl<'a> ContextField<'a> for Cow<'_, str> {
    type Borrowed = Cow<'a, str>;
    fn borrowed(&'a self) -> Cow<'a, str> {
        Cow::Borrowed(self)
    }
}

impl<'a> ContextField<'a> for StreamType {
    type Borrowed = StreamType;
    fn borrowed(&'a self) -> StreamType {
        *self
    }
}
