//! Incidents: a regression injected into one region x CDN slice for a period of simulated
//! time, so that dashboards and alerts have something real to show.
//!
//! Written as `key=value` pairs, e.g.
//! `region=eu-west,cdn=cdn-b,start=8m,duration=3m,stalls=5,startup=3,start_failures=0.25`:
//! `start` is counted from the beginning of the simulated run; `stalls`, `stall_length` and
//! `startup` multiply the slice's baseline; `start_failures` is the probability that a view
//! starting during the incident fails to start (it replaces the baseline when higher);
//! `start_failure_points` adds that many percentage points to the slice's own probability
//! (`start_failure_points=10`: 1.3 % becomes 11.3 %).

use crate::population::NetworkQuality;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub region: String,
    pub cdn: String,
    /// Offset from the start of the run, ms of simulated time.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub stalls: f64,
    pub stall_length: f64,
    pub startup: f64,
    pub start_failures: f64,
    /// Percentage points added to the start-failure probability.
    pub start_failure_points: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IncidentError {
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    #[error("unknown incident setting {0:?} (known: region, cdn, start, duration, stalls, stall_length, startup, start_failures, start_failure_points)")]
    UnknownKey(String),
    #[error("{key}: {value:?} is not {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("an incident needs {0}")]
    Missing(&'static str),
}

impl Incident {
    /// Whether the incident affects `region`/`cdn` at `offset_ms` into the run.
    pub fn applies(&self, region: &str, cdn: &str, offset_ms: i64) -> bool {
        self.region == region
            && self.cdn == cdn
            && offset_ms >= self.start_ms
            && offset_ms < self.start_ms + self.duration_ms
    }

    /// The slice's quality while the incident is on.
    pub fn degrade(&self, q: NetworkQuality) -> NetworkQuality {
        NetworkQuality {
            stalls: q.stalls * self.stalls,
            stall_length: q.stall_length * self.stall_length,
            startup: q.startup * self.startup,
            start_failures: q.start_failures,
            // A congested CDN edge cannot sustain the top renditions.
            top_rung: if self.stalls > 1.0 {
                q.top_rung.saturating_sub(2)
            } else {
                q.top_rung
            },
        }
    }
}

/// Parses durations like `90s`, `3m`, `1h` or a bare number of seconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| (n * scale).round() as i64)
}

impl FromStr for Incident {
    type Err = IncidentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut inc = Incident {
            region: String::new(),
            cdn: String::new(),
            start_ms: -1,
            duration_ms: -1,
            stalls: 1.0,
            stall_length: 1.0,
            startup: 1.0,
            start_failures: 0.0,
            start_failure_points: 0.0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| IncidentError::NotKeyValue(part.to_owned()))?;
            let (k, v) = (k.trim(), v.trim());
            let duration = |key: &'static str| {
                parse_duration_ms(v).ok_or(IncidentError::BadValue {
                    key,
                    value: v.to_owned(),
                    expected: "a duration like 90s, 3m or 1h",
                })
            };
            let factor = |key: &'static str| match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(IncidentError::BadValue {
                    key,
                    value: v.to_owned(),
                    expected: "a positive number",
                }),
            };
            let within =
                |key: &'static str, max: f64, expected: &'static str| match v.parse::<f64>() {
                    Ok(x) if (0.0..=max).contains(&x) => Ok(x),
                    _ => Err(IncidentError::BadValue {
                        key,
                        value: v.to_owned(),
                        expected,
                    }),
                };
            match k {
                "region" => inc.region = v.to_owned(),
                "cdn" => inc.cdn = v.to_owned(),
                "start" => inc.start_ms = duration("start")?,
                "duration" => inc.duration_ms = duration("duration")?,
                "stalls" => inc.stalls = factor("stalls")?,
                "stall_length" => inc.stall_length = factor("stall_length")?,
                "startup" => inc.startup = factor("startup")?,
                "start_failures" => {
                    inc.start_failures =
                        within("start_failures", 1.0, "a probability between 0 and 1")?
                }
                "start_failure_points" => {
                    inc.start_failure_points = within(
                        "start_failure_points",
                        100.0,
                        "percentage points between 0 and 100",
                    )?
                }
                other => return Err(IncidentError::UnknownKey(other.to_owned())),
            }
        }
        if inc.region.is_empty() {
            return Err(IncidentError::Missing("region"));
        }
        if inc.cdn.is_empty() {
            return Err(IncidentError::Missing("cdn"));
        }
        if inc.start_ms < 0 {
            return Err(IncidentError::Missing("start"));
        }
        if inc.duration_ms <= 0 {
            return Err(IncidentError::Missing("duration"));
        }
        Ok(inc)
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} x {} from +{}s for {}s: stalls x{}, stall length x{}, startup x{}, start failures {}% (+{} points)",
            self.region,
            self.cdn,
            self.start_ms / 1000,
            self.duration_ms / 1000,
            self.stalls,
            self.stall_length,
            self.startup,
            self.start_failures * 100.0,
            self.start_failure_points
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let i: Incident =
            "region=eu-west,cdn=cdn-b,start=8m,duration=3m,stalls=5,startup=3,start_failures=0.25"
                .parse()
                .unwrap();
        assert_eq!(i.region, "eu-west");
        assert_eq!(i.cdn, "cdn-b");
        assert_eq!(i.start_ms, 480_000);
        assert_eq!(i.duration_ms, 180_000);
        assert_eq!((i.stalls, i.startup, i.stall_length), (5.0, 3.0, 1.0));
        assert_eq!(i.start_failures, 0.25);
        assert_eq!(i.start_failure_points, 0.0);
        let j: Incident = "region=a,cdn=b,start=0s,duration=1m,start_failure_points=10"
            .parse()
            .unwrap();
        assert_eq!(j.start_failure_points, 10.0);
        assert!(i.applies("eu-west", "cdn-b", 480_000));
        assert!(i.applies("eu-west", "cdn-b", 659_999));
        assert!(!i.applies("eu-west", "cdn-b", 660_000));
        assert!(!i.applies("eu-west", "cdn-a", 500_000));
        assert!(!i.applies("us-east", "cdn-b", 500_000));
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        let err = |s: &str| s.parse::<Incident>().unwrap_err();
        assert_eq!(
            err("cdn=cdn-b,start=1m,duration=1m"),
            IncidentError::Missing("region")
        );
        assert_eq!(
            err("region=x,cdn=y,start=1m"),
            IncidentError::Missing("duration")
        );
        assert!(matches!(
            err("region=x,cdn=y,start=1m,duration=1m,stalls=-1"),
            IncidentError::BadValue { key: "stalls", .. }
        ));
        assert!(matches!(
            err("region=x,cdn=y,start=1m,duration=1m,start_failures=2"),
            IncidentError::BadValue {
                key: "start_failures",
                ..
            }
        ));
        assert!(matches!(
            err("region=x,cdn=y,start=soon,duration=1m"),
            IncidentError::BadValue { key: "start", .. }
        ));
        assert_eq!(
            err("region=x,cdn=y,start=1m,duration=1m,colour=red"),
            IncidentError::UnknownKey("colour".into())
        );
        assert_eq!(err("region"), IncidentError::NotKeyValue("region".into()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("90"), Some(90_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("1.5m"), Some(90_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("3d"), None);
        assert_eq!(parse_duration_ms("-1s"), None);
    }
}
