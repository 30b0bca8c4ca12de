//! The collector: HTTP beacons and CMCD v2 reports in; one Kafka message per accepted beacon
//! (or one per event, `--kafka-message-format event`) and one per CMCD report out.
//!
//! - [`config`]: flags and defaults.
//! - [`ingest`]: pure parsing and validation of a beacon (rules live in `qoe-schemas`).
//! - [`cmcd`]: pure handling of a `POST /v1/cmcd` body: its lines, and what the collector adds
//!   to each report (region, CDN, platform, player).
//! - [`cdn_logs`]: pure handling of a `POST /v1/cdn-logs` body (CMCD v1 request mode from CDN
//!   and origin logs): its format, its lines, and what the collector adds to each request.
//! - [`client`]: client address and server-side region resolution.
//! - [`rate_limit`]: bounded per-client, per-view and global limits.
//! - [`sink`]: the Kafka producer (acknowledged delivery, backpressure, recovery), with its own
//!   `SinkConfig` and option types; `http` takes an `HttpConfig`, so only `config` knows the
//!   flags.
//! - [`http`]: the public routes, status codes and tower layers.
//! - [`admin`]: the admin listener (liveness, readiness, metrics).
//! - [`server`]: the accept loop (header read timeout, graceful shutdown).
//! - [`names`]: the Prometheus metric names and their help texts.
//! - [`memory`]: the allocator's settings.

pub mod admin;
pub mod cdn_logs;
pub mod client;
pub mod cmcd;
pub mod config;
pub mod http;
pub mod ingest;
pub mod memory;
pub mod names;
pub mod rate_limit;
pub mod server;
pub mod sink;
