//! Unit tests of `cmcd`.

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
    // dash.js 5.2.1 puts an epoch time in ttfb: not a time to first byte.
    let p = parse(&format!(
        r#"e=rr,ts={NOW},sid="s",rc=200,ttfb={},ttlb=28"#,
        NOW - 100
    ))
    .unwrap();
    assert_eq!((p.report.ttfb, p.report.ttlb), (None, Some(28)));
    // A repeated key: the last value wins.
    let p = parse(&format!(r#"e=t,ts={NOW},sid="s",br=(100),br=(200;v 64;a)"#)).unwrap();
    assert_eq!(p.report.br, Some(200));
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
        (format!("e=\"\",ts={NOW},sid=\"s\""), "missing_key"),
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
        cdn_rank: 0,
    };
    let bytes = m.encode();
    assert!(bytes.starts_with(CMCD_MESSAGE_PREFIX));
    assert_eq!(CmcdMessage::decode(&bytes).unwrap(), m);
}
