//! The aggregator: consumes QoE events from Kafka, computes event-time windowed metrics and
//! per-view partials, and writes them to ClickHouse effectively once.
//!
//! Modules:
//! - [`store`]: the ClickHouse connection (server version detection, legacy-server mode).
//! - [`migrate`]: applies the schema migrations of the `qoe-schemas` crate.

pub mod kafka_check;
pub mod migrate;
pub mod source;
pub mod store;
