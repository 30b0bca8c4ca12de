//! Unit tests of `validate`.

use super::*;
use crate::QoeEvent;

const NOW: i64 = 1_763_721_600_000;

fn body(events: &str) -> String {
    format!(
        r#"{{"sent_at": {NOW}, "view": {{"view_id": "v-1", "stream_id": "ch-42", "stream_type": "live",
           "cdn": "akamai", "platform": "web", "player": "hls.js", "protocol": "hls", "extra": 1}},
           "events": [{events}]}}"#
    )
}

fn run(events: &str) -> Vec<Result<QoeEvent, Rejection>> {
    let b = body(events);
    let env = Envelope::parse(b.as_bytes()).unwrap();
    let view = validate_envelope(&env, &Limits::default()).unwrap();
    let context = view.into_context("eu-west".into());
    let arrival = Arrival {
        received_at: NOW + 2_000,
        sent_at: env.sent_at,
    };
    env.events
        .iter()
        .map(|raw| {
            validate_event(raw, &arrival, &Limits::default())
                .map(|fields| QoeEvent::from_parts(&context, fields))
        })
        .collect()
}

#[test]
fn valid_events_are_enriched_and_skew_corrected() {
    let out = run(&format!(
        r#"{{"seq":0,"type":"view_start","ts":{}}},
           {{"seq":1,"type":"first_frame","ts":{},"startup_ms":1200,"bitrate_kbps":2500,"unknown":"x"}}"#,
        NOW - 10_000,
        NOW - 8_800
    ));
    let first = out[1].as_ref().unwrap();
    assert_eq!(first.event_time, NOW - 8_800 + 2_000);
    assert_eq!(first.received_at, NOW + 2_000);
    assert_eq!(first.region, "eu-west");
    assert_eq!(first.started, Some(true));
    assert_eq!(first.kind, EventType::FirstFrame);
    assert_eq!(first.view_id, "v-1");
    assert!(out[0].is_ok());
}

#[test]
fn escaped_strings_in_events_are_unescaped() {
    let out = run(&format!(
        r#"{{"seq":0,"type":"view\u005fstart","ts":{NOW}}},
           {{"seq":1,"type":"error","ts":{NOW},"started":true,"fatal":false,"code":"E\"42\"\n"}},
           {{"seq":2,"type":"view_end","ts":{NOW},"started":true,"reason":"\u0065xit","fatal":true}}"#
    ));
    let events: Vec<&QoeEvent> = out.iter().map(|r| r.as_ref().unwrap()).collect();
    assert_eq!(events[0].kind, EventType::ViewStart);
    assert_eq!(events[1].code.as_deref(), Some("E\"42\"\n"));
    assert_eq!(events[1].fatal, Some(false));
    assert_eq!(events[2].reason, Some(EndReason::Exit));
    assert_eq!(events[2].fatal, None, "only an error is fatal or not");
}

#[test]
fn each_bad_event_gets_its_own_reason() {
    let out = run(&format!(
        r#"{{"seq":0,"type":"teleport","ts":{NOW}}},
           {{"seq":1,"type":"error","ts":{NOW},"fatal":true}},
           {{"seq":2,"type":"heartbeat","ts":{}}},
           {{"seq":3,"type":"heartbeat","ts":{}}},
           {{"seq":"x","type":"heartbeat","ts":{NOW}}},
           {{"seq":5,"type":"view_end","ts":{NOW},"started":false,"reason":"bored"}},
           {{"seq":6,"type":"heartbeat","ts":{NOW},"playing_ms":999999999}},
           {{"seq":7,"type":"heartbeat","ts":{NOW},"playing_ms":500}}"#,
        NOW + 10 * 60 * 1000,
        NOW - 2 * 60 * 60 * 1000
    ));
    let reasons: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            Some(RejectReason::UnknownType),
            Some(RejectReason::MissingField),
            Some(RejectReason::InFuture),
            Some(RejectReason::TooOld),
            Some(RejectReason::Malformed),
            Some(RejectReason::OutOfRange),
            Some(RejectReason::OutOfRange),
            None,
        ]
    );
}

#[test]
fn envelope_problems_are_whole_request_errors() {
    let limits = Limits::default();
    let no_events = body("");
    let env = Envelope::parse(no_events.as_bytes()).unwrap();
    assert_eq!(
        validate_envelope(&env, &limits),
        Err(EnvelopeError::NoEvents)
    );

    let bad_id = r#"{"view":{"view_id":"has space","stream_id":"s","stream_type":"live","cdn":"c","platform":"p"},"events":[{}]}"#;
    let env = Envelope::parse(bad_id.as_bytes()).unwrap();
    assert!(matches!(
        validate_envelope(&env, &limits),
        Err(EnvelopeError::View(_))
    ));

    assert!(Envelope::parse(br#"{"events":[{}]}"#).is_err());
    assert!(Envelope::parse(b"not json").is_err());

    let many = body(&vec!["{}"; 1001].join(","));
    let env = Envelope::parse(many.as_bytes()).unwrap();
    assert!(matches!(
        validate_envelope(&env, &limits),
        Err(EnvelopeError::TooManyEvents { count: 1001, .. })
    ));
}

#[test]
fn view_id_rules() {
    assert!(is_valid_view_id("5f0c1e9a-aa:b.c_d"));
    assert!(!is_valid_view_id(""));
    assert!(!is_valid_view_id(&"a".repeat(65)));
    assert!(is_valid_view_id(&"a".repeat(64)));
    assert!(!is_valid_view_id("é"));
}

#[test]
fn custom_map_is_bounded() {
    let keys: Vec<String> = (0..17).map(|i| format!("\"k{i}\":\"v\"")).collect();
    let b = format!(
        r#"{{"view":{{"view_id":"v","stream_id":"s","stream_type":"vod","cdn":"c","platform":"p","custom":{{{}}}}},"events":[{{}}]}}"#,
        keys.join(",")
    );
    let env = Envelope::parse(b.as_bytes()).unwrap();
    assert!(matches!(
        validate_envelope(&env, &Limits::default()),
        Err(EnvelopeError::View(_))
    ));
}

#[test]
fn skew_correction() {
    assert_eq!(corrected_time(1000, 5000, Some(4000)), 2000);
    assert_eq!(corrected_time(1000, 5000, None), 1000);
    assert_eq!(corrected_time(i64::MAX, i64::MAX, Some(i64::MIN)), i64::MAX);
}

// String rules.

#[test]
fn limits_count_characters_and_unsafe_characters_are_refused() {
    let limits = Limits::default();
    let wide = "é".repeat(limits.max_dimension_len);
    assert!(
        dimension("cdn", &wide, &limits).is_ok(),
        "128 two-byte characters fit"
    );
    assert!(dimension("cdn", &format!("{wide}x"), &limits).is_err());
    for bad in ["cdn\u{202E}a", "a\u{2066}b", "tab\there", "\u{200F}"] {
        assert!(dimension("cdn", bad, &limits).is_err(), "{bad:?}");
    }
    assert!(dimension("cdn", "akamai-eu", &limits).is_ok());
}

#[test]
fn dimensions_are_normalised() {
    let limits = Limits::default();
    for v in ["EU-West", " eu-west ", "eu-west", "\u{2009}EU-WEST"] {
        assert_eq!(dimension("region", v, &limits).unwrap(), "eu-west", "{v:?}");
    }
    assert!(
        dimension("region", "   ", &limits).is_err(),
        "blank after trimming"
    );
    assert_eq!(normalize_dimension("ÉCRAN"), "écran");
}
