//! Who watches what, where: the dimensions a simulated view is drawn from, and the network
//! quality of each region x CDN slice, which drives startup times, stalls and bitrates.
//!
//! The baseline differs a little between slices (as it does in real traffic) but far less
//! than an incident does, so a regression stands out against the healthy slices.

use qoe_schemas::StreamType;
use rand::Rng;

pub const REGIONS: [(&str, f64); 4] = [
    ("eu-west", 0.30),
    ("us-east", 0.35),
    ("ap-south", 0.20),
    ("sa-east", 0.15),
];
/// Small regions, drawn in addition to [`REGIONS`] when a run has a long tail: their slices
/// hold 0.15-1.3 % of the audience each, where one unlucky view moves a ratio.
pub const TAIL_REGIONS: [(&str, f64); 3] = [
    ("oc-east", 0.03),
    ("af-south", 0.025),
    ("me-central", 0.008),
];
pub const CDNS: [(&str, f64); 3] = [("cdn-a", 0.45), ("cdn-b", 0.35), ("cdn-c", 0.20)];
pub const PLATFORMS: [(&str, f64); 4] = [
    ("web", 0.35),
    ("android", 0.30),
    ("ios", 0.20),
    ("tv", 0.15),
];
/// Share of views that watch a live channel (the rest watch VOD titles).
pub const LIVE_SHARE: f64 = 0.7;
pub const LIVE_CHANNELS: u32 = 8;
pub const VOD_TITLES: u32 = 40;

/// The ABR ladder every stream is encoded with (kbps), lowest first.
pub const ABR_LADDER: [u32; 6] = [400, 800, 1500, 2500, 4500, 8000];

/// The context of one view, sent once per beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewContext {
    pub view_id: String,
    pub stream_id: String,
    pub stream_type: StreamType,
    pub cdn: &'static str,
    pub platform: &'static str,
    pub region: &'static str,
    pub player: &'static str,
    pub protocol: &'static str,
}

/// How a slice's network behaves, relative to a healthy reference slice (1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkQuality {
    /// Multiplies the stall rate per playing hour.
    pub stalls: f64,
    /// Multiplies stall durations.
    pub stall_length: f64,
    /// Multiplies startup times.
    pub startup: f64,
    /// Multiplies the probability that a start fails.
    pub start_failures: f64,
    /// Highest ABR ladder rung the network sustains.
    pub top_rung: usize,
}

/// Baseline quality of a region x CDN slice: a fixed, modest spread.
pub fn baseline_quality(region: &str, cdn: &str) -> NetworkQuality {
    let region_factor = match region {
        "ap-south" => 1.15,
        "af-south" => 1.2,
        "me-central" => 1.1,
        "oc-east" => 1.05,
        "sa-east" => 1.1,
        "us-east" => 0.95,
        _ => 1.0,
    };
    let cdn_factor = match cdn {
        "cdn-c" => 1.1,
        "cdn-a" => 0.95,
        _ => 1.0,
    };
    let f = region_factor * cdn_factor;
    NetworkQuality {
        stalls: f,
        stall_length: f.sqrt(),
        startup: f.sqrt(),
        start_failures: f,
        top_rung: if f > 1.2 { 4 } else { 5 },
    }
}

/// Picks from a weighted list (weights need not sum to 1).
pub fn pick<T: Copy>(rng: &mut impl Rng, items: &[(T, f64)]) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// A log-normal draw with the given median and shape: startup times, stall lengths and
/// watch times are all long-tailed like this in real traffic.
pub fn log_normal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    // Box-Muller; 1 - u keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    median * (sigma * z).exp()
}

/// Draws the context of view number `n` of a run; with `long_tail`, some viewers come from
/// the [`TAIL_REGIONS`].
pub fn draw_context(rng: &mut impl Rng, run: &str, n: u64, long_tail: bool) -> ViewContext {
    let region = if long_tail {
        let all: Vec<(&'static str, f64)> = REGIONS.iter().chain(&TAIL_REGIONS).copied().collect();
        pick(rng, &all)
    } else {
        pick(rng, &REGIONS)
    };
    let cdn = pick(rng, &CDNS);
    let platform = pick(rng, &PLATFORMS);
    let (stream_type, stream_id) = if rng.random_bool(LIVE_SHARE) {
        // Popularity falls off with the channel number, as it does on real line-ups.
        let ch = (log_normal(rng, 1.5, 0.9) as u32).clamp(1, LIVE_CHANNELS);
        (StreamType::Live, format!("live-{ch}"))
    } else {
        (
            StreamType::Vod,
            format!("vod-{}", rng.random_range(1..=VOD_TITLES)),
        )
    };
    let (player, protocol) = match platform {
        "ios" => ("avplayer/17", "hls"),
        "android" => ("exoplayer/2.19", "dash"),
        "tv" => ("shaka/4.7", "dash"),
        _ => ("hls.js/1.6.2", "hls"),
    };
    ViewContext {
        view_id: format!("{run}-{n}"),
        stream_id,
        stream_type,
        cdn,
        platform,
        region,
        player,
        protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn log_normal_has_the_requested_median() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut xs: Vec<f64> = (0..20_001)
            .map(|_| log_normal(&mut rng, 1200.0, 0.7))
            .collect();
        xs.sort_by(f64::total_cmp);
        let median = xs[10_000];
        assert!((1100.0..1300.0).contains(&median), "median {median}");
        assert!(xs.iter().all(|x| *x > 0.0));
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let eu = (0..n)
            .filter(|_| pick(&mut rng, &REGIONS) == "eu-west")
            .count();
        let share = eu as f64 / f64::from(n);
        assert!((0.27..0.33).contains(&share), "eu-west share {share}");
    }

    #[test]
    fn contexts_are_valid_view_ids_and_deterministic() {
        let a: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(3);
            (0..50)
                .map(|n| draw_context(&mut rng, "run", n, false))
                .collect()
        };
        let mut rng = StdRng::seed_from_u64(3);
        for (n, ctx) in a.iter().enumerate() {
            assert_eq!(&draw_context(&mut rng, "run", n as u64, false), ctx);
            assert!(qoe_schemas::validate::is_valid_view_id(&ctx.view_id));
        }
    }
}
