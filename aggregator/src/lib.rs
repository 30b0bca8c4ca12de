//! The aggregator: consumes QoE events from Kafka, computes event-time windowed metrics and
//! per-view partials, and writes them to ClickHouse effectively once.
//!
//! Pure logic:
//! - [`metrics`]: how one event adds to the per-window metrics of the catalogue.
//! - [`context`]: a view's context, the slice it is grouped by, the grouping dimensions.
//! - [`batch`]: the rows accumulated since a partition's last write.
//! - [`checkpoint`]: where a written batch leaves its partition.
//! - [`staging`]: the staged row's columns and RowBinary encoding.
//! - [`window`]: per-partition windowing, watermark, lateness, CMCD duplicate tracking and the
//!   partition's state snapshot.
//! - [`views`]: beacon views over their whole life: duplicates, timeouts, bounds.
//! - [`cmcd`]: CMCD sessions turned into views and events.
//! - [`route`]: which server (shard, replica) a partition writes to on a cluster; failover.
//!
//! I/O:
//! - [`store`]: the ClickHouse connection (server version detection, legacy-server mode).
//! - [`migrate`]: applies the schema migrations of the `qoe-schemas` crate, on one server or
//!   (rewritten by `qoe_schemas::cluster`) on a cluster.
//! - [`writer`]: writes a batch and its checkpoint atomically; reads checkpoints back.
//! - [`source`] (pure): the rules of reading a partition: resume plan, routing of fetched
//!   messages, refetch position, backoff.
//! - [`consumer`]: the consumer-group loop tying it together (its per-message dispatch, loop
//!   decisions and write policy are pure).
//! - [`config`]: the command line and the configuration it builds.
//! - [`kafka_check`]: reachability check.
//! - [`names`]: the Prometheus metric names and their help texts.

pub mod batch;
pub mod checkpoint;
pub mod cmcd;
pub mod config;
pub mod consumer;
pub mod context;
pub mod kafka_check;
pub mod metrics;
pub mod migrate;
pub mod names;
pub mod route;
pub mod source;
pub mod staging;
pub mod store;
pub mod views;
pub mod window;
pub mod writer;
