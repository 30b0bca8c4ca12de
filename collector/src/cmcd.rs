//! The pure part of `POST /v1/cmcd` (CMCD v2 event mode): media types, splitting a body into
//! reports, and what the collector adds to each one (region, CDN, platform, player). No I/O.
//!
//! One bad line never costs the others: every line is parsed on its own
//! ([`qoe_schemas::cmcd::parse_line`]) and a refused one is counted by reason, because players
//! cannot be told (they drop data silently on any 4xx, so the request still gets 204).

use crate::ingest::IngestError;
use qoe_schemas::cmcd::{parse_line, CdnSource, CmcdMessageRef};
use qoe_schemas::validate::{has_unsafe_chars, longer_than, normalize_dimension};
use qoe_schemas::Limits;

/// `application/cmcd` (CTA-5004-B), `text/cmcd` (its drafts) and `text/plain`, with any
/// parameters; a missing type is accepted.
pub fn check_content_type(value: Option<&str>) -> Result<(), IngestError> {
    let Some(value) = value else { return Ok(()) };
    match crate::ingest::media_type_essence(value).as_str() {
        "application/cmcd" | "text/cmcd" | "text/plain" | "" => Ok(()),
        _ => Err(IngestError::UnsupportedMediaType(
            value.chars().take(64).collect(),
        )),
    }
}

/// Host-to-CDN rules (`--cdn-host SUFFIX=CDN`): a host is mapped by the longest suffix it equals
/// or ends with after a dot, so `edge-3.cdn-a.example.net` matches `cdn-a.example.net`.
#[derive(Debug, Clone, Default)]
pub struct CdnHostMap {
    /// (suffix, CDN), longest suffix first.
    rules: Vec<(String, String)>,
}

/// A `--cdn-host` rule that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--cdn-host {rule:?}: {problem}")]
pub struct CdnHostRuleError {
    pub rule: String,
    pub problem: &'static str,
}

impl CdnHostMap {
    /// Parses `SUFFIX=CDN` rules.
    pub fn parse(rules: &[String]) -> Result<Self, CdnHostRuleError> {
        let mut parsed = Vec::new();
        for rule in rules {
            let refused = |problem| CdnHostRuleError {
                rule: rule.clone(),
                problem,
            };
            let (suffix, cdn) = rule
                .split_once('=')
                .ok_or_else(|| refused("expected SUFFIX=CDN"))?;
            let suffix = suffix.trim().trim_start_matches('.').to_ascii_lowercase();
            let cdn = normalize_dimension(cdn);
            if suffix.is_empty() || cdn.is_empty() {
                return Err(refused("empty host suffix or CDN"));
            }
            parsed.push((suffix, cdn));
        }
        parsed.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(CdnHostMap { rules: parsed })
    }

    pub fn resolve(&self, host: &str) -> Option<&str> {
        self.rules.iter().find_map(|(suffix, cdn)| {
            let matches = host == suffix
                || host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|rest| rest.ends_with('.'));
            matches.then_some(cdn.as_str())
        })
    }
}

/// What the collector knows of the client besides its reports: set by the page in the target
/// URL (`?cdn=...&platform=...&player=...`), else read from the User-Agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientDefaults {
    pub cdn: Option<String>,
    pub platform: String,
    pub player: String,
}

/// A dimension value a client gave (a target URL's or log stream's parameter): normalised, or
/// `None` when empty, too long or unsafe.
pub(crate) fn dimension(value: Option<&str>, limits: &Limits) -> Option<String> {
    let v = value?.trim();
    (!v.is_empty() && !longer_than(v, limits.max_dimension_len) && !has_unsafe_chars(v))
        .then(|| normalize_dimension(v))
}

impl ClientDefaults {
    /// From the target URL's parameters and the User-Agent. Without a `platform` parameter a
    /// browser is `web` (anything else `unknown`); without a `player` parameter the player is
    /// named after the browser (`chrome`, `safari`, ...), the most the User-Agent tells.
    pub fn new(
        cdn: Option<&str>,
        platform: Option<&str>,
        player: Option<&str>,
        user_agent: Option<&str>,
        limits: &Limits,
    ) -> Self {
        let parsed = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua));
        let browser = parsed
            .as_ref()
            .map(|r| r.name)
            .filter(|n| !n.is_empty() && *n != "UNKNOWN");
        let is_browser = parsed
            .as_ref()
            .is_some_and(|r| matches!(r.category, "pc" | "smartphone" | "mobilephone"));
        ClientDefaults {
            cdn: dimension(cdn, limits),
            platform: dimension(platform, limits)
                .unwrap_or_else(|| if is_browser { "web" } else { "unknown" }.to_owned()),
            player: dimension(player, limits)
                .or_else(|| dimension(browser, limits))
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// The reports of one body, ready to publish, and the reasons of the lines that were not.
#[derive(Debug, Default)]
pub struct CmcdBatch {
    /// `(sid, message value)`, in body order; the sid is the Kafka key.
    pub messages: Vec<(String, Vec<u8>)>,
    pub rejected: Vec<&'static str>,
}

/// Splits a decompressed body on LF (blank lines and a trailing LF are fine), parses every line
/// and builds its message. At most `limits.max_events` reports per body; lines beyond are
/// refused as `too_many_lines`.
pub fn process(
    body: &[u8],
    received_at: i64,
    region: &str,
    defaults: &ClientDefaults,
    hosts: &CdnHostMap,
    limits: &Limits,
) -> CmcdBatch {
    let mut batch = CmcdBatch::default();
    for raw in body.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(raw) else {
            batch.rejected.push("encoding");
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        if batch.messages.len() >= limits.max_events {
            batch.rejected.push("too_many_lines");
            continue;
        }
        match parse_line(line, received_at, limits) {
            Ok(parsed) => {
                let (cdn, source) = if let Some(cdn) = parsed.cdn.as_deref() {
                    (cdn, CdnSource::ReportKey)
                } else if let Some(cdn) = parsed.host.as_deref().and_then(|h| hosts.resolve(h)) {
                    (cdn, CdnSource::ObjectHost)
                } else {
                    (
                        defaults.cdn.as_deref().unwrap_or_default(),
                        CdnSource::TargetUrl,
                    )
                };
                let message = CmcdMessageRef {
                    cmcd: &parsed.report,
                    received_at,
                    region,
                    cdn,
                    platform: &defaults.platform,
                    player: &defaults.player,
                    cdn_rank: source as u8,
                };
                batch
                    .messages
                    .push((parsed.report.sid.clone(), message.encode()));
            }
            Err(e) => batch.rejected.push(e.reason()),
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::cmcd::CmcdMessage;

    const NOW: i64 = 1_790_000_000_000;
    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

    fn defaults() -> ClientDefaults {
        ClientDefaults::new(None, None, Some("hls.js"), Some(CHROME), &Limits::default())
    }

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("application/cmcd"),
            Some("text/cmcd; charset=utf-8"),
            Some("text/plain"),
        ] {
            assert!(check_content_type(ok).is_ok(), "{ok:?}");
        }
        assert!(check_content_type(Some("application/json")).is_err());
    }

    #[test]
    fn host_map_takes_the_longest_suffix() {
        let map = CdnHostMap::parse(&[
            "example.net=Origin".into(),
            "cdn-a.example.net=cdn-a".into(),
        ])
        .unwrap();
        assert_eq!(map.resolve("edge-3.cdn-a.example.net"), Some("cdn-a"));
        assert_eq!(map.resolve("cdn-a.example.net"), Some("cdn-a"));
        assert_eq!(map.resolve("www.example.net"), Some("origin"));
        assert_eq!(map.resolve("xcdn-a.example.com"), None);
        assert_eq!(map.resolve("badexample.net"), None);
        assert!(CdnHostMap::parse(&["nothing".into()]).is_err());
    }

    #[test]
    fn platform_and_player_from_the_user_agent_and_the_target_url() {
        let d = ClientDefaults::new(None, None, None, Some(CHROME), &Limits::default());
        assert_eq!((d.platform.as_str(), d.player.as_str()), ("web", "chrome"));
        let d = ClientDefaults::new(
            Some("CDN-A"),
            Some("TV"),
            Some("Shaka"),
            Some(CHROME),
            &Limits::default(),
        );
        assert_eq!(
            (d.cdn.as_deref(), d.platform.as_str(), d.player.as_str()),
            (Some("cdn-a"), "tv", "shaka")
        );
        let d = ClientDefaults::new(None, None, None, None, &Limits::default());
        assert_eq!(
            (d.platform.as_str(), d.player.as_str()),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn bad_lines_are_counted_and_good_ones_kept() {
        let mut bytes = format!(
            "e=ps,sta=s,ts={NOW},sid=\"a\",v=2\n\nnot(valid\ne=ps,ts={NOW}\n\
             e=rr,ts={NOW},sid=\"a\",url=\"https://e1.cdn-a.example.net/s.m4s\",rc=200\n"
        )
        .into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        let hosts = CdnHostMap::parse(&["cdn-a.example.net=cdn-a".into()]).unwrap();
        let batch = process(
            &bytes,
            NOW,
            "eu-west",
            &defaults(),
            &hosts,
            &Limits::default(),
        );
        assert_eq!(batch.rejected, vec!["syntax", "missing_key", "encoding"]);
        assert_eq!(batch.messages.len(), 2);
        let rr = CmcdMessage::decode(&batch.messages[1].1).unwrap();
        assert_eq!(batch.messages[1].0, "a");
        assert_eq!(
            (rr.cdn.as_str(), rr.region.as_str(), rr.player.as_str()),
            ("cdn-a", "eu-west", "hls.js")
        );
        let ps = CmcdMessage::decode(&batch.messages[0].1).unwrap();
        assert_eq!(
            ps.cdn, "",
            "no CDN said: the session's last known one is used later"
        );
    }

    #[test]
    fn lines_beyond_the_limit_are_refused() {
        let line = format!("e=t,ts={NOW},sid=\"a\"\n");
        let limits = Limits {
            max_events: 3,
            ..Limits::default()
        };
        let batch = process(
            line.repeat(5).as_bytes(),
            NOW,
            "r",
            &defaults(),
            &CdnHostMap::default(),
            &limits,
        );
        assert_eq!(batch.messages.len(), 3);
        assert_eq!(batch.rejected, vec!["too_many_lines"; 2]);
    }
}
