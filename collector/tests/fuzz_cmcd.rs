//! Property-based fuzzing of the CMCD body path (`cmcd::process`): whatever the body, it never
//! panics, every line is either a published report or one counted reason, and a published
//! report decodes back. Runs briefly in `make test` (256 cases per property); longer:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p qoe-collector --test fuzz_cmcd
//! ```

use proptest::prelude::*;
use qoe_collector::cmcd::{self, CdnHostMap, ClientDefaults};
use qoe_schemas::cmcd::CmcdMessage;
use qoe_schemas::Limits;

const NOW: i64 = 1_763_721_600_000;

const REASONS: &[&str] = &[
    "syntax",
    "version",
    "missing_key",
    "sid",
    "too_long",
    "unsafe_chars",
    "future",
    "too_old",
    "encoding",
    "too_many_lines",
];

fn check(body: &[u8]) {
    let limits = Limits::default();
    let defaults = ClientDefaults::new(None, None, None, None, &limits);
    let hosts = CdnHostMap::parse(&["example.net=cdn-x".into()]).unwrap();
    let batch = cmcd::process(body, NOW, "eu-west", &defaults, &hosts, &limits);
    let lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
        .count();
    // Blank lines are neither; a line of only Unicode spaces is counted as a refused line.
    assert!(batch.messages.len() + batch.rejected.len() <= lines);
    assert!(batch.messages.len() <= limits.max_events);
    for reason in &batch.rejected {
        assert!(REASONS.contains(reason), "unknown reason {reason}");
    }
    for (sid, value) in &batch.messages {
        let m = CmcdMessage::decode(value).expect("a published report decodes");
        assert_eq!(&m.cmcd.sid, sid);
        assert!(!m.cmcd.e.is_empty() && m.cmcd.ts > 0);
    }
}

/// Plausible keys with plausible and implausible values, so the parser's typed paths run.
fn member() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("e"),
        Just("ts"),
        Just("sid"),
        Just("sn"),
        Just("v"),
        Just("sta"),
        Just("br"),
        Just("bl"),
        Just("ec"),
        Just("url"),
        Just("rc"),
        Just("ttfb"),
        Just("ltc"),
        Just("msd"),
        Just("bsd"),
        Just("cid"),
        Just("cdn"),
        Just("dfa"),
        Just("st"),
        Just("sf"),
        Just("h"),
        Just("com.example-x"),
        Just("BAD"),
    ];
    let value = prop_oneof![
        Just(String::new()),
        (0i64..=2_000_000_000_000).prop_map(|n| format!("={n}")),
        (NOW - 100_000..NOW + 100_000).prop_map(|n| format!("={n}")),
        (-1000i64..1000).prop_map(|n| format!("={n}.5")),
        "[a-z]{1,6}".prop_map(|t| format!("={t}")),
        "[ -~]{0,40}"
            .prop_map(|s| format!("=\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))),
        "\\PC{0,20}".prop_map(|s| format!("=\"{s}\"")),
        prop::collection::vec(0u32..100_000, 0..4).prop_map(|v| {
            format!(
                "=({})",
                v.iter()
                    .map(|n| format!("{n};v"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }),
        Just("=?0".to_owned()),
        Just("=(\"manifestLoadError\")".to_owned()),
        Just("=\"https://e1.example.net/seg.m4s\"".to_owned()),
    ];
    (key, value).prop_map(|(k, v)| format!("{k}{v}"))
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(member(), 0..12).prop_map(|m| m.join(",")),
        prop::collection::vec(member(), 0..12).prop_map(|m| m.join(", ")),
        ".{0,200}",
        Just(format!("e=ps,sta=p,ts={NOW},sid=\"s-1\",v=2")),
    ]
}

proptest! {
    #[test]
    fn any_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(&body);
    }

    #[test]
    fn plausible_lines_never_panic(lines in prop::collection::vec(line(), 0..40)) {
        check(lines.join("\n").as_bytes());
    }
}

/// A body of 1,000 valid lines is taken whole; one more line is refused with a reason.
#[test]
fn a_thousand_lines() {
    let body: String = (0..1000)
        .map(|i| format!("e=t,ts={},sid=\"s-{}\",sn={i},v=2\n", NOW - i, i % 7))
        .collect();
    let limits = Limits::default();
    let defaults = ClientDefaults::new(None, None, None, None, &limits);
    let batch = cmcd::process(
        body.as_bytes(),
        NOW,
        "r",
        &defaults,
        &CdnHostMap::default(),
        &limits,
    );
    assert_eq!((batch.messages.len(), batch.rejected.len()), (1000, 0));
    let more = format!("{body}e=t,ts={NOW},sid=\"s\",v=2\n");
    let batch = cmcd::process(
        more.as_bytes(),
        NOW,
        "r",
        &defaults,
        &CdnHostMap::default(),
        &limits,
    );
    assert_eq!(batch.rejected, vec!["too_many_lines"]);
}
