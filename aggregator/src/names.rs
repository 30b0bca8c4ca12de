//! The aggregator's Prometheus metrics: every name in one place, with its help text. Code
//! records through these constants; [`describe`] registers the help texts at start-up.

pub const EVENTS: &str = "qoe_aggregator_events_total";
pub const CMCD_REPORTS: &str = "qoe_aggregator_cmcd_reports_total";
pub const CMCD_SESSIONS: &str = "qoe_aggregator_cmcd_sessions";
pub const INSERT_SECONDS: &str = "qoe_aggregator_insert_seconds";
pub const BATCHES_WRITTEN: &str = "qoe_aggregator_batches_written_total";
pub const ROWS_WRITTEN: &str = "qoe_aggregator_rows_written_total";
pub const WRITE_FAILURES: &str = "qoe_aggregator_write_failures_total";
pub const PAUSED: &str = "qoe_aggregator_paused";
pub const CONSUMER_LAG: &str = "qoe_aggregator_consumer_lag";
pub const WATERMARK_DELAY: &str = "qoe_aggregator_watermark_delay_seconds";
pub const OPEN_WINDOWS: &str = "qoe_aggregator_open_windows";
pub const TRACKED_EVENTS: &str = "qoe_aggregator_tracked_events";
pub const ASSIGNED_PARTITIONS: &str = "qoe_aggregator_assigned_partitions";

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
    describe_gauge!(
        CMCD_SESSIONS,
        "CMCD sessions held (stored with each checkpoint), over all partitions"
    );
    describe_histogram!(
        INSERT_SECONDS,
        Unit::Seconds,
        "Time to write one partition's batch (stage + move + checkpoint read-back)"
    );
    describe_counter!(BATCHES_WRITTEN, "Batches committed to ClickHouse");
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
        TRACKED_EVENTS,
        "(view, seq) pairs held for duplicate detection, over all partitions"
    );
    describe_gauge!(ASSIGNED_PARTITIONS, "Partitions this instance owns");
}
