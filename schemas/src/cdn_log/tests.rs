use super::*;

fn json(line: &str) -> ParsedRequest {
    parse_json_line(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Media3 (ExoPlayer) `CmcdConfiguration` in its default header mode: the keys it documents,
/// spread over the four headers as CTA-5004 assigns them.
const MEDIA3_HEADERS: &str = r#"{"CMCD-Object":"br=1500,d=4000,ot=v,tb=3000","CMCD-Request":"bl=20000,dl=20000,mtp=5500,nor=\"..%2Fsegment-6.m4s\",su","CMCD-Session":"cid=\"content-1\",pr=1.25,sf=d,sid=\"0c3b1f4e-media3\",st=v","CMCD-Status":"bs,rtp=6000"}"#;

/// AVPlayer (iOS 18 and later) headers: HLS, live, version 1 stated.
const AVPLAYER_HEADERS: &str = r#"{"cmcd-object":"br=2400,d=6006,ot=av,tb=7800","cmcd-request":"bl=11500,mtp=24000","cmcd-session":"cid=\"live-1\",sf=h,sid=\"avplayer-5d2f\",st=l,v=1"}"#;

#[test]
fn media3_header_mode_parses_every_key() {
    let line = format!(
        r#"{{"timestamp":1764500000.25,"status":200,"bytes":512000,"ttfb_ms":42,"ttlb_ms":310,"host":"edge-1.cdn-a.example.net:443","url":"/vod/content-1/video/seg-5.m4s","client_ip":"203.0.113.9","user_agent":"ExoPlayerLib/2.19.1","headers":{MEDIA3_HEADERS}}}"#
    );
    let p = json(&line);
    let r = &p.request;
    assert_eq!(r.time, 1_764_500_000_250);
    assert_eq!(
        (r.status, r.bytes, r.ttfb, r.ttlb),
        (200, 512_000, Some(42), Some(310))
    );
    assert_eq!(r.host, "edge-1.cdn-a.example.net");
    assert_eq!(r.path, "/vod/content-1/video/seg-5.m4s");
    assert_eq!(p.client_ip, Some("203.0.113.9".parse().unwrap()));
    assert_eq!(p.user_agent.as_deref(), Some("ExoPlayerLib/2.19.1"));
    assert_eq!(
        r.cmcd,
        CmcdRequest {
            br: Some(1500),
            bl: Some(20000),
            bs: true,
            cid: Some("content-1".into()),
            d: Some(4000),
            dl: Some(20000),
            mtp: Some(5500),
            ot: Some("v".into()),
            pr: Some(1250),
            rtp: Some(6000),
            sf: Some("d".into()),
            sid: Some("0c3b1f4e-media3".into()),
            st: Some("v".into()),
            su: true,
            tb: Some(3000),
            v: None,
        }
    );
}

#[test]
fn avplayer_headers_as_top_level_fields_parse() {
    // Header values as fields of their own (a log format that names each header).
    let headers: Map<String, Value> = serde_json::from_str(AVPLAYER_HEADERS).unwrap();
    let mut object: Map<String, Value> = serde_json::from_str(
        r#"{"time":"2026-12-07T10:00:00.500Z","status":"206","bytes":"1000","url":"https://Live.CDN-B.example.com/live/1/v/720p/seg-9.ts"}"#,
    )
    .unwrap();
    object.extend(headers);
    let p = json(&Value::Object(object).to_string());
    let r = &p.request;
    assert_eq!(r.time, 1_796_637_600_500);
    assert_eq!((r.status, r.bytes), (206, 1000));
    assert_eq!(r.host, "live.cdn-b.example.com");
    assert_eq!(r.path, "/live/1/v/720p/seg-9.ts");
    let c = &r.cmcd;
    assert_eq!(
        (c.br, c.d, c.tb, c.bl, c.mtp),
        (Some(2400), Some(6006), Some(7800), Some(11500), Some(24000))
    );
    assert_eq!(c.ot.as_deref(), Some("av"));
    assert_eq!(
        (
            c.cid.as_deref(),
            c.sf.as_deref(),
            c.sid.as_deref(),
            c.st.as_deref(),
            c.v
        ),
        (
            Some("live-1"),
            Some("h"),
            Some("avplayer-5d2f"),
            Some("l"),
            Some(1)
        )
    );
    assert!(!c.bs && !c.su);
}

#[test]
fn query_mode_in_the_url_or_a_query_field() {
    // hls.js and dash.js in request mode: `?CMCD=` percent-encoded.
    let cmcd = "br=3200,bl=21300,bs,cid=\"faec5fc2\",d=4004,mtp=25400,ot=v,sf=d,sid=\"6e2fb550\",st=v,su,tb=6000";
    let encoded: String = form_urlencoded::byte_serialize(cmcd.as_bytes()).collect();
    let in_url = json(&format!(
        r#"{{"ts":1764500000000,"status":200,"url":"http://origin.test/seg.m4s?x=1&CMCD={encoded}"}}"#
    ));
    let in_field = json(&format!(
        r#"{{"ts":1764500000000,"status":200,"url":"/seg.m4s","query":"CMCD={encoded}","host":"origin.test"}}"#
    ));
    let as_field = json(&format!(
        r#"{{"ts":1764500000000,"status":200,"url":"/seg.m4s","cmcd":"{}"}}"#,
        cmcd.replace('"', "\\\"")
    ));
    for p in [&in_url, &in_field, &as_field] {
        let c = &p.request.cmcd;
        assert_eq!(
            (c.br, c.bl, c.d, c.mtp, c.tb),
            (Some(3200), Some(21300), Some(4004), Some(25400), Some(6000))
        );
        assert!(c.bs && c.su);
        assert_eq!(c.sid.as_deref(), Some("6e2fb550"));
        assert_eq!(p.request.path, "/seg.m4s");
    }
    assert_eq!(in_url.request.host, "origin.test");
    assert_eq!(in_field.request.host, "origin.test");
}

#[test]
fn one_field_per_key() {
    let p = json(
        r#"{"ts":1764500000000,"status":200,"url":"/a","cmcd_br":800,"cmcd_bs":true,"cmcd_sid":"s-1","CMCD-OT":"a","cmcd_d":"2000","cmcd_pr":1}"#,
    );
    let c = &p.request.cmcd;
    assert_eq!((c.br, c.d, c.pr), (Some(800), Some(2000), Some(1000)));
    assert!(c.bs);
    assert_eq!(
        (c.sid.as_deref(), c.ot.as_deref()),
        (Some("s-1"), Some("a"))
    );
}

#[test]
fn cmcd_v2_keys_in_a_request_log_are_accepted() {
    // A v2 player in request mode: v=2, keys v1 does not have, and `bl` per media type.
    let p = json(
        r#"{"ts":1764500000000,"status":200,"url":"/v.m4s","cmcd":"bl=(3000;a 4500;v),br=(1200;v),sta=p,ts=1764499999000,sn=7,ltc=1500,v=2,sid=\"v2-s\",nor=(\"a.m4s\")"}"#,
    );
    let c = &p.request.cmcd;
    assert_eq!((c.v, c.bl, c.br), (Some(2), Some(4500), Some(1200)));
    assert_eq!(c.sid.as_deref(), Some("v2-s"));
}

fn cloudfront_line(values: &[(&str, &str)]) -> String {
    CLOUDFRONT_FIELDS
        .iter()
        .map(|f| values.iter().find(|(k, _)| k == f).map_or("-", |(_, v)| *v))
        .collect::<Vec<_>>()
        .join("\t")
}

#[test]
fn a_cloudfront_real_time_log_record_parses() {
    let line = cloudfront_line(&[
        ("timestamp", "1764500000.123"),
        ("c-ip", "198.51.100.7"),
        ("time-to-first-byte", "0.021"),
        ("sc-status", "200"),
        ("sc-bytes", "734002"),
        ("cs-host", "d111111abcdef8.cloudfront.net"),
        ("cs-uri-stem", "/live/ch1/1080p/seg-100.m4s"),
        ("x-edge-request-id", "Zx9_ab-cd=="),
        ("time-taken", "0.412"),
        (
            "cs-user-agent",
            "AppleCoreMedia/1.0.0.22A3354%20(iPhone;%20U;%20CPU%20OS%2018_0)",
        ),
        ("cmcd-encoded-bitrate", "5000"),
        ("cmcd-buffer-length", "9000"),
        ("cmcd-buffer-starvation", "true"),
        ("cmcd-content-id", "ch1"),
        ("cmcd-object-duration", "2002"),
        ("cmcd-measured-throughput", "41000"),
        ("cmcd-object-type", "v"),
        ("cmcd-playback-rate", "1"),
        ("cmcd-streaming-format", "h"),
        ("cmcd-session-id", "cf-session-1"),
        ("cmcd-stream-type", "l"),
        ("cmcd-startup", "-"),
        ("cmcd-top-bitrate", "8000"),
        ("cmcd-version", "1"),
    ]);
    let p = parse_cloudfront_line(&line, CLOUDFRONT_FIELDS).unwrap();
    let r = &p.request;
    assert_eq!(
        (r.time, r.status, r.bytes),
        (1_764_500_000_123, 200, 734_002)
    );
    assert_eq!((r.ttfb, r.ttlb), (Some(21), Some(412)));
    assert_eq!(r.host, "d111111abcdef8.cloudfront.net");
    assert_eq!(r.request_id, "Zx9_ab-cd==");
    assert_eq!(p.client_ip, Some("198.51.100.7".parse().unwrap()));
    assert!(p
        .user_agent
        .as_deref()
        .unwrap()
        .starts_with("AppleCoreMedia/1.0.0.22A3354 (iPhone;"));
    let c = &r.cmcd;
    assert_eq!(
        (c.br, c.bl, c.d, c.mtp, c.pr, c.tb, c.v),
        (
            Some(5000),
            Some(9000),
            Some(2002),
            Some(41000),
            Some(1000),
            Some(8000),
            Some(1)
        )
    );
    assert!(c.bs && !c.su);
    assert_eq!(
        (
            c.cid.as_deref(),
            c.sid.as_deref(),
            c.ot.as_deref(),
            c.sf.as_deref(),
            c.st.as_deref()
        ),
        (
            Some("ch1"),
            Some("cf-session-1"),
            Some("v"),
            Some("h"),
            Some("l")
        )
    );
}

#[test]
fn a_cloudfront_configuration_with_fewer_fields_and_cmcd_in_the_query() {
    let fields = cloudfront_fields("timestamp,c-ip,sc-status,cs-uri-stem,cs-uri-query").unwrap();
    let p = parse_cloudfront_line(
        "1764500000\t2001:db8::1\t404\t/x/seg.ts\tCMCD=br%3D900%2Csid%3D%22q-1%22%2Cot%3Dv",
        &fields,
    )
    .unwrap();
    assert_eq!((p.request.status, p.request.bytes), (404, 0));
    assert_eq!(p.request.cmcd.br, Some(900));
    assert_eq!(p.request.cmcd.sid.as_deref(), Some("q-1"));
    assert_eq!(p.client_ip, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(
        parse_cloudfront_line("1764500000\t404", &fields),
        Err(LogLineError::FieldCount { got: 2, want: 5 })
    );
    assert!(cloudfront_fields("timestamp,sc-status,nope")
        .unwrap_err()
        .contains("\"nope\""));
    assert!(cloudfront_fields("c-ip,sc-status")
        .unwrap_err()
        .contains("timestamp"));
}

#[test]
fn bad_lines_are_refused_with_a_reason() {
    let reason = |line: &str| parse_json_line(line).unwrap_err().reason();
    assert_eq!(reason("not json"), "json");
    assert_eq!(reason("[1,2]"), "json");
    assert_eq!(reason(r#"{"status":200,"url":"/a"}"#), "missing_field");
    assert_eq!(
        reason(r#"{"ts":"yesterday","status":200,"url":"/a"}"#),
        "missing_field"
    );
    assert_eq!(reason(r#"{"ts":1764500000,"url":"/a"}"#), "missing_field");
    assert_eq!(reason(r#"{"ts":1764500000,"status":200}"#), "missing_field");
    assert_eq!(
        reason(r#"{"ts":1764500000,"status":200,"url":"/a","host":"a\u202eb"}"#),
        "unsafe_chars"
    );
    let long = "x".repeat(MAX_PATH_LEN + 1);
    assert_eq!(
        reason(&format!(
            r#"{{"ts":1764500000,"status":200,"url":"/{long}"}}"#
        )),
        "too_long"
    );
    // A bad CMCD value costs the key, not the request; CMCD text that is no dictionary
    // costs the CMCD data.
    let p = json(
        r#"{"ts":1764500000,"status":200,"url":"/a","cmcd":"br=\"fast\",sid=\"\",d=-5,bl=100","cmcd_cid":"a\u0007"}"#,
    );
    let c = &p.request.cmcd;
    assert_eq!(
        (c.br, c.sid.as_deref(), c.d, c.bl, c.cid.as_deref()),
        (None, None, None, Some(100), None)
    );
    let p = json(r#"{"ts":1764500000,"status":503,"url":"/a","cmcd":"br=1,,,"}"#);
    assert_eq!(
        (p.request.status, &p.request.cmcd),
        (503, &CmcdRequest::default())
    );
}

#[test]
fn a_line_sent_again_is_the_same_request() {
    let line = r#"{"ts":1764500000,"status":200,"url":"/a","cmcd":"sid=\"s\""}"#;
    let again = format!("  {line}\r");
    let other = r#"{"ts":1764500001,"status":200,"url":"/a","cmcd":"sid=\"s\""}"#;
    let id = |l: &str| json(l).request.request_id;
    assert_eq!(id(line), id(&again));
    assert_ne!(id(line), id(other));
    assert!(id(line).starts_with("h:"));
    assert_eq!(
        id(r#"{"ts":1764500000,"status":200,"url":"/a","request_id":"r-9"}"#),
        "r-9"
    );
}

#[test]
fn times_in_seconds_milliseconds_or_rfc3339() {
    let t = |v: &str| {
        json(&format!(r#"{{"ts":{v},"status":200,"url":"/a"}}"#))
            .request
            .time
    };
    assert_eq!(t("1764500000"), 1_764_500_000_000);
    assert_eq!(t("1764500000.5"), 1_764_500_000_500);
    assert_eq!(t("1764500000123"), 1_764_500_000_123);
    assert_eq!(t("\"1764500000.5\""), 1_764_500_000_500);
    assert_eq!(t("\"2025-11-30T10:53:20Z\""), 1_764_500_000_000);
    assert_eq!(t("\"2025-11-30T10:53:20.250+00:00\""), 1_764_500_000_250);
}

#[test]
fn the_message_starts_with_its_prefix_and_is_keyed_by_session() {
    let p = json(r#"{"ts":1764500000,"status":200,"url":"/a","cmcd":"sid=\"s-7\",br=100"}"#);
    let m = RequestMessage {
        req: p.request,
        received_at: 1_764_500_001_000,
        region: "eu-west".into(),
        cdn: "cdn-a".into(),
        platform: "android".into(),
        player: "media3".into(),
    };
    let bytes = m.encode();
    assert!(bytes.starts_with(REQUEST_MESSAGE_PREFIX));
    assert_eq!(RequestMessage::decode(&bytes).unwrap(), m);
    assert_eq!(m.key(), "s-7");
    let no_session = json(r#"{"ts":1764500000,"status":200,"url":"/a"}"#).request;
    let id = no_session.request_id.clone();
    let m = RequestMessage {
        req: no_session,
        ..m
    };
    assert_eq!(m.key(), id);
}
