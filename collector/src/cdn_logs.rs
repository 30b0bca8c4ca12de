//! The pure part of `POST /v1/cdn-logs` (CMCD v1 request mode from CDN and origin logs,
//! SPEC §3c): which format a body is in, splitting it into lines, and what the collector adds
//! to each request (region from the client address, CDN, platform and player). No I/O.
//!
//! One bad line never costs the others: each is parsed on its own
//! ([`qoe_schemas::cdn_log`]) and a refused one is counted by reason. The client address of a
//! line is used for its region and then dropped: it is never published.

use crate::cmcd::{CdnHostMap, ClientDefaults};
use crate::ingest::IngestError;
use qoe_schemas::cdn_log::{
    cloudfront_fields, parse_cloudfront_line, parse_json_line, ParsedRequest, RequestMessage,
    CLOUDFRONT_FIELDS,
};
use qoe_schemas::Limits;
use std::net::IpAddr;

/// The line format of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    /// One JSON object a line (`format=json`, the default).
    JsonLines,
    /// CloudFront real-time log records (`format=cloudfront`), tab-separated in the order of
    /// `fields` (default: every documented field).
    CloudFront { fields: Vec<String> },
}

impl LogFormat {
    /// From the request's `format` and `fields` parameters.
    pub fn from_query(format: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        match (format.unwrap_or("json"), fields) {
            ("json" | "jsonl" | "ndjson", None) => Ok(LogFormat::JsonLines),
            ("json" | "jsonl" | "ndjson", Some(_)) => {
                Err("`fields` goes with format=cloudfront".into())
            }
            ("cloudfront", None) => Ok(LogFormat::CloudFront {
                fields: CLOUDFRONT_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
            }),
            ("cloudfront", Some(list)) => Ok(LogFormat::CloudFront {
                fields: cloudfront_fields(list)?,
            }),
            (other, _) => Err(format!(
                "format {:?} is not known (json, cloudfront)",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

/// JSON lines (`application/x-ndjson`, `application/jsonl`, `application/json`), text
/// (`text/plain`, `text/tab-separated-values`), or no type.
pub fn check_content_type(value: Option<&str>) -> Result<(), IngestError> {
    let Some(value) = value else { return Ok(()) };
    match crate::ingest::media_type_essence(value).as_str() {
        "application/x-ndjson"
        | "application/jsonl"
        | "application/json"
        | "application/jsonlines"
        | "text/plain"
        | "text/tab-separated-values"
        | "" => Ok(()),
        _ => Err(IngestError::UnsupportedMediaType(
            value.chars().take(64).collect(),
        )),
    }
}

/// What the collector knows of a log stream besides its lines: the `cdn` it was configured
/// with (one endpoint URL per CDN), else each request's host through `--cdn-host`.
pub struct StreamContext<'a> {
    pub cdn: Option<&'a str>,
    pub hosts: &'a CdnHostMap,
    pub limits: &'a Limits,
    /// Most lines one body may hold; lines beyond are refused as `too_many_lines`.
    pub max_lines: usize,
    /// A line's region from its client address (GeoIP), if that says anything.
    pub region_of: &'a (dyn Fn(IpAddr) -> Option<String> + Sync),
}

/// The requests of one body, ready to publish, and the reasons of the lines that were not.
#[derive(Debug, Default)]
pub struct RequestBatch {
    /// `(key, message value)`, in body order; the key is the session id, else the request id.
    pub messages: Vec<(String, Vec<u8>)>,
    pub rejected: Vec<&'static str>,
}

/// Splits a decompressed body on LF (CR LF and blank lines are fine), parses every line and
/// builds its message. At most `stream.max_lines` requests per body; lines beyond are refused
/// as `too_many_lines`.
pub fn process(
    body: &[u8],
    format: &LogFormat,
    received_at: i64,
    stream: &StreamContext<'_>,
) -> RequestBatch {
    let mut batch = RequestBatch::default();
    for raw in body.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(raw) else {
            batch.rejected.push("encoding");
            continue;
        };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if batch.messages.len() >= stream.max_lines {
            batch.rejected.push("too_many_lines");
            continue;
        }
        let parsed = match format {
            LogFormat::JsonLines => parse_json_line(line),
            LogFormat::CloudFront { fields } => parse_cloudfront_line(line, fields),
        };
        match parsed {
            Ok(p) => {
                let message = message(p, received_at, stream);
                batch
                    .messages
                    .push((message.key().to_owned(), message.encode()));
            }
            Err(e) => batch.rejected.push(e.reason()),
        }
    }
    batch
}

fn message(p: ParsedRequest, received_at: i64, stream: &StreamContext<'_>) -> RequestMessage {
    // The address first, as for beacons: a line's own region only when it resolves to none.
    let region = p
        .client_ip
        .and_then(|ip| (stream.region_of)(ip))
        .or(p.region)
        .unwrap_or_else(|| "unknown".to_owned());
    let cdn = stream
        .cdn
        .map(str::to_owned)
        .or_else(|| stream.hosts.resolve(&p.request.host).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let (platform, player) = native_player(p.user_agent.as_deref()).unwrap_or_else(|| {
        let d = ClientDefaults::new(None, None, None, p.user_agent.as_deref(), stream.limits);
        (d.platform, d.player)
    });
    RequestMessage {
        req: p.request,
        received_at,
        region,
        cdn,
        platform,
        player,
    }
}

/// The platform and player family of the native players' user agents, which browser
/// detection does not know: Media3/ExoPlayer and Apple's AVPlayer (`AppleCoreMedia`).
pub fn native_player(user_agent: Option<&str>) -> Option<(String, String)> {
    let ua = user_agent?;
    let (platform, player) = if ua.contains("ExoPlayerLib") || ua.contains("AndroidXMedia3") {
        ("android", "media3")
    } else if ua.starts_with("AppleCoreMedia/") {
        let platform = if ua.contains("Apple TV") || ua.contains("tvOS") {
            "tvos"
        } else if ua.contains("Macintosh") || ua.contains("macOS") {
            "macos"
        } else {
            "ios"
        };
        (platform, "avplayer")
    } else {
        return None;
    };
    Some((platform.to_owned(), player.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_500_100_000;

    fn context<'a>(
        cdn: Option<&'a str>,
        hosts: &'a CdnHostMap,
        limits: &'a Limits,
    ) -> StreamContext<'a> {
        StreamContext {
            cdn,
            hosts,
            limits,
            max_lines: limits.max_events,
            region_of: &|ip| (ip.to_string() == "203.0.113.9").then(|| "eu-west".to_owned()),
        }
    }

    #[test]
    fn formats_from_the_query() {
        assert_eq!(LogFormat::from_query(None, None), Ok(LogFormat::JsonLines));
        let LogFormat::CloudFront { fields } =
            LogFormat::from_query(Some("cloudfront"), None).unwrap()
        else {
            panic!("not cloudfront")
        };
        assert_eq!(fields.len(), CLOUDFRONT_FIELDS.len());
        assert!(LogFormat::from_query(Some("cloudfront"), Some("timestamp,sc-status")).is_ok());
        assert!(LogFormat::from_query(Some("cloudfront"), Some("timestamp")).is_err());
        assert!(LogFormat::from_query(Some("csv"), None)
            .unwrap_err()
            .contains("not known"));
        assert!(LogFormat::from_query(None, Some("timestamp")).is_err());
    }

    #[test]
    fn a_body_of_good_and_bad_lines() {
        let hosts = CdnHostMap::parse(&["cdn-a.example.net=cdn-a".into()]).unwrap();
        let limits = Limits::default();
        let mut body = concat!(
            r#"{"ts":1764500000,"status":200,"url":"https://e1.cdn-a.example.net/v/1.m4s","client_ip":"203.0.113.9","user_agent":"ExoPlayerLib/2.19.1","cmcd":"sid=\"s1\",br=800"}"#,
            "\r\n\n",
            "not json\n",
            r#"{"ts":1764500000,"status":404,"url":"https://other.example.org/x","user_agent":"AppleCoreMedia/1.0.0.22A3354 (Apple TV; U; CPU OS 18_0)"}"#,
            "\n"
        )
        .as_bytes()
        .to_vec();
        body.extend_from_slice(b"\xff\n");
        let batch = process(
            &body,
            &LogFormat::JsonLines,
            NOW,
            &context(None, &hosts, &limits),
        );
        assert_eq!(batch.rejected, vec!["json", "encoding"]);
        assert_eq!(batch.messages.len(), 2);
        let first = RequestMessage::decode(&batch.messages[0].1).unwrap();
        assert_eq!(batch.messages[0].0, "s1");
        assert_eq!(
            (
                first.region.as_str(),
                first.cdn.as_str(),
                first.platform.as_str(),
                first.player.as_str()
            ),
            ("eu-west", "cdn-a", "android", "media3")
        );
        assert_eq!(first.received_at, NOW);
        let second = RequestMessage::decode(&batch.messages[1].1).unwrap();
        assert_eq!(batch.messages[1].0, second.req.request_id);
        assert_eq!(
            (
                second.region.as_str(),
                second.cdn.as_str(),
                second.platform.as_str(),
                second.player.as_str()
            ),
            ("unknown", "unknown", "tvos", "avplayer")
        );
        // A stream configured for one CDN: every request is that CDN's.
        let batch = process(
            &body,
            &LogFormat::JsonLines,
            NOW,
            &context(Some("cdn-z"), &hosts, &limits),
        );
        let cdns: Vec<String> = batch
            .messages
            .iter()
            .map(|(_, m)| RequestMessage::decode(m).unwrap().cdn)
            .collect();
        assert_eq!(cdns, ["cdn-z", "cdn-z"]);
        // The client address is used, never published.
        assert!(!String::from_utf8_lossy(&batch.messages[0].1).contains("203.0.113.9"));
    }

    #[test]
    fn lines_beyond_the_limit_are_refused() {
        let limits = Limits {
            max_events: 2,
            ..Limits::default()
        };
        let hosts = CdnHostMap::default();
        let line = "{\"ts\":1764500000,\"status\":200,\"url\":\"/a\"}\n";
        let batch = process(
            line.repeat(4).as_bytes(),
            &LogFormat::JsonLines,
            NOW,
            &context(None, &hosts, &limits),
        );
        assert_eq!(batch.messages.len(), 2);
        assert_eq!(batch.rejected, vec!["too_many_lines"; 2]);
    }

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("application/x-ndjson"),
            Some("application/json; charset=utf-8"),
            Some("text/tab-separated-values"),
        ] {
            assert!(check_content_type(ok).is_ok(), "{ok:?}");
        }
        assert!(check_content_type(Some("application/cmcd")).is_err());
    }
}
