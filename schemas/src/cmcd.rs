//! CMCD v2 event-mode reports (CTA-5004-B), the standard that hls.js, dash.js and Shaka Player
//! already ship: how one line of a `POST /v1/cmcd` body is parsed and validated
//! ([`parse_line`]), and the message that carries it through Kafka ([`CmcdMessage`]).
//!
//! A line is an RFC 8941 Structured Field dictionary, parsed with the `sfv` crate. What players
//! really send is tolerated: spaces around members, decimals where integers are expected
//! (`ltc=2042.0`, rounded), `ec` as a list of strings or a bare integer, escaped strings. Unknown
//! keys, and known keys with a value of the wrong type, are ignored (5004-B §6); a line without
//! `e`, `ts` or `sid`, with a version above 2, or with an unusable value is refused with a
//! reason the collector counts.
//!
//! A report is not a QoE event: durations (startup, stalls, playing time) are differences
//! between reports of the same session, so the aggregator, which keeps per-partition state and
//! rebuilds it exactly after a crash, turns reports into events. The collector stays stateless.

use crate::validate::{has_unsafe_chars, is_valid_view_id, longer_than, normalize_dimension};
use crate::Limits;
use serde::{Deserialize, Serialize};
use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItemFromInput, KeyRef, Parser};
use std::convert::Infallible;

/// Every CMCD message value starts with this, which no [`crate::QoeEvent`] does (those start
/// with `{"v":`): the aggregator tells the two apart without parsing twice.
pub const CMCD_MESSAGE_PREFIX: &[u8] = b"{\"cmcd\":";

/// Largest `sid` (5004-B: string of at most 64 characters).
pub const MAX_SID_LEN: usize = 64;
/// Largest URL kept from an `rr` report (only its host is used).
pub const MAX_URL_LEN: usize = 2048;
/// Longest plausible request time (`ttfb`, `ttlb`), ms.
pub const MAX_REQUEST_MS: u32 = 600_000;

/// One validated report: the keys the pipeline uses, typed. Absent keys are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CmcdReport {
    /// Event type: `ps` play state, `e` error, `t` interval, `rr` response received, `bc`
    /// bitrate change, ... (5004-B Table 1).
    pub e: String,
    /// Event time, ms since the epoch, player clock.
    pub ts: i64,
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sn: Option<i64>,
    /// Content id (the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// Streaming format token: `h` HLS, `d` DASH, `s` Smooth, `e` HESP, `o` other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sf: Option<String>,
    /// Stream type token: `v` VOD, `l` live, `ll` low-latency live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<String>,
    /// Player state token: `s p k r a e f q d w`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sta: Option<String>,
    /// Media start delay, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msd: Option<u32>,
    /// Buffer-starvation durations sent with this report, summed, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsd: Option<u32>,
    /// Encoded bitrate of the selected video representation, kbps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub br: Option<u32>,
    /// Live latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ltc: Option<u32>,
    /// Dropped frames since the session started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dfa: Option<u32>,
    /// First player error code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec: Option<String>,
    /// Response status of an `rr` report (0: no response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rc: Option<u32>,
    /// Time to first byte of an `rr` report, ms after `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb: Option<u32>,
    /// Time to last byte of an `rr` report, ms after `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttlb: Option<u32>,
    /// Object type of an `rr` report (`m` manifest, `v` video, `a` audio, `av` muxed, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ot: Option<String>,
}

/// A report as published to Kafka (key: `sid`): the report, when it arrived, and what the
/// collector resolved for it (region, CDN, platform and player).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmcdMessage {
    /// First field, so the message value starts with [`CMCD_MESSAGE_PREFIX`].
    pub cmcd: CmcdReport,
    pub received_at: i64,
    pub region: String,
    /// From the `cdn` key, else the host of `url` / `h` through the host map, else the
    /// target URL's `cdn` parameter; empty when nothing said (the session's last known CDN,
    /// else `unknown`, is used).
    pub cdn: String,
    pub platform: String,
    pub player: String,
    /// Where `cdn` came from ([`CdnSource`]): a session's CDN is changed only by a report
    /// whose source ranks at least as high as the one that set it. Absent (0) in messages of
    /// collectors that did not send it: every CDN then counts as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cdn_rank: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Where a report's CDN came from, weakest first (`CmcdMessage::cdn_rank`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CdnSource {
    /// The target URL's `cdn` parameter: what the page declared.
    TargetUrl = 0,
    /// The requested object's host through the collector's host map: what served it.
    ObjectHost = 1,
    /// The report's own `cdn` key.
    ReportKey = 2,
}

/// Writes a [`CmcdMessage`] from borrowed parts (the collector's per-request context is not
/// copied into every report); the same bytes as [`CmcdMessage::encode`].
#[derive(Serialize)]
pub struct CmcdMessageRef<'a> {
    pub cmcd: &'a CmcdReport,
    pub received_at: i64,
    pub region: &'a str,
    pub cdn: &'a str,
    pub platform: &'a str,
    pub player: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    pub cdn_rank: u8,
}

impl CmcdMessageRef<'_> {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl CmcdMessage {
    pub fn encode(&self) -> Vec<u8> {
        CmcdMessageRef {
            cmcd: &self.cmcd,
            received_at: self.received_at,
            region: &self.region,
            cdn: &self.cdn,
            platform: &self.platform,
            player: &self.player,
            cdn_rank: self.cdn_rank,
        }
        .encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What the collector needs from a line besides the report: the host of `url` or `h`, and the
/// `cdn` key, for CDN resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    pub report: CmcdReport,
    pub cdn: Option<String>,
    pub host: Option<String>,
}

/// Why a line was skipped. [`LineError::reason`] is the label counted in `/metrics`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("not a Structured Field dictionary: {0}")]
    Syntax(String),
    #[error("CMCD version {0} is not supported (at most 2)")]
    Version(i64),
    #[error("required key `{0}` is missing or not usable")]
    Missing(&'static str),
    #[error("sid must be 1-64 characters of [A-Za-z0-9_.:-]")]
    Sid,
    #[error("`{0}` is too long")]
    TooLong(&'static str),
    #[error("`{0}` contains control or bidirectional formatting characters")]
    Unsafe(&'static str),
    #[error("ts is more than {0} ms ahead of the server clock")]
    Future(i64),
    #[error("ts is older than {0} ms")]
    TooOld(i64),
}

impl LineError {
    pub fn reason(&self) -> &'static str {
        match self {
            LineError::Syntax(_) => "syntax",
            LineError::Version(_) => "version",
            LineError::Missing(_) => "missing_key",
            LineError::Sid => "sid",
            LineError::TooLong(_) => "too_long",
            LineError::Unsafe(_) => "unsafe_chars",
            LineError::Future(_) => "future",
            LineError::TooOld(_) => "too_old",
        }
    }
}

/// The keys the pipeline reads; everything else is ignored while parsing.
#[derive(Clone, Copy)]
enum Key {
    E,
    Ts,
    Sid,
    Sn,
    V,
    Cid,
    Sf,
    St,
    Sta,
    Msd,
    Bsd,
    Br,
    Ltc,
    Dfa,
    Ec,
    Url,
    Rc,
    Ttfb,
    Ttlb,
    Ot,
    Cdn,
    H,
}
const KEYS: usize = 22;

fn key_of(k: &str) -> Option<Key> {
    Some(match k {
        "e" => Key::E,
        "ts" => Key::Ts,
        "sid" => Key::Sid,
        "sn" => Key::Sn,
        "v" => Key::V,
        "cid" => Key::Cid,
        "sf" => Key::Sf,
        "st" => Key::St,
        "sta" => Key::Sta,
        "msd" => Key::Msd,
        "bsd" => Key::Bsd,
        "br" => Key::Br,
        "ltc" => Key::Ltc,
        "dfa" => Key::Dfa,
        "ec" => Key::Ec,
        "url" => Key::Url,
        "rc" => Key::Rc,
        "ttfb" => Key::Ttfb,
        "ttlb" => Key::Ttlb,
        "ot" => Key::Ot,
        "cdn" => Key::Cdn,
        "h" => Key::H,
        _ => return None,
    })
}

/// What one member of the dictionary held: its item, or for an inner list its first item,
/// the item labelled `;v` (video) and the sum of its numbers.
#[derive(Default)]
struct Slot<'a> {
    first: Option<BareItemFromInput<'a>>,
    video: Option<BareItemFromInput<'a>>,
    sum: i64,
}

/// Fills one [`Slot`] per known key straight from the input (strings and tokens borrowed),
/// instead of building the whole dictionary: the parser's hot path allocates almost nothing.
#[derive(Default)]
struct Members<'a> {
    slots: [Option<Slot<'a>>; KEYS],
}

/// Visits one member: a known key's slot, or nothing for a key the pipeline does not read.
struct MemberVisitor<'s, 'a>(Option<&'s mut Slot<'a>>);

impl<'a> DictionaryVisitor<'a> for Members<'a> {
    type Error = Infallible;
    fn entry(&mut self, key: &'a KeyRef) -> Result<impl EntryVisitor<'a>, Infallible> {
        // A repeated key's last value wins (RFC 8941 4.2.2).
        let slot = key_of(key.as_str()).map(|k| {
            let slot = &mut self.slots[k as usize];
            *slot = Some(Slot::default());
            slot.as_mut().expect("just set")
        });
        Ok(MemberVisitor(slot))
    }
}

impl<'a> ItemVisitor<'a> for MemberVisitor<'_, 'a> {
    type Error = Infallible;
    fn bare_item(
        self,
        item: BareItemFromInput<'a>,
    ) -> Result<impl ParameterVisitor<'a>, Infallible> {
        if let Some(slot) = self.0 {
            slot.sum += rounded(&item).unwrap_or(0);
            slot.first = Some(item);
        }
        Ok(Ignored)
    }
}

impl<'a> EntryVisitor<'a> for MemberVisitor<'_, 'a> {
    fn inner_list(self) -> Result<impl InnerListVisitor<'a>, Infallible> {
        Ok(ListVisitor(self.0))
    }
}

struct ListVisitor<'s, 'a>(Option<&'s mut Slot<'a>>);

impl<'a> InnerListVisitor<'a> for ListVisitor<'_, 'a> {
    type Error = Infallible;
    fn item(&mut self) -> Result<impl ItemVisitor<'a>, Infallible> {
        Ok(ListItem(self.0.as_deref_mut()))
    }
    fn finish(self) -> Result<impl ParameterVisitor<'a>, Infallible> {
        Ok(Ignored)
    }
}

struct ListItem<'s, 'a>(Option<&'s mut Slot<'a>>);

impl<'s, 'a> ItemVisitor<'a> for ListItem<'s, 'a> {
    type Error = Infallible;
    fn bare_item(
        self,
        item: BareItemFromInput<'a>,
    ) -> Result<impl ParameterVisitor<'a>, Infallible> {
        Ok(ItemParams {
            slot: self.0.map(|slot| {
                slot.sum += rounded(&item).unwrap_or(0);
                if slot.first.is_none() {
                    slot.first = Some(item.clone());
                }
                (slot, item)
            }),
        })
    }
}

/// The parameters of a list item: `;v` marks the video item (`br=(800;v 64;a)`).
struct ItemParams<'s, 'a> {
    slot: Option<(&'s mut Slot<'a>, BareItemFromInput<'a>)>,
}

impl<'a> ParameterVisitor<'a> for ItemParams<'_, 'a> {
    type Error = Infallible;
    fn parameter(&mut self, key: &'a KeyRef, _: BareItemFromInput<'a>) -> Result<(), Infallible> {
        if key.as_str() == "v" {
            if let Some((slot, item)) = &mut self.slot {
                if slot.video.is_none() {
                    slot.video = Some(item.clone());
                }
            }
        }
        Ok(())
    }
}

impl<'a> Members<'a> {
    fn slot(&self, k: Key) -> Option<&Slot<'a>> {
        self.slots[k as usize].as_ref()
    }
    fn int(&self, k: Key) -> Option<i64> {
        self.slot(k)?.first.as_ref().and_then(rounded)
    }
    fn text(&self, k: Key) -> Option<&str> {
        self.slot(k)?.first.as_ref().and_then(text)
    }
}

fn rounded(item: &BareItemFromInput<'_>) -> Option<i64> {
    match item {
        BareItemFromInput::Integer(i) => Some(i64::from(*i)),
        BareItemFromInput::Decimal(d) => {
            let scaled = i64::from(d.as_integer_scaled_1000());
            // Half away from zero, like JavaScript's Math.round for the positive values sent.
            Some((scaled + scaled.signum() * 500) / 1000)
        }
        _ => None,
    }
}

fn text<'i>(item: &'i BareItemFromInput<'_>) -> Option<&'i str> {
    match item {
        BareItemFromInput::String(s) => Some(s.as_str()),
        BareItemFromInput::Token(t) => Some(t.as_str()),
        _ => None,
    }
}

fn non_negative_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

fn bounded_text(value: &str, key: &'static str, max: usize) -> Result<String, LineError> {
    if longer_than(value, max) {
        return Err(LineError::TooLong(key));
    }
    if has_unsafe_chars(value) {
        return Err(LineError::Unsafe(key));
    }
    Ok(value.to_owned())
}

/// The host of an absolute URL (`scheme://host[:port]/...`), lower-cased.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Parses and validates one line of a CMCD body (already split on LF; surrounding spaces are
/// trimmed here). `received_at` is the collector's clock; reports carry no `sent_at`, so their
/// `ts` is checked as is against the age and future bounds of `limits`.
pub fn parse_line(line: &str, received_at: i64, limits: &Limits) -> Result<ParsedLine, LineError> {
    let mut members = Members::default();
    Parser::new(line.trim())
        .parse_dictionary_with_visitor(&mut members)
        .map_err(|e| LineError::Syntax(e.to_string()))?;
    let m = &members;

    if let Some(v) = m.int(Key::V) {
        if v > 2 {
            return Err(LineError::Version(v));
        }
    }
    let e = m
        .text(Key::E)
        .filter(|e| !e.trim().is_empty())
        .ok_or(LineError::Missing("e"))?;
    let e = bounded_text(e, "e", 16)?;
    let ts = m
        .int(Key::Ts)
        .filter(|t| *t > 0)
        .ok_or(LineError::Missing("ts"))?;
    let sid = m.text(Key::Sid).ok_or(LineError::Missing("sid"))?;
    if !is_valid_view_id(sid) || sid.len() > MAX_SID_LEN {
        return Err(LineError::Sid);
    }
    if ts > received_at.saturating_add(limits.max_future_ms) {
        return Err(LineError::Future(limits.max_future_ms));
    }
    if ts < received_at.saturating_sub(limits.max_age_ms) {
        return Err(LineError::TooOld(limits.max_age_ms));
    }
    let dim = |k: Key, name: &'static str| -> Result<Option<String>, LineError> {
        match m.text(k) {
            Some(v) if !v.trim().is_empty() => Ok(Some(normalize_dimension(&bounded_text(
                v,
                name,
                limits.max_dimension_len,
            )?))),
            _ => Ok(None),
        }
    };
    let token = |k: Key| m.text(k).filter(|t| t.len() <= 8).map(str::to_owned);
    let duration = |k: Key| {
        m.int(k)
            .map(|v| non_negative_u32(v).min(limits.max_duration_ms))
    };

    // `br` may be labelled per media type: the video item (`;v`), else the first.
    let br = m
        .slot(Key::Br)
        .and_then(|s| s.video.as_ref().or(s.first.as_ref()))
        .and_then(rounded)
        .map(|v| non_negative_u32(v).min(limits.max_bitrate_kbps));
    // `bsd` sums every starvation sent with the report.
    let bsd = m
        .slot(Key::Bsd)
        .filter(|s| s.first.is_some())
        .map(|s| non_negative_u32(s.sum).min(limits.max_duration_ms));
    let ec = m
        .slot(Key::Ec)
        .and_then(|s| s.first.as_ref())
        .and_then(|i| match i {
            BareItemFromInput::Integer(n) => Some(i64::from(*n).to_string()),
            other => text(other).map(str::to_owned),
        })
        .map(|c| bounded_text(&c, "ec", limits.max_code_len))
        .transpose()?;
    let url = m
        .text(Key::Url)
        .map(|u| bounded_text(u, "url", MAX_URL_LEN))
        .transpose()?;
    let host = url
        .as_deref()
        .and_then(url_host)
        .or_else(|| {
            m.text(Key::H)
                .and_then(|h| url_host(h).or_else(|| Some(h.to_ascii_lowercase())))
        })
        .filter(|h| !longer_than(h, limits.max_dimension_len) && !has_unsafe_chars(h));
    let ttlb = duration(Key::Ttlb);
    // A time to first byte after the last byte, or beyond any request timeout, is not one
    // (dash.js 5.2.1 sends an epoch time there).
    let ttfb =
        duration(Key::Ttfb).filter(|t| *t <= MAX_REQUEST_MS && ttlb.is_none_or(|last| *t <= last));

    let report = CmcdReport {
        e,
        ts,
        sid: sid.to_owned(),
        sn: m.int(Key::Sn),
        cid: dim(Key::Cid, "cid")?,
        sf: token(Key::Sf),
        st: token(Key::St),
        sta: token(Key::Sta),
        msd: duration(Key::Msd),
        bsd,
        br,
        ltc: duration(Key::Ltc),
        dfa: m.int(Key::Dfa).map(non_negative_u32),
        ec,
        rc: m.int(Key::Rc).map(|v| non_negative_u32(v).min(999)),
        ttfb,
        ttlb,
        ot: token(Key::Ot),
    };
    Ok(ParsedLine {
        report,
        cdn: dim(Key::Cdn, "cdn")?,
        host,
    })
}

#[cfg(test)]
mod tests;
