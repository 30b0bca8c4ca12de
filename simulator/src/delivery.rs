//! Delivery of beacons to a collector over HTTP, the way players send them (sendBeacon's
//! `text/plain` on the web, gzip on TVs), with retries and `Retry-After`, recording what was
//! acknowledged: the simulator binary's only I/O, kept out of the pure simulation.

use crate::native::LoggedRequest;
use crate::simulation::Beacon;
use qoe_schemas::QoeEvent;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How one beacon's delivery ended.
#[derive(Default)]
pub struct Outcome {
    /// Acknowledged copies of events (each copy once per acknowledged request).
    pub acked: Vec<QoeEvent>,
    pub unacked: u64,
    pub uncertain: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub retries: u64,
    pub error: Option<String>,
}

pub struct Sender {
    pub client: reqwest::Client,
    pub url: String,
    pub ingest_key: Option<String>,
    pub max_attempts: u32,
}

impl Sender {
    /// Posts a beacon (and its second copy, if any) until acknowledged or out of attempts.
    pub async fn deliver(&self, beacon: Beacon) -> Outcome {
        let mut out = Outcome::default();
        for _ in 0..beacon.copies {
            match self.post(&beacon, &mut out).await {
                Some(rejected) => out.acked.extend(
                    beacon
                        .events
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !rejected.contains(i))
                        .map(|(_, e)| {
                            // As the collector times it (the shift is clear of window
                            // boundaries by more than a request's latency).
                            let mut e = e.clone();
                            e.event_time += beacon.shift_ms;
                            e
                        }),
                ),
                None => {
                    out.unacked += beacon.events.len() as u64;
                    break;
                }
            }
        }
        out
    }

    /// One request with retries; `Some(rejected indices)` when acknowledged. A late re-send
    /// carries the `sent_at` of its original, i.e. `shift_ms` before now, on every attempt.
    async fn post(&self, beacon: &Beacon, out: &mut Outcome) -> Option<Vec<usize>> {
        let ctx = &beacon.ctx;
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=self.max_attempts {
            if attempt > 1 {
                out.retries += 1;
            }
            let sent_at = (beacon.shift_ms > 0).then(|| now_ms() - beacon.shift_ms);
            let body = crate::beacon::body(ctx, &beacon.events, sent_at);
            let body = body.as_slice();
            let mut req = self.client.post(&self.url);
            // Browsers use sendBeacon (text/plain, no preflight); TV apps compress.
            req = match ctx.platform {
                "web" => req
                    .header("content-type", "text/plain;charset=UTF-8")
                    .body(body.to_vec()),
                "tv" => req
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(gzip(body)),
                _ => req
                    .header("content-type", "application/json")
                    .body(body.to_vec()),
            };
            if let Some(key) = &self.ingest_key {
                req = req.header("x-qoe-key", key);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    *out.statuses.entry(status).or_default() += 1;
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match status {
                        204 => return Some(Vec::new()),
                        200 => return Some(rejected_indices(resp, out).await),
                        429 => retry_after.unwrap_or(backoff),
                        503 | 408 | 500..=599 => {
                            // Some events of the request may be in Kafka already.
                            out.uncertain += 1;
                            retry_after.unwrap_or(backoff)
                        }
                        _ => {
                            let text = resp.text().await.unwrap_or_default();
                            out.error = Some(format!("HTTP {status}: {}", truncate(&text, 200)));
                            return None;
                        }
                    }
                }
                Err(e) => {
                    *out.statuses.entry(0).or_default() += 1;
                    out.uncertain += 1;
                    out.error = Some(format!("request failed: {e}"));
                    backoff
                }
            };
            tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        None
    }
}

/// How one log batch's delivery ended.
#[derive(Default)]
pub struct LogOutcome {
    /// Acknowledged copies of requests (each copy once per acknowledged body).
    pub acked: Vec<LoggedRequest>,
    pub unacked: u64,
    pub uncertain: u64,
    pub error: Option<String>,
}

impl Sender {
    /// Posts a native view's requests as its CDN's log stream would (`POST /v1/cdn-logs`, one
    /// stream per CDN), `copies` times, each until acknowledged or out of attempts.
    pub async fn deliver_logs(&self, requests: Vec<LoggedRequest>, copies: u8) -> LogOutcome {
        let mut out = LogOutcome::default();
        let Some(first) = requests.first() else {
            return out;
        };
        let base = self.url.strip_suffix("/v1/beacons").unwrap_or(&self.url);
        let url = format!("{base}/v1/cdn-logs?cdn={}", first.cdn);
        let body: String = requests.iter().map(|r| r.json_line() + "\n").collect();
        'copy: for _ in 0..copies {
            let mut backoff = Duration::from_millis(200);
            for _ in 0..self.max_attempts {
                let mut req = self
                    .client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone());
                if let Some(key) = &self.ingest_key {
                    req = req.header("x-qoe-key", key);
                }
                let wait = match req.send().await {
                    Ok(resp) => match resp.status().as_u16() {
                        204 => {
                            out.acked.extend(requests.iter().cloned());
                            continue 'copy;
                        }
                        429 => backoff,
                        408 | 500..=599 => {
                            out.uncertain += requests.len() as u64;
                            backoff
                        }
                        status => {
                            let text = resp.text().await.unwrap_or_default();
                            out.error = Some(format!("HTTP {status}: {}", truncate(&text, 200)));
                            out.unacked += requests.len() as u64;
                            return out;
                        }
                    },
                    Err(e) => {
                        out.uncertain += requests.len() as u64;
                        out.error = Some(format!("request failed: {e}"));
                        backoff
                    }
                };
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            out.unacked += requests.len() as u64;
            return out;
        }
        out
    }
}

/// Indices of events the collector rejected, from a 200 answer.
async fn rejected_indices(resp: reqwest::Response, out: &mut Outcome) -> Vec<usize> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        rejected: Vec<Rejected>,
    }
    #[derive(serde::Deserialize)]
    struct Rejected {
        index: usize,
        reason: String,
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Answer>(&bytes) {
        Ok(a) => {
            if let Some(r) = a.rejected.first() {
                out.error = Some(format!("event rejected: {}", r.reason));
            }
            a.rejected.into_iter().map(|r| r.index).collect()
        }
        Err(_) => Vec::new(),
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    enc.write_all(body).expect("gzip to memory");
    enc.finish().expect("gzip to memory")
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
