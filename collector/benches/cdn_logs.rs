//! The collector's per-line CPU for CDN logs, without I/O: 1,000 requests of 50 sessions as
//! JSON lines (CMCD in the query, the Media3 user agent), as CloudFront real-time records (the
//! documented field list, CMCD in the `cmcd-*` fields), and as a baseline measured in the same
//! run, the same number of CMCD v2 event-mode lines (`cmcd::process`).
//!
//! `cargo bench -p qoe-collector --bench cdn_logs` prints ns per line, lines/s on one core and
//! the ratio to CMCD v2 lines.

use qoe_collector::cdn_logs::{self, LogFormat, StreamContext};
use qoe_collector::cmcd::{self, CdnHostMap, ClientDefaults};
use qoe_schemas::cdn_log::CLOUDFRONT_FIELDS;
use qoe_schemas::Limits;
use std::hint::black_box;
use std::time::Instant;

const LINES: usize = 1_000;

fn main() {
    let now = qoe_telemetry::process::now_ms();
    let limits = Limits::default();
    let hosts = CdnHostMap::parse(&["cdn-a.example.net=cdn-a".into()]).expect("rule");
    let (mut json, mut cloudfront, mut cmcd_v2) = (String::new(), String::new(), String::new());
    for i in 0..LINES {
        let (sid, seg, t) = (i % 50, i / 50, now - 60_000 + i as i64);
        let ua = "ExoPlayerLib/2.19.1 (Linux; Android 14) ExoPlayerLib/2.19.1";
        json.push_str(&format!(
            "{{\"timestamp\":{}.{:03},\"status\":200,\"bytes\":734002,\"ttfb_ms\":21,\"ttlb_ms\":412,\"host\":\"e1.cdn-a.example.net\",\
             \"url\":\"/live/ch1/1080p/seg-{seg}.m4s?CMCD=br%3D5000%2Cbl%3D9000%2Cd%3D2002%2Cmtp%3D41000%2Cot%3Dv%2Csf%3Dd%2Csid%3D%22s-{sid}%22%2Cst%3Dl%2Ccid%3D%22ch1%22%2Ctb%3D8000\",\
             \"client_ip\":\"198.51.100.{sid}\",\"user_agent\":\"{ua}\"}}\n",
            t / 1000,
            t % 1000
        ));
        let mut values = vec!["-"; CLOUDFRONT_FIELDS.len()];
        let owned = [
            ("timestamp", format!("{}.{:03}", t / 1000, t % 1000)),
            ("c-ip", format!("198.51.100.{sid}")),
            ("time-to-first-byte", "0.021".into()),
            ("sc-status", "200".into()),
            ("sc-bytes", "734002".into()),
            ("cs-host", "e1.cdn-a.example.net".into()),
            ("cs-uri-stem", format!("/live/ch1/1080p/seg-{seg}.m4s")),
            ("x-edge-request-id", format!("req-{i}")),
            ("time-taken", "0.412".into()),
            ("cs-user-agent", ua.replace(' ', "%20")),
            ("cmcd-encoded-bitrate", "5000".into()),
            ("cmcd-buffer-length", "9000".into()),
            ("cmcd-content-id", "ch1".into()),
            ("cmcd-object-duration", "2002".into()),
            ("cmcd-measured-throughput", "41000".into()),
            ("cmcd-object-type", "v".into()),
            ("cmcd-streaming-format", "d".into()),
            ("cmcd-session-id", format!("s-{sid}")),
            ("cmcd-stream-type", "l".into()),
            ("cmcd-top-bitrate", "8000".into()),
        ];
        for (field, value) in &owned {
            let at = CLOUDFRONT_FIELDS
                .iter()
                .position(|f| f == field)
                .expect("field");
            values[at] = value;
        }
        cloudfront.push_str(&values.join("\t"));
        cloudfront.push('\n');
        cmcd_v2.push_str(&format!(
            "e=rr,ts={t},sid=\"s-{sid}\",sn={seg},cid=\"ch1\",sf=d,st=l,br=(5000),rc=200,ttfb=21,ttlb=412,ot=v,\
             url=\"https://e1.cdn-a.example.net/live/ch1/1080p/seg-{seg}.m4s\",v=2\n"
        ));
    }
    let region_of = |_| Some("eu-west".to_owned());
    let stream = StreamContext {
        cdn: None,
        hosts: &hosts,
        limits: &limits,
        max_lines: LINES,
        region_of: &region_of,
    };
    let defaults = ClientDefaults::new(None, None, None, None, &limits);
    let cloudfront_format = LogFormat::from_query(Some("cloudfront"), None).expect("format");

    let rounds = 200;
    let mut best = [f64::MAX; 3];
    for _ in 0..5 {
        let per_line = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..rounds {
                f();
            }
            t.elapsed().as_nanos() as f64 / (rounds * LINES) as f64
        };
        let times = [
            per_line(&mut || {
                let b = cmcd::process(
                    cmcd_v2.as_bytes(),
                    now,
                    "eu-west",
                    &defaults,
                    &hosts,
                    &limits,
                );
                assert_eq!(b.messages.len(), LINES);
                black_box(b);
            }),
            per_line(&mut || {
                let b = cdn_logs::process(json.as_bytes(), &LogFormat::JsonLines, now, &stream);
                assert_eq!(b.messages.len(), LINES);
                black_box(b);
            }),
            per_line(&mut || {
                let b = cdn_logs::process(cloudfront.as_bytes(), &cloudfront_format, now, &stream);
                assert_eq!(b.messages.len(), LINES);
                black_box(b);
            }),
        ];
        for (b, t) in best.iter_mut().zip(times) {
            *b = b.min(t);
        }
    }
    let [v2, json, cloudfront] = best;
    println!("per line, best of 5 x {rounds} bodies of {LINES} lines, one core:");
    println!(
        "  CMCD v2 event-mode lines (baseline): {v2:.0} ns ({:.0} lines/s)",
        1e9 / v2
    );
    for (name, ns) in [("JSON log lines", json), ("CloudFront records", cloudfront)] {
        println!(
            "  {name}: {ns:.0} ns ({:.0} lines/s), {:.2}x the baseline",
            1e9 / ns,
            ns / v2
        );
    }
}
