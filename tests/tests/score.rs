//! The experience score's SQL, as the dashboards and `qoe_views` use it, computes on the real
//! ClickHouse what its definition (`qoe_schemas::score::Score::of`) computes: hand-worked cases
//! and a few hundred random totals, part by part.

use qoe_schemas::score::{sql, Score, Totals, DEFAULT_TOP_KBPS};
use qoe_tests::clickhouse_query;
use rand::{Rng, SeedableRng};

fn literal(x: f64) -> String {
    format!("toFloat64({x:?})")
}

fn parts(s: &Score) -> [Option<f64>; 5] {
    [s.success, s.startup, s.smoothness, s.quality, s.overall]
}

#[tokio::test]
async fn clickhouse_computes_the_score_as_defined() {
    let hour = 3_600_000.0;
    let mut cases = vec![
        // README's worked slice.
        Totals {
            attempts: 100.0,
            ebvs: 4.0,
            failures: 2.0,
            startups: 90.0,
            startup_ms_sum: 180_000.0,
            playing_ms: 99.0 * hour,
            stall_ms: hour,
            stalls: 600.0,
            bitrate_kbps_ms: 3000.0 * 99.0 * hour,
        },
        // A failed start, an exit before start, a window without attempts, nothing at all.
        Totals {
            attempts: 1.0,
            failures: 1.0,
            ..Totals::default()
        },
        Totals {
            attempts: 1.0,
            ebvs: 1.0,
            ..Totals::default()
        },
        Totals {
            playing_ms: 10_000.0,
            stall_ms: 500.0,
            stalls: 1.0,
            ..Totals::default()
        },
        Totals::default(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let attempts = f64::from(rng.random_range(0..500u32));
        let playing =
            f64::from(rng.random_range(0..3_600_000u32)) * f64::from(rng.random_range(0..50u32));
        cases.push(Totals {
            attempts,
            ebvs: (attempts * rng.random_range(0.0..0.2)).floor(),
            failures: (attempts * rng.random_range(0.0..0.3)).floor(),
            startups: (attempts * rng.random_range(0.0..1.0)).floor(),
            startup_ms_sum: attempts * f64::from(rng.random_range(100..20_000u32)),
            playing_ms: playing,
            stall_ms: (playing * rng.random_range(0.0..0.3)).floor(),
            stalls: f64::from(rng.random_range(0..200u32)),
            bitrate_kbps_ms: playing * f64::from(rng.random_range(0..12_000u32)),
        });
    }
    for t in &cases {
        let c = [
            t.attempts,
            t.ebvs,
            t.failures,
            t.startups,
            t.startup_ms_sum,
            t.playing_ms,
            t.stall_ms,
            t.stalls,
            t.bitrate_kbps_ms,
        ]
        .map(literal);
        let refs: [&str; 9] = std::array::from_fn(|i| c[i].as_str());
        let exprs: Vec<String> = sql(&refs, &literal(DEFAULT_TOP_KBPS))
            .into_iter()
            .map(|(name, e)| format!("{e} AS {name}"))
            .collect();
        let rows = clickhouse_query("default", &format!("SELECT {}", exprs.join(", ")))
            .await
            .unwrap();
        let got: Vec<Option<f64>> = rows[0]
            .iter()
            .map(|v| (v != "\\N").then(|| v.parse::<f64>().unwrap()))
            .collect();
        let want = parts(&Score::of(t, DEFAULT_TOP_KBPS));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let same = match (g, w) {
                (Some(g), Some(w)) => (g - w).abs() <= 0.051,
                (None, None) => true,
                _ => false,
            };
            assert!(
                same,
                "part {i} of {t:?}: ClickHouse {g:?}, definition {w:?}"
            );
        }
    }
}
