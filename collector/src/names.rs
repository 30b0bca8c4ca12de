//! The collector's Prometheus metrics: every name in one place, with its help text. Code
//! records through these constants; [`describe`] registers the help texts at start-up.

pub const HTTP_REQUESTS: &str = "qoe_collector_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "qoe_collector_http_request_seconds";
pub const EVENTS_ACCEPTED: &str = "qoe_collector_events_accepted_total";
pub const EVENTS_REJECTED: &str = "qoe_collector_events_rejected_total";
pub const CMCD_REPORTS_ACCEPTED: &str = "qoe_collector_cmcd_reports_accepted_total";
pub const CMCD_LINES_REJECTED: &str = "qoe_collector_cmcd_lines_rejected_total";
pub const CDN_LOG_REQUESTS_ACCEPTED: &str = "qoe_collector_cdn_log_requests_accepted_total";
pub const CDN_LOG_LINES_REJECTED: &str = "qoe_collector_cdn_log_lines_rejected_total";
pub const RATE_LIMITED: &str = "qoe_collector_rate_limited_total";
pub const PUBLISH_FAILURES: &str = "qoe_collector_publish_failures_total";
pub const KAFKA_IN_FLIGHT: &str = "qoe_collector_kafka_in_flight";
pub const KAFKA_DELIVERY_SECONDS: &str = "qoe_collector_kafka_delivery_seconds";
pub const PRODUCER_RESTARTS: &str = "qoe_collector_producer_restarts_total";
pub const RATE_LIMITER_BUCKETS: &str = "qoe_collector_rate_limiter_buckets";
pub const CONNECTIONS_REFUSED: &str = "qoe_collector_connections_refused_total";
pub const OVERLOADED: &str = "qoe_collector_overloaded_total";
pub const IN_FLIGHT_BYTES: &str = "qoe_collector_in_flight_body_bytes";

/// Registers the help text of every metric (call once the recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP responses by path and status");
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Request latency by path, Kafka acknowledgement included"
    );
    describe_counter!(EVENTS_ACCEPTED, "Events acknowledged by Kafka");
    describe_counter!(EVENTS_REJECTED, "Events refused by validation, by reason");
    describe_counter!(
        CMCD_REPORTS_ACCEPTED,
        "CMCD reports (lines of POST /v1/cmcd) acknowledged by Kafka"
    );
    describe_counter!(
        CMCD_LINES_REJECTED,
        "CMCD lines skipped, by reason (syntax, version, missing_key, sid, too_long, unsafe_chars, future, too_old, encoding, too_many_lines)"
    );
    describe_counter!(
        CDN_LOG_REQUESTS_ACCEPTED,
        "Requests (lines of POST /v1/cdn-logs) acknowledged by Kafka"
    );
    describe_counter!(
        CDN_LOG_LINES_REJECTED,
        "CDN log lines skipped, by reason (json, field_count, missing_field, too_long, unsafe_chars, encoding, too_many_lines)"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by scope");
    describe_counter!(
        PUBLISH_FAILURES,
        "Requests answered 503 because Kafka did not take or acknowledge them, by kind"
    );
    describe_gauge!(
        KAFKA_IN_FLIGHT,
        "Messages enqueued and not yet acknowledged"
    );
    describe_histogram!(
        KAFKA_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from enqueueing a request's events to their last delivery report"
    );
    describe_counter!(
        PRODUCER_RESTARTS,
        "Kafka producers replaced after a fatal error or lasting delivery failures"
    );
    describe_gauge!(RATE_LIMITER_BUCKETS, "Keys held by the rate limiters");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections answered 503 and closed because the connection cap was reached"
    );
    describe_counter!(
        OVERLOADED,
        "Requests answered 503 because the in-flight request or body-byte budget was used up, by kind"
    );
    describe_gauge!(
        IN_FLIGHT_BYTES,
        Unit::Bytes,
        "Bytes of request bodies held by requests waiting for Kafka"
    );
}
