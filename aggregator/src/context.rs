//! The context a view plays in (region, CDN, stream, platform, player, protocol), the slice
//! of it that metrics are grouped by, and which optional dimensions are grouping keys.
//! Shared by windowing, beacon views and CMCD sessions.

use hashbrown::Equivalent;
use qoe_schemas::cdn_log::RequestMessage;
use qoe_schemas::{EventRef, StreamType};
use serde::{Deserialize, Serialize};

/// Which optional dimensions are grouping keys (region and CDN always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub stream_type: bool,
    pub platform: bool,
    pub stream_id: bool,
}

impl Default for Dimensions {
    fn default() -> Self {
        Dimensions {
            stream_type: true,
            platform: true,
            stream_id: true,
        }
    }
}

/// One slice of the dimensions; dimensions that are not grouping keys are empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice {
    pub region: String,
    pub cdn: String,
    pub stream_type: String,
    pub platform: String,
    pub stream_id: String,
}

impl Slice {
    pub fn of(c: &Context, d: Dimensions) -> Slice {
        let optional = |on: bool, value: &str| if on { value.to_owned() } else { String::new() };
        Slice {
            region: c.region.clone(),
            cdn: c.cdn.clone(),
            stream_type: optional(d.stream_type, c.stream_type.as_str()),
            platform: optional(d.platform, &c.platform),
            stream_id: optional(d.stream_id, &c.stream_id),
        }
    }
}

/// Where and how a view plays: the context the collector copies into each of its events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    pub region: String,
    pub cdn: String,
    pub stream_type: StreamType,
    pub platform: String,
    pub stream_id: String,
    pub player: String,
    pub protocol: String,
}

/// A [`Context`] borrowed from an event: finding a known one allocates nothing. Hashes like
/// `Context` (same fields, same order; `String` hashes like `str`).
#[derive(Hash)]
pub(crate) struct ContextRef<'a> {
    region: &'a str,
    cdn: &'a str,
    stream_type: StreamType,
    platform: &'a str,
    stream_id: &'a str,
    player: &'a str,
    protocol: &'a str,
}

impl<'a> ContextRef<'a> {
    pub(crate) fn from_context(c: &'a Context) -> Self {
        ContextRef {
            region: &c.region,
            cdn: &c.cdn,
            stream_type: c.stream_type,
            platform: &c.platform,
            stream_id: &c.stream_id,
            player: &c.player,
            protocol: &c.protocol,
        }
    }

    pub(crate) fn of(e: &'a EventRef<'_>) -> Self {
        ContextRef {
            region: &e.region,
            cdn: &e.cdn,
            stream_type: e.stream_type,
            platform: &e.platform,
            stream_id: &e.stream_id,
            player: &e.player,
            protocol: &e.protocol,
        }
    }

    /// A CDN log request's context: stream from `cid`, stream type from `st`, protocol from
    /// `sf`, and what the collector resolved (region, CDN, platform, player).
    pub(crate) fn of_request(m: &'a RequestMessage) -> Self {
        let c = &m.req.cmcd;
        ContextRef {
            region: &m.region,
            cdn: &m.cdn,
            stream_type: match c.st.as_deref() {
                Some("v") => StreamType::Vod,
                _ => StreamType::Live,
            },
            platform: &m.platform,
            stream_id: c.cid.as_deref().unwrap_or("unknown"),
            player: &m.player,
            protocol: c.sf.as_deref().map_or("unknown", crate::cmcd::protocol_of),
        }
    }

    pub(crate) fn owned(&self) -> Context {
        Context {
            region: self.region.to_owned(),
            cdn: self.cdn.to_owned(),
            stream_type: self.stream_type,
            platform: self.platform.to_owned(),
            stream_id: self.stream_id.to_owned(),
            player: self.player.to_owned(),
            protocol: self.protocol.to_owned(),
        }
    }
}

impl Equivalent<Context> for ContextRef<'_> {
    fn equivalent(&self, c: &Context) -> bool {
        self.region == c.region
            && self.cdn == c.cdn
            && self.stream_type == c.stream_type
            && self.platform == c.platform
            && self.stream_id == c.stream_id
            && self.player == c.player
            && self.protocol == c.protocol
    }
}
