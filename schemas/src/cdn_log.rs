//! CMCD v1 request mode from CDN and origin logs (SPEC §3c): how one line of a `POST
//! /v1/cdn-logs` body becomes one media request ([`parse_json_line`], [`parse_cloudfront_line`]),
//! and the Kafka message that carries it ([`RequestMessage`]).
//!
//! Native players (Media3/ExoPlayer, AVPlayer, Bitmovin, THEOplayer) and web players in their
//! default mode send CMCD v1 (CTA-5004) with every media request; the data reaches the CDN, which
//! hands it over in its logs. A line is one request: its time, status, bytes, time to first and
//! last byte, host and URL, client address and user agent, and its CMCD data, which may come
//!
//! - as the `CMCD=` query parameter of the URL (or of a separate query field),
//! - as the four `CMCD-Request`, `CMCD-Object`, `CMCD-Status`, `CMCD-Session` header values,
//! - or as one field per key (`cmcd_br`, or CloudFront's `cmcd-encoded-bitrate`).
//!
//! Every form is merged into one [`CmcdRequest`]. Unknown keys, v2 keys included, are ignored;
//! a known key whose value has the wrong type is ignored (CTA-5004 §4). A line without a usable
//! time, status or URL is refused with a reason the collector counts.
//!
//! A shipper that retries sends the same lines again: a request's [`CdnRequest::request_id`] is
//! the line's own id (`request_id`, CloudFront's `x-edge-request-id`) or else a hash of the
//! line's bytes, so the same line is the same request wherever it arrives again.

use crate::cmcd::MAX_REQUEST_MS;
use crate::validate::{has_unsafe_chars, longer_than};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sfv::{BareItem, ListEntry, Parser};
use std::net::IpAddr;

mod cloudfront;

pub use cloudfront::{cloudfront_fields, parse_cloudfront_line, CLOUDFRONT_FIELDS};

/// Every request message value starts with this, which neither a beacon event (`{"v":`) nor a
/// CMCD report (`{"cmcd":`) does.
pub const REQUEST_MESSAGE_PREFIX: &[u8] = b"{\"req\":";

/// Longest host, path, content id or session id kept.
pub const MAX_HOST_LEN: usize = 253;
pub const MAX_PATH_LEN: usize = 1024;
pub const MAX_ID_LEN: usize = 128;

/// The CMCD v1 keys of one request (CTA-5004 Table 3), typed. Absent keys are `None` / false.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CmcdRequest {
    /// Encoded bitrate of the requested object, kbps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub br: Option<u32>,
    /// Buffer length, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bl: Option<u32>,
    /// Buffer starvation since the previous request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bs: bool,
    /// Content id (the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// Object duration, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<u32>,
    /// Deadline: buffer time left when the request was made, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dl: Option<u32>,
    /// Measured throughput, kbps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp: Option<u32>,
    /// Object type token: `m a v av i c tt k o`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ot: Option<String>,
    /// Playback rate, in thousandths (1000 is real time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u32>,
    /// Requested maximum throughput, kbps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp: Option<u32>,
    /// Streaming format token: `d` DASH, `h` HLS, `s` Smooth, `o` other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sf: Option<String>,
    /// Session id: one playback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Stream type token: `v` VOD, `l` live (v2 adds `ll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<String>,
    /// The request is for startup or recovery after a starvation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub su: bool,
    /// Top bitrate the client can play, kbps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tb: Option<u32>,
    /// CMCD version (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One request from a CDN or origin log, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CdnRequest {
    /// When the request was received, ms since the epoch (the CDN's clock).
    pub time: i64,
    /// HTTP status; 0 when the log says none was sent.
    pub status: u16,
    /// Response bytes sent.
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttlb: Option<u32>,
    /// Lower-case, without port.
    pub host: String,
    /// The URL's path, without query.
    pub path: String,
    /// The line's own id, else `h:` and a hash of the line (see the module doc).
    pub request_id: String,
    pub cmcd: CmcdRequest,
}

/// A line's request, with what the collector resolves and then drops: the client address
/// (to a region, never stored) and the user agent (to a platform and player).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub request: CdnRequest,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The region the log line names (a CDN's geo field), used when the client address
    /// resolves to none.
    pub region: Option<String>,
}

/// A request as published to Kafka (key: the CMCD `sid`, else the request id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMessage {
    /// First field, so the message value starts with [`REQUEST_MESSAGE_PREFIX`].
    pub req: CdnRequest,
    pub received_at: i64,
    pub region: String,
    pub cdn: String,
    pub platform: String,
    pub player: String,
}

impl RequestMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Strings, numbers and booleans always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The Kafka key: a session's requests stay in one partition, in order.
    pub fn key(&self) -> &str {
        self.req.cmcd.sid.as_deref().unwrap_or(&self.req.request_id)
    }
}

/// Why a line was skipped. [`LogLineError::reason`] is the label counted in `/metrics`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogLineError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("{got} tab-separated fields where the configured format has {want}")]
    FieldCount { got: usize, want: usize },
    #[error("required field `{0}` is missing or not usable")]
    Missing(&'static str),
    #[error("`{0}` is too long")]
    TooLong(&'static str),
    #[error("`{0}` contains control or bidirectional formatting characters")]
    Unsafe(&'static str),
}

impl LogLineError {
    pub fn reason(&self) -> &'static str {
        match self {
            LogLineError::Json(_) => "json",
            LogLineError::FieldCount { .. } => "field_count",
            LogLineError::Missing(_) => "missing_field",
            LogLineError::TooLong(_) => "too_long",
            LogLineError::Unsafe(_) => "unsafe_chars",
        }
    }
}

/// One JSON line of a log stream (Fastly, Akamai DataStream, Google Media CDN, an origin's own
/// access log). Field names are matched case-insensitively, `_` and `-` alike; README.md
/// ("CDN logs") lists them.
pub fn parse_json_line(line: &str) -> Result<ParsedRequest, LogLineError> {
    let value: Value = serde_json::from_str(line).map_err(|e| LogLineError::Json(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(LogLineError::Json("not an object".into()));
    };
    let fields: Vec<(String, &Value)> = object
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase().replace('_', "-"), v))
        .collect();
    let get = |names: &[&str]| {
        names.iter().find_map(|n| {
            fields
                .iter()
                .find(|(k, v)| k == n && !v.is_null())
                .map(|(_, v)| *v)
        })
    };
    let time = get(&["timestamp", "time", "ts", "start-time", "date"])
        .and_then(time_ms)
        .ok_or(LogLineError::Missing("timestamp"))?;
    let status = get(&["status", "sc-status", "status-code", "response-status"])
        .and_then(number)
        .and_then(|s| u16::try_from(s.round() as i64).ok())
        .ok_or(LogLineError::Missing("status"))?;
    let url = get(&["url", "uri", "request-url", "path", "cs-uri-stem"]).and_then(Value::as_str);
    let url = url.ok_or(LogLineError::Missing("url"))?;
    let (host_in_url, path, query) = split_url(url);

    let mut cmcd = CmcdRequest::default();
    if let Some(q) = query {
        merge_query(&mut cmcd, q);
    }
    if let Some(q) = get(&["query", "cs-uri-query", "query-string"]).and_then(Value::as_str) {
        merge_query(&mut cmcd, q);
    }
    if let Some(dict) = get(&["cmcd"]).and_then(Value::as_str) {
        merge_dictionary(&mut cmcd, &decode_percent(dict));
    }
    let headers = get(&["headers", "request-headers"]).and_then(Value::as_object);
    for name in ["cmcd-request", "cmcd-object", "cmcd-status", "cmcd-session"] {
        let from_header = headers.and_then(|h| header(h, name));
        if let Some(v) = from_header.or_else(|| get(&[name]).and_then(Value::as_str)) {
            merge_dictionary(&mut cmcd, v);
        }
    }
    for (k, v) in &fields {
        if let Some(key) = k.strip_prefix("cmcd-") {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            set_text(&mut cmcd, key, &text);
        }
    }
    let ms = |names: &[&str]| get(names).and_then(number).map(|n| n.round());
    let raw = Raw {
        time,
        status,
        bytes: get(&["bytes", "sc-bytes", "bytes-sent", "response-bytes", "size"])
            .and_then(number)
            .map_or(0, |b| b.max(0.0) as u64),
        ttfb: ms(&["ttfb-ms", "ttfb", "time-to-first-byte-ms"]),
        ttlb: ms(&["ttlb-ms", "ttlb", "duration-ms", "time-taken-ms"]),
        host: get(&["host", "cs-host", "hostname"])
            .and_then(Value::as_str)
            .or(host_in_url)
            .unwrap_or(""),
        path,
        request_id: get(&["request-id", "id", "x-edge-request-id"]).and_then(Value::as_str),
        client_ip: get(&["client-ip", "c-ip", "ip", "remote-addr", "client"])
            .and_then(Value::as_str),
        user_agent: get(&["user-agent", "ua", "cs-user-agent"])
            .and_then(Value::as_str)
            .map(str::to_owned),
        region: get(&["region", "client-region", "geo-region"])
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    raw.finish(line, cmcd)
}

/// The fields every format yields, before validation.
struct Raw<'a> {
    time: i64,
    status: u16,
    bytes: u64,
    ttfb: Option<f64>,
    ttlb: Option<f64>,
    host: &'a str,
    path: &'a str,
    request_id: Option<&'a str>,
    client_ip: Option<&'a str>,
    user_agent: Option<String>,
    region: Option<String>,
}

impl Raw<'_> {
    fn finish(self, line: &str, mut cmcd: CmcdRequest) -> Result<ParsedRequest, LogLineError> {
        let host = self
            .host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.host, |(h, _)| h)
            .to_ascii_lowercase();
        checked("host", &host, MAX_HOST_LEN)?;
        checked("path", self.path, MAX_PATH_LEN)?;
        let request_id = match self.request_id {
            Some(id) => {
                checked("request_id", id, MAX_ID_LEN)?;
                id.to_owned()
            }
            None => format!("h:{:016x}", crate::fnv1a(line.trim().as_bytes())),
        };
        // An unusable id is dropped, not the request: it still counts for its CDN.
        for id in [&mut cmcd.sid, &mut cmcd.cid] {
            if id
                .as_deref()
                .is_some_and(|v| v.is_empty() || longer_than(v, MAX_ID_LEN) || has_unsafe_chars(v))
            {
                *id = None;
            }
        }
        for token in [&mut cmcd.ot, &mut cmcd.sf, &mut cmcd.st] {
            if token
                .as_ref()
                .is_some_and(|t| t.len() > 4 || has_unsafe_chars(t))
            {
                *token = None;
            }
        }
        let request_ms = |v: Option<f64>| {
            v.filter(|v| v.is_finite() && *v >= 0.0 && *v <= f64::from(MAX_REQUEST_MS))
                .map(|v| v as u32)
        };
        Ok(ParsedRequest {
            request: CdnRequest {
                time: self.time,
                status: self.status,
                bytes: self.bytes,
                ttfb: request_ms(self.ttfb),
                ttlb: request_ms(self.ttlb),
                host,
                path: self.path.to_owned(),
                request_id,
                cmcd,
            },
            client_ip: self.client_ip.and_then(|ip| ip.trim().parse().ok()),
            user_agent: self.user_agent,
            region: self
                .region
                .filter(|r| !r.trim().is_empty() && !longer_than(r, 64) && !has_unsafe_chars(r))
                .map(|r| crate::validate::normalize_dimension(&r)),
        })
    }
}

fn checked(name: &'static str, value: &str, max: usize) -> Result<(), LogLineError> {
    if longer_than(value, max) {
        return Err(LogLineError::TooLong(name));
    }
    if has_unsafe_chars(value) {
        return Err(LogLineError::Unsafe(name));
    }
    Ok(())
}

/// `(host, path, query)` of an absolute URL, or `(None, path, query)` of a path.
fn split_url(url: &str) -> (Option<&str>, &str, Option<&str>) {
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    match without_query.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..], query),
            None => (Some(rest), "/", query),
        },
        None => (None, without_query, query),
    }
}

/// The `CMCD` parameter of a query string, merged into `cmcd`.
fn merge_query(cmcd: &mut CmcdRequest, query: &str) {
    for (name, value) in form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
        if name == "CMCD" {
            merge_dictionary(cmcd, &value);
        }
    }
}

fn decode_percent(s: &str) -> String {
    if s.contains('%') {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    } else {
        s.to_owned()
    }
}

/// A CMCD dictionary (`br=3200,bs,cid="x",ot=v`) merged into `cmcd`: keys it does not know
/// and values of the wrong type are ignored; text that is no dictionary adds nothing.
fn merge_dictionary(cmcd: &mut CmcdRequest, text: &str) {
    let Ok(dictionary) = Parser::new(text.trim()).parse_dictionary() else {
        return;
    };
    for (key, entry) in &dictionary {
        match entry {
            ListEntry::Item(item) => set_item(cmcd, key.as_str(), &item.bare_item),
            // v2 gives some keys per media type (`bl=(4000;v 3000;a)`): the video one, else
            // the first.
            ListEntry::InnerList(list) => {
                let item = list
                    .items
                    .iter()
                    .find(|i| i.params.contains_key("v"))
                    .or_else(|| list.items.first());
                if let Some(item) = item {
                    set_item(cmcd, key.as_str(), &item.bare_item);
                }
            }
        }
    }
}

fn set_item(cmcd: &mut CmcdRequest, key: &str, item: &BareItem) {
    let number = || -> Option<u32> {
        let n = match (item.as_integer(), item.as_decimal()) {
            (Some(i), _) => i64::from(i) as f64,
            (None, Some(d)) => i64::from(d.as_integer_scaled_1000()) as f64 / 1000.0,
            _ => return None,
        };
        (n >= 0.0 && n <= f64::from(u32::MAX)).then(|| n.round() as u32)
    };
    let text = || -> Option<String> {
        item.as_string()
            .map(|s| s.as_str().to_owned())
            .or_else(|| item.as_token().map(|t| t.as_str().to_owned()))
    };
    match key {
        "br" => cmcd.br = number().or(cmcd.br),
        "bl" => cmcd.bl = number().or(cmcd.bl),
        "bs" => cmcd.bs = item.as_boolean().unwrap_or(cmcd.bs),
        "su" => cmcd.su = item.as_boolean().unwrap_or(cmcd.su),
        "cid" => cmcd.cid = text().or(cmcd.cid.take()),
        "sid" => cmcd.sid = text().or(cmcd.sid.take()),
        "d" => cmcd.d = number().or(cmcd.d),
        "dl" => cmcd.dl = number().or(cmcd.dl),
        "mtp" => cmcd.mtp = number().or(cmcd.mtp),
        "ot" => cmcd.ot = text().or(cmcd.ot.take()),
        "pr" => {
            let thousandths = match (item.as_integer(), item.as_decimal()) {
                (Some(i), _) => Some(i64::from(i) * 1000),
                (None, Some(d)) => Some(i64::from(d.as_integer_scaled_1000())),
                _ => None,
            };
            cmcd.pr = thousandths.and_then(|t| u32::try_from(t).ok()).or(cmcd.pr);
        }
        "rtp" => cmcd.rtp = number().or(cmcd.rtp),
        "sf" => cmcd.sf = text().or(cmcd.sf.take()),
        "st" => cmcd.st = text().or(cmcd.st.take()),
        "tb" => cmcd.tb = number().or(cmcd.tb),
        "v" => cmcd.v = number().or(cmcd.v),
        _ => {}
    }
}

/// One key's value given as plain text (a log field of its own): numbers, `true`/`1` for the
/// booleans, strings with or without their quotes.
fn set_text(cmcd: &mut CmcdRequest, key: &str, value: &str) {
    let value = value.trim();
    if value.is_empty() || value == "-" {
        return;
    }
    let item = match key {
        "bs" | "su" => BareItem::Boolean(matches!(value, "true" | "1" | "?1" | "bs" | "su")),
        "cid" | "sid" | "ot" | "sf" | "st" => {
            let unquoted = value.trim_matches('"');
            match sfv::String::from_string(unquoted.to_owned()) {
                Ok(s) => BareItem::String(s),
                Err(_) => return,
            }
        }
        _ => match Parser::new(value).parse_item() {
            Ok(item) => item.bare_item,
            Err(_) => return,
        },
    };
    set_item(cmcd, key, &item);
}

fn header<'a>(headers: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A log time: epoch seconds (below 1e11, decimals allowed) or milliseconds, or RFC 3339 text.
fn time_ms(v: &Value) -> Option<i64> {
    let ms = match number(v) {
        Some(n) if n < 1e11 => n * 1000.0,
        Some(n) => n,
        None => {
            let text = v.as_str()?.trim();
            let utc = text
                .strip_suffix("+00:00")
                .map_or(text.to_owned(), |t| format!("{t}Z"));
            let t = humantime::parse_rfc3339_weak(utc.trim_end_matches('Z')).ok()?;
            t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as f64
        }
    };
    (ms.is_finite() && ms > 0.0).then(|| ms.round() as i64)
}

#[cfg(test)]
mod tests;
