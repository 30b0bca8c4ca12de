//! The experience score (SPEC §4 "Experience score"): one 0-100 number for a view or a slice,
//! with four sub-scores, computed from additive sums only, so that a slice's score at any grain
//! is a function of the stored totals (exact, re-computable, and the same whichever grain the
//! totals were summed from). A view's score is the same formula applied to the view's own
//! totals (one attempt).
//!
//! This module is the definition: the dashboards' and `qoe_views`' SQL is generated from
//! [`sql`] (through `schemas/metrics.json` and migration 0007), and tests check that ClickHouse
//! computes the same numbers as [`Score::of`].
//!
//! The formulas and the reasoning for each constant are in README.md ("Experience score").

/// Additive totals of a slice (any grain) or of one view.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Play requests.
    pub attempts: f64,
    /// Exits before video start (not failures).
    pub ebvs: f64,
    /// Fatal failures, before (VSF) or after (VPF) the first frame.
    pub failures: f64,
    /// Plays whose startup time is known, and the sum of those startup times.
    pub startups: f64,
    pub startup_ms_sum: f64,
    pub playing_ms: f64,
    pub stall_ms: f64,
    pub stalls: f64,
    /// Sum over playing time of the bitrate played (kbps x ms).
    pub bitrate_kbps_ms: f64,
}

/// Startup time (s) at which the startup sub-score is 50: `100 * 8 / (8 + s)` (Mux).
pub const STARTUP_HALF_S: f64 = 8.0;
/// Rebuffering ratio weight: 5 % of the time stalled halves smoothness (`1 / (1 + 20 x 0.05)`).
pub const REBUFFER_WEIGHT: f64 = 20.0;
/// Stalls per hour of watching that halve smoothness on their own.
pub const STALLS_PER_HOUR_HALF: f64 = 30.0;
/// Stall frequency is taken over at least this much watching (hours: 10 minutes), so that one
/// stall in a 20-second view does not count as 180 an hour.
pub const MIN_WATCH_HOURS: f64 = 1.0 / 6.0;
/// Bitrate at and below which quality is 0, kbps (a 240p rendition).
pub const QUALITY_FLOOR_KBPS: f64 = 300.0;
/// The top rendition's bitrate when no ladder is configured, kbps (1080p at a common ladder's
/// top; the simulator's ladder tops at 8,000).
pub const DEFAULT_TOP_KBPS: f64 = 8000.0;
/// Weights of startup, smoothness and quality in the overall score.
pub const WEIGHTS: [f64; 3] = [0.25, 0.45, 0.30];

/// The score and its parts; a part is `None` when the totals say nothing about it (no plays,
/// no playing time, no bitrate reported).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub success: Option<f64>,
    pub startup: Option<f64>,
    pub smoothness: Option<f64>,
    pub quality: Option<f64>,
    /// `success / 100` times the weighted mean of the parts present (only `success` when none
    /// is); `None` only when there is nothing at all to score.
    pub overall: Option<f64>,
}

fn clamp100(x: f64) -> f64 {
    x.clamp(0.0, 100.0)
}

impl Score {
    pub fn of(t: &Totals, top_kbps: f64) -> Score {
        let success = (t.attempts > 0.0).then(|| {
            clamp100(
                100.0 * (t.attempts - t.failures - t.ebvs) / t.attempts
                    + 50.0 * t.ebvs / t.attempts,
            )
        });
        let startup = (t.startups > 0.0).then(|| {
            let s = t.startup_ms_sum / t.startups / 1000.0;
            100.0 * STARTUP_HALF_S / (STARTUP_HALF_S + s)
        });
        let watched = t.playing_ms + t.stall_ms;
        let smoothness = (watched > 0.0).then(|| {
            let ratio = t.stall_ms / watched;
            let per_hour = t.stalls / (watched / 3_600_000.0).max(MIN_WATCH_HOURS);
            100.0 / (1.0 + REBUFFER_WEIGHT * ratio + per_hour / STALLS_PER_HOUR_HALF)
        });
        let quality = (t.playing_ms > 0.0 && t.bitrate_kbps_ms > 0.0).then(|| {
            let kbps = t.bitrate_kbps_ms / t.playing_ms;
            let range = (top_kbps / QUALITY_FLOOR_KBPS)
                .log2()
                .max(f64::MIN_POSITIVE);
            clamp100(100.0 * (kbps / QUALITY_FLOOR_KBPS).log2() / range)
        });
        let parts = [startup, smoothness, quality];
        let weight: f64 = parts
            .iter()
            .zip(WEIGHTS)
            .filter(|(p, _)| p.is_some())
            .map(|(_, w)| w)
            .sum();
        let mean = (weight > 0.0).then(|| {
            parts
                .iter()
                .zip(WEIGHTS)
                .map(|(p, w)| p.unwrap_or(0.0) * w)
                .sum::<f64>()
                / weight
        });
        let overall = match (success, mean) {
            (Some(s), Some(m)) => Some(s / 100.0 * m),
            (Some(s), None) => Some(s),
            (None, m) => m,
        };
        Score {
            success,
            startup,
            smoothness,
            quality,
            overall,
        }
    }
}

/// SQL expressions (ClickHouse 18.16 and later) of the score's parts, over the SQL expressions
/// `c` gives for each total, in the order of [`Totals`]: `attempts, ebvs, failures, startups,
/// startup_ms_sum, playing_ms, stall_ms, stalls, bitrate_kbps_ms`, and `top_kbps`. Returns
/// `(name, expression)` for `score_success`, `score_startup`, `score_smoothness`,
/// `score_quality` and `score`, each NULL where [`Score::of`] gives `None`, rounded to 0.1.
pub fn sql(c: &[&str; 9], top_kbps: &str) -> Vec<(&'static str, String)> {
    let [attempts, ebvs, failures, startups, startup_sum, playing, stall, stalls, kbps_ms] = c;
    let f = |x: f64| format!("{x:?}");
    let success = format!(
        "if({attempts} = 0, NULL, least(100, greatest(0, 100 * ({attempts} - {failures} - {ebvs}) / {attempts} + 50 * {ebvs} / {attempts})))"
    );
    let startup = format!(
        "if({startups} = 0, NULL, 100 * {h} / ({h} + {startup_sum} / {startups} / 1000))",
        h = f(STARTUP_HALF_S)
    );
    let smoothness = format!(
        "if({playing} + {stall} = 0, NULL, 100 / (1 + {rw} * {stall} / ({playing} + {stall}) \
         + {stalls} / greatest(({playing} + {stall}) / 3600000, {mw}) / {sh}))",
        rw = f(REBUFFER_WEIGHT),
        mw = f(MIN_WATCH_HOURS),
        sh = f(STALLS_PER_HOUR_HALF)
    );
    let quality = format!(
        "if({playing} = 0 OR {kbps_ms} = 0, NULL, least(100, greatest(0, 100 * log2({kbps_ms} / {playing} / {fl}) / log2({top_kbps} / {fl}))))",
        fl = f(QUALITY_FLOOR_KBPS)
    );
    let [ws, wm, wq] = WEIGHTS.map(f);
    // Each part is defined under an alias where it first appears (ClickHouse allows an alias
    // anywhere in an expression, and the same alias for the same expression twice), so the
    // overall score refers to the parts instead of repeating them.
    let def = |e: &str, alias: &str| format!("(({e}) AS {alias})");
    let (s, st, sm, q) = (
        def(&success, "_score_success"),
        def(&startup, "_score_startup"),
        def(&smoothness, "_score_smoothness"),
        def(&quality, "_score_quality"),
    );
    let weight = def(
        &format!("{ws} * isNotNull({st}) + {wm} * isNotNull({sm}) + {wq} * isNotNull({q})"),
        "_score_weight",
    );
    let mean = def(
        &format!(
            "if({weight} = 0, NULL, ({ws} * ifNull(_score_startup, 0) + {wm} * ifNull(_score_smoothness, 0) \
             + {wq} * ifNull(_score_quality, 0)) / _score_weight)"
        ),
        "_score_mean",
    );
    let overall = format!(
        "if(isNull({s}), {mean}, if(isNull(_score_mean), _score_success, _score_success / 100 * _score_mean))"
    );
    let round = |e: String| format!("round({e}, 1)");
    vec![
        ("score_success", round(s.clone())),
        ("score_startup", round(st.clone())),
        ("score_smoothness", round(sm.clone())),
        ("score_quality", round(q.clone())),
        ("score", round(overall)),
    ]
}

/// The placeholders the dashboards substitute (`{attempts}`, ...): [`sql`] over them.
pub fn sql_templates() -> Vec<(&'static str, String)> {
    sql(
        &[
            "{attempts}",
            "{ebvs}",
            "{failures}",
            "{startups}",
            "{startup_ms_sum}",
            "{playing_ms}",
            "{stall_ms}",
            "{stalls}",
            "{bitrate_kbps_ms}",
        ],
        "{top_kbps}",
    )
}

/// The columns of `qoe_views` the per-view score is computed from (one attempt per view; a view
/// that ended in error failed, one that never started otherwise left before video start).
pub const VIEW_COLUMNS: [&str; 9] = [
    "1",
    "(started = 0 AND end_reason != 'error')",
    "(end_reason = 'error')",
    "(started = 1 AND startup_ms > 0)",
    "if(started = 1 AND startup_ms > 0, startup_ms, 0)",
    "playing_ms",
    "stall_ms",
    "stalls",
    "bitrate_kbps_ms",
];

/// The per-view totals `qoe_views` shows, merged from the partial states of `qoe_view_partials`.
pub const VIEW_TOTALS: &str = "\
SELECT
    view_id,
    anyLastMerge(region) AS region,
    anyLastMerge(cdn) AS cdn,
    anyLastMerge(stream_type) AS stream_type,
    anyLastMerge(platform) AS platform,
    anyLastMerge(stream_id) AS stream_id,
    anyLastMerge(player) AS player,
    anyLastMerge(protocol) AS protocol,
    minMerge(first_event_time) AS start_time,
    maxMerge(last_event_time) AS last_event_time,
    maxMerge(started) AS started,
    maxMerge(startup_ms) AS startup_ms,
    sumMerge(playing_ms) AS playing_ms,
    sumMerge(stall_ms) AS stall_ms,
    sumMerge(stalls) AS stalls,
    sumMerge(bitrate_kbps_ms) AS bitrate_kbps_ms,
    if(playing_ms = 0, 0, bitrate_kbps_ms / playing_ms) AS avg_bitrate_kbps,
    sumMerge(errors) AS errors,
    argMaxMerge(error_code) AS error_code,
    argMaxMerge(end_reason) AS end_reason
FROM qoe_view_partials
GROUP BY view_id";

/// `qoe_views` with each view's score and its parts, computed from the view's totals with this
/// module's formula: what migration 0007's `-- qoe:generate view-score` line stands for.
pub fn view_score_sql() -> String {
    let scores: Vec<String> = sql(&VIEW_COLUMNS, &format!("{DEFAULT_TOP_KBPS:?}"))
        .into_iter()
        .map(|(name, e)| format!("    {e} AS {name}"))
        .collect();
    let totals: Vec<String> = VIEW_TOTALS.lines().map(|l| format!("    {l}")).collect();
    format!(
        "DROP TABLE IF EXISTS qoe_views;\n\
         CREATE VIEW IF NOT EXISTS qoe_views AS\n\
         SELECT *,\n{}\n\
         FROM\n(\n{}\n);\n",
        scores.join(",\n"),
        totals.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 0.05)
    }

    /// Worked by hand (README.md, "Experience score"): 100 attempts, 2 failures, 4 exits before
    /// start; startup 2 s on average; 1 % stalled with 6 stalls an hour; 3,000 kbps against a
    /// top of 8,000.
    #[test]
    fn a_slice_worked_by_hand() {
        let hour = 3_600_000.0;
        let t = Totals {
            attempts: 100.0,
            ebvs: 4.0,
            failures: 2.0,
            startups: 90.0,
            startup_ms_sum: 90.0 * 2000.0,
            playing_ms: 99.0 * hour,
            stall_ms: 1.0 * hour,
            stalls: 600.0,
            bitrate_kbps_ms: 3000.0 * 99.0 * hour,
        };
        let s = Score::of(&t, 8000.0);
        // success: 94 played x 100 + 4 x 50 = 9,600 / 100.
        assert!(close(s.success, 96.0), "{s:?}");
        // startup: 100 x 8 / (8 + 2) = 80.
        assert!(close(s.startup, 80.0), "{s:?}");
        // smoothness: 100 / (1 + 20 x 0.01 + 6 / 30) = 100 / 1.4 = 71.43.
        assert!(close(s.smoothness, 71.43), "{s:?}");
        // quality: log2(3000 / 300) / log2(8000 / 300) = 3.3219 / 4.7370 = 70.13.
        assert!(close(s.quality, 70.13), "{s:?}");
        // overall: 0.96 x (0.25 x 80 + 0.45 x 71.43 + 0.30 x 70.13) = 0.96 x 73.18 = 70.25.
        assert!(close(s.overall, 70.25), "{s:?}");
    }

    #[test]
    fn views_worked_by_hand() {
        // A view that failed to start: 0, whatever else.
        let failed = Totals {
            attempts: 1.0,
            failures: 1.0,
            ..Totals::default()
        };
        assert_eq!(Score::of(&failed, 8000.0).overall, Some(0.0));
        // An exit before video start: 50, no other part.
        let left = Totals {
            attempts: 1.0,
            ebvs: 1.0,
            ..Totals::default()
        };
        let s = Score::of(&left, 8000.0);
        assert_eq!(
            (s.overall, s.startup, s.smoothness),
            (Some(50.0), None, None)
        );
        // A 20-second view with one 1-second stall, 1 s startup, at the top bitrate:
        // smoothness 100 / (1 + 20 x 1/21 + 1 / (1/6) / 30) = 100 / 2.1524 = 46.46 (the stall
        // frequency counts over 10 minutes, not 21 s); startup 88.89; quality 100;
        // overall 0.25 x 88.89 + 0.45 x 46.46 + 0.30 x 100 = 73.13.
        let short = Totals {
            attempts: 1.0,
            startups: 1.0,
            startup_ms_sum: 1000.0,
            playing_ms: 20_000.0,
            stall_ms: 1000.0,
            stalls: 1.0,
            bitrate_kbps_ms: 8000.0 * 20_000.0,
            ..Totals::default()
        };
        let s = Score::of(&short, 8000.0);
        assert!(close(s.smoothness, 46.46), "{s:?}");
        assert!(close(s.overall, 73.13), "{s:?}");
        // Quality stays within 0-100 above the top and below the floor.
        let mut hi = short;
        hi.bitrate_kbps_ms = 20_000.0 * 20_000.0;
        assert_eq!(Score::of(&hi, 8000.0).quality, Some(100.0));
        hi.bitrate_kbps_ms = 100.0 * 20_000.0;
        assert_eq!(Score::of(&hi, 8000.0).quality, Some(0.0));
    }

    #[test]
    fn nothing_to_score_is_none_and_windows_without_attempts_still_score() {
        assert_eq!(Score::of(&Totals::default(), 8000.0).overall, None);
        // A 10 s window of views that started earlier: no attempts, still smoothness.
        let t = Totals {
            playing_ms: 10_000.0,
            ..Totals::default()
        };
        let s = Score::of(&t, 8000.0);
        assert_eq!(
            (s.success, s.smoothness, s.overall),
            (None, Some(100.0), Some(100.0))
        );
    }
}
