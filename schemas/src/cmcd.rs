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
use sfv::{BareItem, Item, ListEntry, Parser};

/// Every CMCD message value starts with this, which no [`crate::QoeEvent`] does (those start
/// with `{"v":`): the aggregator tells the two apart without parsing twice.
pub const CMCD_MESSAGE_PREFIX: &[u8] = b"{\"cmcd\":";

/// Largest `sid` (5004-B: string of at most 64 characters).
pub const MAX_SID_LEN: usize = 64;
/// Largest URL kept from an `rr` report (only its host is used).
pub const MAX_URL_LEN: usize = 2048;

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
}

impl CmcdMessage {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
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

fn rounded(item: &BareItem) -> Option<i64> {
    match item {
        BareItem::Integer(i) => Some(i64::from(*i)),
        BareItem::Decimal(d) => {
            let scaled = i64::from(d.as_integer_scaled_1000());
            // Half away from zero, like JavaScript's Math.round for the positive values sent.
            Some((scaled + scaled.signum() * 500) / 1000)
        }
        _ => None,
    }
}

fn text(item: &BareItem) -> Option<&str> {
    match item {
        BareItem::String(s) => Some(s.as_str()),
        BareItem::Token(t) => Some(t.as_str()),
        _ => None,
    }
}

/// The item of a member that is either an item or a one-or-more-item inner list, picked by
/// `pick` among the list's items.
fn item_of<'a>(
    entry: &'a ListEntry,
    pick: impl Fn(&'a [Item]) -> Option<&'a Item>,
) -> Option<&'a Item> {
    match entry {
        ListEntry::Item(i) => Some(i),
        ListEntry::InnerList(l) => pick(&l.items),
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
    let dict = Parser::new(line.trim())
        .parse_dictionary()
        .map_err(|e| LineError::Syntax(e.to_string()))?;
    let get = |k: &str| dict.get(k);
    let int = |k: &str| {
        get(k)
            .and_then(|e| item_of(e, |l| l.first()))
            .and_then(|i| rounded(&i.bare_item))
    };
    let txt = |k: &str| {
        get(k)
            .and_then(|e| item_of(e, |l| l.first()))
            .and_then(|i| text(&i.bare_item))
    };

    if let Some(v) = int("v") {
        if v > 2 {
            return Err(LineError::Version(v));
        }
    }
    let e = txt("e").ok_or(LineError::Missing("e"))?;
    let e = bounded_text(e, "e", 16)?;
    let ts = int("ts")
        .filter(|t| *t > 0)
        .ok_or(LineError::Missing("ts"))?;
    let sid = txt("sid").ok_or(LineError::Missing("sid"))?;
    if !is_valid_view_id(sid) || sid.len() > MAX_SID_LEN {
        return Err(LineError::Sid);
    }
    if ts > received_at.saturating_add(limits.max_future_ms) {
        return Err(LineError::Future(limits.max_future_ms));
    }
    if ts < received_at.saturating_sub(limits.max_age_ms) {
        return Err(LineError::TooOld(limits.max_age_ms));
    }
    let dim = |k: &'static str| -> Result<Option<String>, LineError> {
        match txt(k) {
            Some(v) if !v.trim().is_empty() => Ok(Some(normalize_dimension(&bounded_text(
                v,
                k,
                limits.max_dimension_len,
            )?))),
            _ => Ok(None),
        }
    };
    let token = |k: &str| txt(k).filter(|t| t.len() <= 8).map(str::to_owned);
    let duration = |k: &str| int(k).map(|v| non_negative_u32(v).min(limits.max_duration_ms));

    // `br` (and `bsd`, `dfa`, `ltc`) may be inner lists: the video item (`;v`) when items are
    // labelled, else the first; `bsd` sums every starvation sent with the report.
    let br = get("br")
        .and_then(|e| {
            item_of(e, |items| {
                items
                    .iter()
                    .find(|i| i.params.contains_key("v"))
                    .or_else(|| items.first())
            })
        })
        .and_then(|i| rounded(&i.bare_item))
        .map(|v| non_negative_u32(v).min(limits.max_bitrate_kbps));
    let bsd = get("bsd").and_then(|e| match e {
        ListEntry::Item(i) => rounded(&i.bare_item),
        ListEntry::InnerList(l) => {
            let sum: i64 = l.items.iter().filter_map(|i| rounded(&i.bare_item)).sum();
            (!l.items.is_empty()).then_some(sum)
        }
    });
    let ec = get("ec")
        .and_then(|e| item_of(e, |l| l.first()))
        .and_then(|i| match &i.bare_item {
            BareItem::Integer(n) => Some(i64::from(*n).to_string()),
            other => text(other).map(str::to_owned),
        })
        .map(|c| bounded_text(&c, "ec", limits.max_code_len))
        .transpose()?;
    let url = txt("url")
        .map(|u| bounded_text(u, "url", MAX_URL_LEN))
        .transpose()?;
    let host = url
        .as_deref()
        .and_then(url_host)
        .or_else(|| txt("h").and_then(|h| url_host(h).or_else(|| Some(h.to_ascii_lowercase()))))
        .filter(|h| !longer_than(h, limits.max_dimension_len) && !has_unsafe_chars(h));

    let report = CmcdReport {
        e,
        ts,
        sid: sid.to_owned(),
        sn: int("sn"),
        cid: dim("cid")?,
        sf: token("sf"),
        st: token("st"),
        sta: token("sta"),
        msd: duration("msd"),
        bsd: bsd.map(|v| non_negative_u32(v).min(limits.max_duration_ms)),
        br,
        ltc: duration("ltc"),
        dfa: int("dfa").map(non_negative_u32),
        ec,
        rc: int("rc").map(|v| non_negative_u32(v).min(999)),
        ttfb: duration("ttfb"),
        ttlb: duration("ttlb"),
        ot: token("ot"),
    };
    Ok(ParsedLine {
        report,
        cdn: dim("cdn")?,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn parse(line: &str) -> Result<ParsedLine, LineError> {
        parse_line(line, NOW, &Limits::default())
    }

    #[test]
    fn hls_js_play_state_record() {
        let p = parse(&format!(
            r#"cid="live-channel-1",e=ps,sf=h,sid="6e2f-aa",sn=3,st=l,sta=p,ts={NOW},v=2"#
        ))
        .unwrap();
        let r = p.report;
        assert_eq!((r.e.as_str(), r.ts, r.sn), ("ps", NOW, Some(3)));
        assert_eq!(r.sid, "6e2f-aa");
        assert_eq!(r.cid.as_deref(), Some("live-channel-1"));
        assert_eq!(
            (r.sf.as_deref(), r.st.as_deref(), r.sta.as_deref()),
            (Some("h"), Some("l"), Some("p"))
        );
    }

    #[test]
    fn what_players_really_send_is_tolerated() {
        // Spaces around members, a decimal latency (dash.js), an error code as a list of strings
        // (hls.js) or a bare integer (dash.js), labelled bitrates, escapes.
        let p = parse(&format!(
            r#"  e=e, ts={NOW}, sid="s-1", ltc=2042.6, ec=("manifestLoadError"), br=(800;v 64;a), cid="a \"b\" \\c"  "#
        ))
        .unwrap();
        assert_eq!(p.report.ltc, Some(2043));
        assert_eq!(p.report.ec.as_deref(), Some("manifestLoadError"));
        assert_eq!(p.report.br, Some(800));
        assert_eq!(p.report.cid.as_deref(), Some("a \"b\" \\c"));
        let p = parse(&format!("e=e,ts={NOW},sid=\"s-1\",ec=27,br=(6200)")).unwrap();
        assert_eq!(p.report.ec.as_deref(), Some("27"));
        assert_eq!(p.report.br, Some(6200));
        let p = parse(&format!("e=ps,ts={NOW},sid=\"s\",bsd=(1200 300),bs")).unwrap();
        assert_eq!(p.report.bsd, Some(1500));
    }

    #[test]
    fn hosts_and_cdn() {
        let p = parse(&format!(
            r#"e=rr,ts={NOW},sid="s",url="https://Edge-3.CDN-A.example.net:8443/live/seg_1.m4s?CMCD=x",rc=200,ttfb=41,ttlb=90,ot=v"#
        ))
        .unwrap();
        assert_eq!(p.host.as_deref(), Some("edge-3.cdn-a.example.net"));
        assert_eq!(
            (p.report.rc, p.report.ttfb, p.report.ttlb),
            (Some(200), Some(41), Some(90))
        );
        let p = parse(&format!(r#"e=t,ts={NOW},sid="s",cdn="CDN-B""#)).unwrap();
        assert_eq!(p.cdn.as_deref(), Some("cdn-b"));
        assert_eq!(url_host("http://[::1]:8080/x").as_deref(), Some("::1"));
        assert_eq!(url_host("relative/path"), None);
    }

    #[test]
    fn bad_lines_have_reasons() {
        let cases = [
            ("e=ps,ts=1,sid=\"s\",,".to_owned(), "syntax"),
            ("not a dictionary(".to_owned(), "syntax"),
            (format!("e=ps,ts={NOW},sid=\"s\",v=3"), "version"),
            (format!("ts={NOW},sid=\"s\""), "missing_key"),
            ("e=ps,sid=\"s\"".to_owned(), "missing_key"),
            (format!("e=ps,ts={NOW}"), "missing_key"),
            (format!("e=ps,ts={NOW},sid=\"has space\""), "sid"),
            (format!("e=ps,ts={NOW},sid=\"{}\"", "x".repeat(65)), "sid"),
            (format!("e=ps,ts={},sid=\"s\"", NOW + 3_600_000), "future"),
            (format!("e=ps,ts={},sid=\"s\"", NOW - 7_200_000), "too_old"),
            (
                format!("e=ps,ts={NOW},sid=\"s\",cid=\"{}\"", "c".repeat(200)),
                "too_long",
            ),
        ];
        for (line, reason) in cases {
            let err = parse(&line).expect_err(&line);
            assert_eq!(err.reason(), reason, "{line}: {err}");
        }
    }

    #[test]
    fn values_of_the_wrong_type_are_ignored() {
        let p = parse(&format!(
            "e=ps,ts={NOW},sid=\"s\",br=\"fast\",sta=?1,msd=-5"
        ))
        .unwrap();
        assert_eq!(
            (p.report.br, p.report.sta, p.report.msd),
            (None, None, Some(0))
        );
    }

    #[test]
    fn message_round_trips_and_starts_with_the_prefix() {
        let p = parse(&format!("e=ps,ts={NOW},sid=\"s\",sta=s")).unwrap();
        let m = CmcdMessage {
            cmcd: p.report,
            received_at: NOW,
            region: "eu-west".into(),
            cdn: String::new(),
            platform: "web".into(),
            player: "hls.js".into(),
        };
        let bytes = m.encode();
        assert!(bytes.starts_with(CMCD_MESSAGE_PREFIX));
        assert_eq!(CmcdMessage::decode(&bytes).unwrap(), m);
    }
}
