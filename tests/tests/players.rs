//! Real players through the real pipeline: hls.js, dash.js and Shaka Player in headless
//! Chromium (Debian's `chromium`, driven by `puppeteer-core`), playing live HLS and DASH from a
//! local origin that injects faults, report CMCD v2 to the collector with nothing of ours in the
//! page but their `cmcd` configuration; most pages also run the web SDK (`sdk/web`, beacon
//! protocol v1) on the same `<video>` under its own view and stream ids, and one runs the SDK
//! alone. The rows in ClickHouse, from either path, are compared with what each page measured on
//! its own `<video>` element, and the two paths' rows of one playback with each other
//! (tests/players: run.mjs, player.html, origin.mjs).
//!
//! Needs `scripts/players.sh setup` (chromium, ffmpeg, node modules), which `make test` runs.

use qoe_telemetry::process::now_ms;
use qoe_tests::{
    clickhouse_query, create_topic, spawn_aggregator, spawn_collector, unique, wait_caught_up,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct Run {
    pages: Vec<Page>,
}

#[derive(Debug, Deserialize)]
struct Page {
    name: String,
    /// CMCD session and content ids (empty when the page's player reports no CMCD).
    sid: String,
    cid: String,
    /// The web SDK's view and stream ids, when the page runs it.
    sdk_view: Option<String>,
    sdk_stream: Option<String>,
    sdk: Option<SdkReport>,
    truth: Truth,
    posted: Vec<Posted>,
    beacons: Vec<Posted>,
    console: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SdkReport {
    stats: SdkStats,
}

/// The SDK's own counters; times are main-thread milliseconds spent in its handlers.
#[derive(Debug, Deserialize)]
struct SdkStats {
    #[serde(rename = "handlerMs")]
    handler_ms: f64,
    #[serde(rename = "handlerCalls")]
    handler_calls: u64,
    #[serde(rename = "maxHandlerMs")]
    max_handler_ms: f64,
    /// Which handler took `max_handler_ms`.
    slowest: String,
    /// Time per handler name.
    #[serde(rename = "byHandler")]
    by_handler: BTreeMap<String, f64>,
    heartbeats: u64,
    #[serde(rename = "heartbeatMs")]
    heartbeat_ms: f64,
    errors: u64,
    dropped: u64,
    /// Handler time up to the first frame (set-up included).
    #[serde(rename = "startupMs")]
    startup_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Truth {
    startup_ms: Option<i64>,
    playing_ms: i64,
    stall_ms: i64,
    stalls: u64,
    up: u64,
    down: u64,
    /// The code of the player's fatal error event, and how many error events it raised up to
    /// and including that one (the page counts them as a viewer's SDK does).
    error: Option<String>,
    #[serde(default)]
    errors: u64,
    /// How long the page's thread was held up between its load call and the first frame
    /// (player.html): any two stamps in that span, the player's and the page's, may differ by it.
    #[serde(default)]
    startup_held_ms: i64,
}

/// How far a reported startup may be from the page's: 250 ms, plus the time the page's thread
/// was held up during the startup (on a starved machine a player stamps its start well into
/// its own start-up work, which then takes hundreds of milliseconds of wall time).
fn startup_tolerance(t: &Truth) -> i64 {
    250 + t.startup_held_ms.max(0)
}

#[derive(Debug, Deserialize)]
struct Posted {
    at: i64,
    body: Option<String>,
}

/// What ClickHouse says of one page's view and its stream's windows.
#[derive(Debug)]
struct Observed {
    views: u64,
    started: u64,
    startup_ms: i64,
    playing_ms: i64,
    stall_ms: i64,
    stalls: u64,
    end_reason: String,
    attempts: u64,
    plays: u64,
    vsf: u64,
    up: u64,
    down: u64,
    vpf: u64,
    /// The view row's error count and code.
    errors: u64,
    error_code: String,
}

/// The rows of one reporting path: a view id and the stream id its windows are under.
async fn observed(db: &str, view_id: &str, stream_id: &str) -> Observed {
    let v = clickhouse_query(
        db,
        &format!(
            "SELECT count(), max(started), max(startup_ms), sum(playing_ms), sum(stall_ms), \
             sum(stalls), any(end_reason), sum(errors), any(error_code) FROM qoe_views \
             WHERE view_id = '{view_id}'"
        ),
    )
    .await
    .unwrap();
    let w = clickhouse_query(
        db,
        &format!(
            "SELECT sum(attempts), sum(plays), sum(vsf), sum(upswitches), sum(downswitches), \
             sum(vpf) FROM qoe_window_10s WHERE stream_id = '{stream_id}'"
        ),
    )
    .await
    .unwrap();
    let (v, w) = (&v[0], &w[0]);
    let n = |s: &String| s.parse::<i64>().unwrap_or(0);
    Observed {
        views: n(&v[0]) as u64,
        started: n(&v[1]) as u64,
        startup_ms: n(&v[2]),
        playing_ms: n(&v[3]),
        stall_ms: n(&v[4]),
        stalls: n(&v[5]) as u64,
        end_reason: v[6].clone(),
        attempts: n(&w[0]) as u64,
        plays: n(&w[1]) as u64,
        vsf: n(&w[2]) as u64,
        up: n(&w[3]) as u64,
        down: n(&w[4]) as u64,
        vpf: n(&w[5]) as u64,
        errors: n(&v[7]) as u64,
        error_code: v[8].clone(),
    }
}

fn players_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("players")
}

/// A page whose player fails: before the first frame (a missing manifest) or after it (every
/// segment gone). The view ends in error under the code the page saw in the player's own fatal
/// error event, with as many errors as the player raised (one fatal), counted as a start
/// failure or a playback failure.
fn check_failure(page: &Page, got: &Observed, after_start: bool) -> Vec<String> {
    let want = page.truth.error.as_deref().unwrap_or("(none)");
    let (vsf, vpf) = if after_start { (0, 1) } else { (1, 0) };
    let mut wrong = Vec::new();
    if page.truth.error.is_none() {
        wrong.push("the page saw no fatal error event from its player".into());
    }
    if after_start != page.truth.startup_ms.is_some() {
        wrong.push(format!(
            "the page's player {} before failing",
            if after_start {
                "never started"
            } else {
                "started"
            }
        ));
    }
    if (got.vsf, got.vpf) != (vsf, vpf) || got.end_reason != "error" {
        wrong.push(format!(
            "vsf {} vpf {} end {:?}, want vsf {vsf} vpf {vpf} end \"error\"",
            got.vsf, got.vpf, got.end_reason
        ));
    }
    if got.errors != page.truth.errors || got.error_code != want {
        wrong.push(format!(
            "{} errors with code {:?}, want the player's {} with its code {want:?}",
            got.errors, got.error_code, page.truth.errors
        ));
    }
    wrong
}

/// Fatal errors after the start by code, of the players whose name starts with `player`.
async fn fatal_after_start(db: &str, player: &str) -> Vec<(String, u64)> {
    clickhouse_query(
        db,
        &format!(
            "SELECT error_code, sum(errors) FROM qoe_error_codes_1m \
             WHERE fatal = 1 AND started = 1 AND startsWith(player, '{player}') \
             GROUP BY error_code ORDER BY error_code"
        ),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap_or(0)))
    .collect()
}

/// Checks one path's rows against the page; returns what is wrong.
fn check(page: &Page, got: &Observed) -> Vec<String> {
    let t = &page.truth;
    let mut wrong = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    let within = |a: i64, b: i64, tol: i64| (a - b).abs() <= tol;
    expect(got.views == 1, format!("{} view rows, want 1", got.views));
    expect(
        got.attempts == 1,
        format!("attempts {}, want 1", got.attempts),
    );
    match t.startup_ms {
        Some(startup) => {
            expect(
                got.plays == 1 && got.started == 1,
                format!("plays {} started {}, want 1", got.plays, got.started),
            );
            let tol = startup_tolerance(t);
            expect(
                within(got.startup_ms, startup, tol),
                format!(
                    "startup {} ms, the page measured {startup} ms (+-{tol}: 250 and {} ms the \
                     page's thread was held up)",
                    got.startup_ms, t.startup_held_ms
                ),
            );
            expect(
                within(got.playing_ms, t.playing_ms, 1_000),
                format!(
                    "playing {} ms, the page measured {} ms (+-1000)",
                    got.playing_ms, t.playing_ms
                ),
            );
            expect(
                got.stalls == t.stalls,
                format!("{} stalls, the page saw {}", got.stalls, t.stalls),
            );
            expect(
                within(got.stall_ms, t.stall_ms, 1_000),
                format!(
                    "stall time {} ms, the page measured {} ms (+-1000)",
                    got.stall_ms, t.stall_ms
                ),
            );
            expect(
                (got.up, got.down) == (t.up, t.down),
                format!(
                    "switches up/down {}/{}, the page saw {}/{}",
                    got.up, got.down, t.up, t.down
                ),
            );
        }
        None => {
            expect(
                got.plays == 0 && got.started == 0,
                format!("plays {}, want none", got.plays),
            );
        }
    }
    wrong
}

#[tokio::test]
async fn real_players_report_their_viewers_experience() {
    let dir = players_dir();
    assert!(
        dir.join("node_modules/puppeteer-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "players are not set up: run scripts/players.sh setup (make test does)"
    );
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let content = target.join("players-content");
    let status = std::process::Command::new(dir.join("content.sh"))
        .arg(&content)
        .status()
        .expect("content.sh");
    assert!(status.success(), "content.sh failed");

    // One partition: the clock report below then moves every session's watermark.
    let topic = unique("test.players");
    let db = unique("qoe_test_players");
    create_topic(&topic, 1).await.unwrap();
    let (_collector, base, _admin) =
        spawn_collector(&topic, &["--rate-per-ip", "0", "--rate-events-per-ip", "0"]).await;
    // A short session timeout, so that the page the viewer closes (players send nothing then)
    // ends as silent within the test.
    let _aggregator = spawn_aggregator(
        &topic,
        &db,
        &unique("g"),
        &[
            "--cmcd-session-timeout-secs",
            "10",
            "--allowed-lateness-secs",
            "10",
        ],
    );

    let out = target.join(format!("{topic}.players.json"));
    let started = now_ms();
    let node = std::process::Command::new("node")
        .arg(dir.join("run.mjs"))
        .args(["--collector", &base, "--content"])
        .arg(&content)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("node");
    assert!(node.success(), "run.mjs failed");
    let run: Run = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    eprintln!(
        "pages played for {} s; bodies and page logs: {}",
        (now_ms() - started) / 1000,
        out.display()
    );

    // The closed page's session goes silent after its last report; once the watermark is past
    // that plus the timeout and a window, the next report of the partition ends it. A request
    // report of another session is that next report (it opens no view).
    let last_report = run
        .pages
        .iter()
        .flat_map(|p| p.posted.iter().map(|b| b.at))
        .max()
        .unwrap_or(started);
    let wait_until = last_report + (10 + 10 + 10 + 2) * 1000;
    tokio::time::sleep(Duration::from_millis((wait_until - now_ms()).max(0) as u64)).await;
    let clock = format!("e=rr,sid=\"clock-{topic}\",ts={},rc=200,v=2\n", now_ms());
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/cmcd"))
        .header("content-type", "application/cmcd")
        .body(clock)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let ends: BTreeMap<i32, i64> = qoe_tests::partition_ends(&topic);
    wait_caught_up(&db, &topic, &ends, Duration::from_secs(60)).await;

    let mut failures = Vec::new();
    let (mut sdk_ms, mut sdk_steady_ms, mut sdk_heartbeat_ms, mut sdk_heartbeats, mut sdk_max_ms) =
        (0.0, 0.0, 0.0, 0, 0.0f64);
    for page in &run.pages {
        let t = &page.truth;
        let cmcd = if page.sid.is_empty() {
            None
        } else {
            Some(observed(&db, &page.sid, &page.cid).await)
        };
        let sdk = match (&page.sdk_view, &page.sdk_stream) {
            (Some(v), Some(s)) => Some(observed(&db, v, s).await),
            _ => None,
        };
        let mut wrong = Vec::new();
        for (path, got) in [("cmcd", &cmcd), ("sdk", &sdk)] {
            let Some(got) = got else { continue };
            let mut w = check(page, got);
            // What each scenario must have made the page itself see, and how each path ends.
            let problem = match page.name.as_str() {
                "hls-healthy" | "dash-healthy" | "shaka-healthy" | "hls-sdk-only"
                    if t.stalls > 0 =>
                {
                    Some(format!(
                        "the page itself stalled {} times: not a healthy playback",
                        t.stalls
                    ))
                }
                "hls-stall" if t.stalls != 1 => Some(format!(
                    "the delayed segment made {} stalls on the page, want 1",
                    t.stalls
                )),
                "dash-sdk-stall" if t.stalls == 0 => {
                    Some("the delayed segment made no stall on the page".into())
                }
                "hls-missing" | "dash-sdk-missing" | "shaka-sdk-missing" => {
                    w.extend(check_failure(page, got, false));
                    None
                }
                "hls-gone" | "dash-gone" | "shaka-gone" => {
                    w.extend(check_failure(page, got, true));
                    None
                }
                _ => None,
            };
            w.extend(problem);
            let problem = match page.name.as_str() {
                "hls-missing" if t.error.as_deref() != Some("manifestLoadError") => {
                    Some(format!("the page's player error was {:?}", t.error))
                }
                // Players send nothing when a page closes: the CMCD view ends silent. The SDK
                // says goodbye on pagehide.
                "hls-pause" if path == "cmcd" && got.end_reason != "timeout" => Some(format!(
                    "end reason {:?}: the closed page's CMCD view should end silent (timeout)",
                    got.end_reason
                )),
                "hls-pause" | "dash-sdk-pause" if path == "sdk" && got.end_reason != "exit" => {
                    Some(format!(
                        "end reason {:?}: the SDK reports the closed page's view as an exit",
                        got.end_reason
                    ))
                }
                "hls-throttle" if t.down == 0 => {
                    Some("the throttled origin made no down-switch on the page".into())
                }
                _ => None,
            };
            w.extend(problem);
            wrong.extend(w.into_iter().map(|w| format!("[{path}] {w}")));
        }
        // The failure after the start is the only fatal one after a start of its player (the
        // other pages of these players play on), once, under the player's code.
        let player = match page.name.as_str() {
            "hls-gone" => Some("hls.js/"),
            "dash-gone" => Some("dash.js/"),
            "shaka-gone" => Some("shaka/"),
            _ => None,
        };
        if let (Some(player), Some(code)) = (player, &t.error) {
            let got = fatal_after_start(&db, player).await;
            if got != [(code.clone(), 1)] {
                wrong.push(format!(
                    "fatal errors after start by code of {player}: {got:?}, want [({code:?}, 1)]"
                ));
            }
        }
        // The same playback reported both ways: the two rows agree.
        if let (Some(c), Some(s)) = (&cmcd, &sdk) {
            let within = |a: i64, b: i64, tol: i64| (a - b).abs() <= tol;
            if !(within(c.startup_ms, s.startup_ms, startup_tolerance(t))
                && within(c.playing_ms, s.playing_ms, 1_000)
                && within(c.stall_ms, s.stall_ms, 1_000)
                && c.stalls == s.stalls
                && (c.plays, c.vsf, c.vpf) == (s.plays, s.vsf, s.vpf)
                && c.error_code == s.error_code)
            {
                wrong.push(format!(
                    "CMCD and SDK rows of one playback disagree: {c:?} vs {s:?}"
                ));
            }
        }
        if let Some(r) = &page.sdk {
            let st = &r.stats;
            if st.errors > 0 {
                wrong.push(format!("the SDK caught {} errors of its own", st.errors));
            }
            sdk_ms += st.handler_ms;
            sdk_steady_ms += st.handler_ms - st.startup_ms.unwrap_or(st.handler_ms);
            sdk_heartbeat_ms += st.heartbeat_ms;
            sdk_heartbeats += st.heartbeats;
            sdk_max_ms = sdk_max_ms.max(st.max_handler_ms);
            eprintln!(
                "{:<14} SDK: {} handler calls, {:.2} ms in all ({:.2} ms up to the first frame), {} heartbeats ({:.3} ms each), longest handler {:.2} ms ({}), {} events dropped; by handler {:?}",
                page.name,
                st.handler_calls,
                st.handler_ms,
                st.startup_ms.unwrap_or(0.0),
                st.heartbeats,
                st.heartbeat_ms / st.heartbeats.max(1) as f64,
                st.max_handler_ms,
                st.slowest,
                st.dropped,
                st.by_handler
            );
        }
        eprintln!(
            "{:<14} page {:?}\n{:<14} cmcd {:?}\n{:<14} sdk  {:?}",
            page.name, page.truth, "", cmcd, "", sdk
        );
        if !wrong.is_empty() {
            let bodies = |posted: &[Posted]| {
                posted
                    .iter()
                    .map(|p| format!("    {} {}", p.at, p.body.as_deref().unwrap_or("").trim()))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            failures.push(format!(
                "{} (sid {}, SDK view {:?}): {}\n  CMCD bodies:\n{}\n  SDK bodies:\n{}\n  page console: {:?}",
                page.name,
                page.sid,
                page.sdk_view,
                wrong.join("; "),
                bodies(&page.posted),
                bodies(&page.beacons),
                page.console
            ));
        }
    }
    // The SDK's cost on the page's main thread (BENCHMARKS.md): after the first frame, all its
    // handlers (element events, heartbeats, sends) per heartbeat interval; the heartbeat handler
    // alone; everything including set-up. performance.now() is coarsened to 0.1 ms here, and
    // a handler's wall time includes any preemption of the page's thread.
    let n = sdk_heartbeats.max(1) as f64;
    eprintln!(
        "SDK main-thread time over {sdk_heartbeats} heartbeats: {:.3} ms per heartbeat interval after the first frame (all handlers), {:.3} ms per heartbeat handler, {:.3} ms per interval including set-up and startup, longest single handler {:.2} ms",
        sdk_steady_ms / n,
        sdk_heartbeat_ms / n,
        sdk_ms / n,
        sdk_max_ms,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
