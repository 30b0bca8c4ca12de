//! The collector: HTTP beacons in, one Kafka message per accepted event out.
//!
//! - [`config`]: flags and defaults.
//! - [`ingest`]: pure parsing and validation of a beacon (rules live in `qoe-schemas`).
//! - [`client`]: client address and server-side region resolution.
//! - [`rate_limit`]: bounded per-client, per-view and global limits.
//! - [`sink`]: the Kafka producer (acknowledged delivery, backpressure, recovery).
//! - [`http`]: routes, status codes and tower layers.
//! - [`server`]: the accept loop (header read timeout, graceful shutdown).

pub mod client;
pub mod config;
pub mod http;
pub mod ingest;
pub mod rate_limit;
pub mod server;
pub mod sink;
