//! The aggregator's Prometheus metrics: every name in one place, with its help text. Code
//! records through these constants; [`describe`] registers the help texts at start-up.

pub const EVENTS: &str = "qoe_aggregator_events_total";
pub const CMCD_REPORTS: &str = "qoe_aggregator_cmcd_reports_total";
pub const LOG_REQUESTS: &str = "qoe_aggregator_log_requests_total";
pub const CMCD_SESSIONS: &str = "qoe_aggregator_cmcd_sessions";
pub const INSERT_SECONDS: &str = "qoe_aggregator_insert_seconds";
pub const BATCHES_WRITTEN: &str = "qoe_aggregator_batches_written_total";
pub const ROWS_WRITTEN: &str = "qoe_aggregator_rows_written_total";
pub const WRITE_FAILURES: &str = "qoe_aggregator_write_failures_total";
pub const PAUSED: &str = "qoe_aggregator_paused";
pub const CONSUMER_LAG: &str = "qoe_aggregator_consumer_lag";
pub const WATERMARK_DELAY: &str = "qoe_aggregator_watermark_delay_seconds";
pub const OPEN_WINDOWS: &str = "qoe_aggregator_open_windows";
pub const TRACKED_REPORTS: &str = "qoe_aggregator_tracked_cmcd_reports";
pub const VIEWS_HELD: &str = "qoe_aggregator_views";
pub const VIEWS_EVICTED: &str = "qoe_aggregator_views_evicted_total";
pub const STATE_SNAPSHOT_BYTES: &str = "qoe_aggregator_state_snapshot_bytes";
pub const ASSIGNED_PARTITIONS: &str = "qoe_aggregator_assigned_partitions";
pub const OPEN_RETRIES: &str = "qoe_aggregator_partition_open_retries_total";

/// Registers the help text of every metric (call once the recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        EVENTS,
        "Kafka messages by outcome: accepted, late, duplicate, invalid"
    );
    describe_counter!(
        CMCD_REPORTS,
        "CMCD reports by outcome: accepted (turned into events), late, duplicate"
    );
    describe_counter!(
        LOG_REQUESTS,
        "CDN log requests by outcome: accepted (request-mode metrics), late, duplicate (a shipper's retry)"
    );
    describe_gauge!(
        CMCD_SESSIONS,
        "CMCD sessions held (part of the partition state snapshot), over all partitions"
    );
    describe_histogram!(
        INSERT_SECONDS,
        Unit::Seconds,
        "Time to write one partition's batch (stage + move + checkpoint read-back)"
    );
    describe_counter!(BATCHES_WRITTEN, "Batches committed to ClickHouse");
    describe_counter!(
        OPEN_RETRIES,
        "Failed reads of an assigned partition's checkpoint (ClickHouse unreachable): the partition is not consumed until one succeeds"
    );
    describe_counter!(ROWS_WRITTEN, "Rows committed to ClickHouse");
    describe_counter!(
        WRITE_FAILURES,
        "Batch writes that failed (retried with backoff) or were fenced"
    );
    describe_gauge!(
        PAUSED,
        "1 while consumption is paused because ClickHouse does not take writes"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's end, per partition"
    );
    describe_gauge!(
        WATERMARK_DELAY,
        Unit::Seconds,
        "Wall clock minus the partition's watermark"
    );
    describe_gauge!(OPEN_WINDOWS, "Windows not yet final, over all partitions");
    describe_gauge!(
        TRACKED_REPORTS,
        "CMCD reports held for duplicate detection (while their window is open), over all partitions"
    );
    describe_gauge!(
        VIEWS_HELD,
        "Beacon views held for duplicate detection and timeouts (until silent for the view timeout), over all partitions"
    );
    describe_counter!(
        VIEWS_EVICTED,
        "Views dropped because a partition held --max-views-per-partition (a dropped view's later copies may count again)"
    );
    describe_histogram!(
        STATE_SNAPSHOT_BYTES,
        "Size of the partition state snapshots stored with checkpoints"
    );
    describe_gauge!(ASSIGNED_PARTITIONS, "Partitions this instance owns");
}
