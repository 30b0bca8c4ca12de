//! Native app viewers (Media3 on Android, AVPlayer on iOS): they send no beacons; their CDN logs
//! the requests they make, with the CMCD v1 keys those players send, and a log stream delivers
//! the lines to `POST /v1/cdn-logs` (SPEC §3c). Pure: a view's events become the requests its
//! player made for them.
//!
//! What a player requests for its events: the manifest at `view_start` (startup), the first
//! video segment at `first_frame` (startup, its buffer empty), one 4 s segment per 4 s played
//! of each heartbeat's `playing_ms` (the first after a stall reports starvation, `bs`), and a
//! failed segment for a fatal error. Bitrates, buffer and throughput follow the events.

use crate::population::ViewContext;
use qoe_schemas::{EventType, QoeEvent, StreamType};
use std::collections::HashMap;

/// Media segment duration, ms.
pub const SEGMENT_MS: u32 = 4_000;

/// One logged request, as the simulator's log stream sends it and its truth counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    pub request_id: String,
    pub time: i64,
    pub status: u16,
    pub ttfb_ms: u32,
    pub sid: String,
    pub cid: String,
    /// `l` or `v`.
    pub st: &'static str,
    /// `h` or `d`.
    pub sf: &'static str,
    /// `m` manifest, `v` video.
    pub ot: &'static str,
    pub br: Option<u32>,
    pub d: Option<u32>,
    pub bl: Option<u32>,
    pub mtp: Option<u32>,
    pub bs: bool,
    pub su: bool,
    pub region: &'static str,
    pub cdn: &'static str,
    pub platform: &'static str,
}

impl LoggedRequest {
    /// The line a JSON log stream carries for it (the CMCD keys as the query parameter, as
    /// players in query mode send them; the region as the CDN's geo field).
    pub fn json_line(&self) -> String {
        let mut cmcd = vec![format!("cid=\"{}\"", self.cid)];
        for (k, v) in [
            ("br", self.br),
            ("bl", self.bl),
            ("d", self.d),
            ("mtp", self.mtp),
        ] {
            if let Some(v) = v {
                cmcd.push(format!("{k}={v}"));
            }
        }
        if self.bs {
            cmcd.push("bs".into());
        }
        cmcd.push(format!(
            "ot={},sf={},sid=\"{}\",st={}",
            self.ot, self.sf, self.sid, self.st
        ));
        if self.su {
            cmcd.push("su".into());
        }
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("CMCD", &cmcd.join(","))
            .finish();
        let user_agent = match self.platform {
            "android" => "ExoPlayerLib/2.19.1 (Linux; Android 14)",
            _ => "AppleCoreMedia/1.0.0.22A3354 (iPhone; U; CPU OS 18_0 like Mac OS X)",
        };
        serde_json::json!({
            "timestamp": self.time,
            "status": self.status,
            "bytes": if self.status < 400 { self.br.unwrap_or(50) * 500 } else { 0 },
            "ttfb_ms": self.ttfb_ms,
            "url": format!("https://edge.{}.example.net/{}/{}.m4s?{query}", self.cdn, self.cid, self.request_id),
            "user_agent": user_agent,
            "region": self.region,
            "request_id": self.request_id,
        })
        .to_string()
    }
}

/// What a native player remembers between its flushes: a stall not yet reported as starvation.
#[derive(Debug, Default)]
pub struct NativeLog {
    starved: HashMap<String, bool>,
}

impl NativeLog {
    /// The requests a native player made for one flush of its view's events.
    pub fn requests(&mut self, ctx: &ViewContext, events: &[QoeEvent]) -> Vec<LoggedRequest> {
        let mut out = Vec::new();
        let base = |e: &QoeEvent, i: u32, ot: &'static str| LoggedRequest {
            request_id: format!("{}-{}-{i}", ctx.view_id, e.seq),
            time: e.event_time + i64::from(i),
            status: 200,
            ttfb_ms: 60,
            sid: ctx.view_id.clone(),
            cid: ctx.stream_id.clone(),
            st: match ctx.stream_type {
                StreamType::Live => "l",
                StreamType::Vod => "v",
            },
            sf: if ctx.protocol == "dash" { "d" } else { "h" },
            ot,
            br: None,
            d: None,
            bl: None,
            mtp: None,
            bs: false,
            su: false,
            region: ctx.region,
            cdn: ctx.cdn,
            platform: ctx.platform,
        };
        let starved = self.starved.entry(ctx.view_id.clone()).or_default();
        for e in events {
            let br = e.bitrate_kbps.unwrap_or(1_500);
            match e.kind {
                EventType::ViewStart => out.push(LoggedRequest {
                    su: true,
                    ttfb_ms: 90,
                    ..base(e, 0, "m")
                }),
                EventType::FirstFrame => out.push(LoggedRequest {
                    su: true,
                    br: Some(br),
                    d: Some(SEGMENT_MS),
                    bl: Some(0),
                    mtp: Some(br * 3),
                    ttfb_ms: e.startup_ms.unwrap_or(400) / 4,
                    ..base(e, 0, "v")
                }),
                EventType::StallStart => *starved = true,
                EventType::Heartbeat => {
                    for i in 0..e.playing_ms.unwrap_or(0) / SEGMENT_MS {
                        let bs = std::mem::take(starved);
                        out.push(LoggedRequest {
                            br: Some(br),
                            d: Some(SEGMENT_MS),
                            bl: Some(if bs { 1_500 } else { 12_000 }),
                            mtp: Some(if bs { br } else { br * 3 }),
                            bs,
                            ..base(e, i, "v")
                        });
                    }
                }
                EventType::Error if e.fatal == Some(true) => out.push(LoggedRequest {
                    status: 503,
                    ttfb_ms: 900,
                    ..base(e, 0, "v")
                }),
                _ => {}
            }
        }
        if events.iter().any(|e| e.kind == EventType::ViewEnd) {
            self.starved.remove(&ctx.view_id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::cdn_log::parse_json_line;

    fn ctx() -> ViewContext {
        ViewContext {
            view_id: "n-1".into(),
            stream_id: "ch-3".into(),
            stream_type: StreamType::Live,
            cdn: "cdn-b",
            platform: "android",
            region: "eu-west",
            player: "exoplayer/2.19",
            protocol: "dash",
        }
    }

    fn event(seq: u32, kind: EventType, t: i64) -> QoeEvent {
        QoeEvent::blank("n-1", seq, kind, 1_764_500_000_000 + t)
    }

    #[test]
    fn events_become_the_requests_a_player_makes_and_parse_back() {
        let mut log = NativeLog::default();
        let mut first = event(1, EventType::FirstFrame, 1_000);
        (first.startup_ms, first.bitrate_kbps) = (Some(800), Some(2_000));
        let mut hb = event(4, EventType::Heartbeat, 11_000);
        (hb.playing_ms, hb.bitrate_kbps) = (Some(9_000), Some(3_000));
        let events = [
            event(0, EventType::ViewStart, 0),
            first,
            event(2, EventType::StallStart, 5_000),
            event(3, EventType::StallEnd, 6_000),
            hb,
        ];
        let requests = log.requests(&ctx(), &events);
        let kinds: Vec<(&str, bool, bool)> = requests.iter().map(|r| (r.ot, r.su, r.bs)).collect();
        assert_eq!(
            kinds,
            [
                ("m", true, false),
                ("v", true, false),
                ("v", false, true),
                ("v", false, false)
            ]
        );
        for r in &requests {
            let parsed = parse_json_line(&r.json_line()).unwrap();
            let (req, c) = (&parsed.request, &parsed.request.cmcd);
            assert_eq!(
                (req.time, req.status, req.ttfb, req.request_id.as_str()),
                (r.time, r.status, Some(r.ttfb_ms), r.request_id.as_str())
            );
            assert_eq!(
                (c.br, c.d, c.bl, c.mtp, c.bs, c.su),
                (r.br, r.d, r.bl, r.mtp, r.bs, r.su)
            );
            assert_eq!(
                (
                    c.sid.as_deref(),
                    c.cid.as_deref(),
                    c.ot.as_deref(),
                    c.st.as_deref(),
                    c.sf.as_deref()
                ),
                (Some("n-1"), Some("ch-3"), Some(r.ot), Some("l"), Some("d"))
            );
            assert_eq!(parsed.region.as_deref(), Some("eu-west"));
            assert_eq!(req.host, "edge.cdn-b.example.net");
        }
    }
}
