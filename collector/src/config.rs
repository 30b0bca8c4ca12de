//! Command-line flags (each with an environment-variable equivalent) and their defaults.

use crate::sink::{AckMode, Compression, MessageFormat, SinkKind};
use clap::Parser;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;

/// HTTP collector for video players' QoE reports: beacons (`POST /v1/beacons`) and CMCD v2
/// reports (`POST /v1/cmcd`). Validates and rate-limits them and publishes them to Kafka: one
/// message per accepted beacon (key: view_id; `--kafka-message-format event` writes one per
/// event) and one per CMCD report (key: sid).
#[derive(Parser, Debug, Clone)]
#[command(name = "collector", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "QOE_COLLECTOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener: /healthz, /readyz, /metrics. Keep it private (loopback or
    /// an internal network); the public listener serves only /v1/beacons, /v1/cmcd and
    /// /healthz.
    #[arg(long, env = "QOE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,

    /// Where accepted events go: Kafka, or nowhere (`null`, for benchmarking the HTTP path).
    #[arg(long, env = "QOE_SINK", value_enum, default_value = "kafka")]
    pub sink: SinkKind,
    /// Kafka bootstrap servers.
    #[arg(long, env = "QOE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic to publish events to.
    #[arg(long, env = "QOE_TOPIC", default_value = "qoe.events")]
    pub topic: String,
    /// When to answer 2xx: after Kafka acknowledged every accepted event (`ack`), or as soon as
    /// they are queued in the producer (`fire-and-forget`: faster, may lose events on failure).
    #[arg(long, env = "QOE_ACK_MODE", value_enum, default_value = "ack")]
    pub ack_mode: AckMode,
    /// Kafka message format: one message per accepted beacon, its valid events with the view's
    /// context once (`beacon`, format version 2), or one message per event with the context
    /// copied into each (`event`, version 1). Same key (the view id), order and
    /// acknowledgement rule; the aggregator reads both.
    #[arg(
        long,
        env = "QOE_KAFKA_MESSAGE_FORMAT",
        value_enum,
        default_value = "beacon"
    )]
    pub kafka_message_format: MessageFormat,
    /// Producer compression.
    #[arg(long, env = "QOE_KAFKA_COMPRESSION", value_enum, default_value = "lz4")]
    pub kafka_compression: Compression,
    /// Producer linger (ms): how long to wait to fill a batch.
    #[arg(long, env = "QOE_KAFKA_LINGER_MS", default_value_t = 5)]
    pub kafka_linger_ms: u32,
    /// Producer maximum batch size in bytes.
    #[arg(long, env = "QOE_KAFKA_BATCH_BYTES", default_value_t = 1_000_000)]
    pub kafka_batch_bytes: u32,
    /// Producer queue bound in messages; a full queue answers 503.
    #[arg(long, env = "QOE_KAFKA_QUEUE_MESSAGES", default_value_t = 200_000)]
    pub kafka_queue_messages: u32,
    /// Producer queue bound in KiB; a full queue answers 503.
    #[arg(long, env = "QOE_KAFKA_QUEUE_KBYTES", default_value_t = 65_536)]
    pub kafka_queue_kbytes: u32,
    /// How long a message may wait for a Kafka acknowledgement before the request gets 503.
    #[arg(long, env = "QOE_KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = 5_000)]
    pub kafka_delivery_timeout_ms: u64,

    /// Extra librdkafka producer properties, `key=value` (repeatable, or `;`-separated in the
    /// environment; e.g. security.protocol=SSL,
    /// or debug=broker,msg when diagnosing delivery problems).
    /// (The environment variable's value is never printed: it can hold credentials.)
    #[arg(long = "kafka-option", env = "QOE_KAFKA_OPTIONS", value_delimiter = ';', value_parser = qoe_telemetry::process::parse_key_value, hide_env_values = true)]
    pub kafka_options: Vec<(String, String)>,

    /// Largest accepted request body, as sent (compressed or not).
    #[arg(long, env = "QOE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest accepted body after decompression; checked while decompressing.
    #[arg(long, env = "QOE_MAX_DECOMPRESSED_BYTES", default_value_t = 8 << 20)]
    pub max_decompressed_bytes: usize,
    /// Most events in one beacon.
    #[arg(long, env = "QOE_MAX_EVENTS", default_value_t = 1000)]
    pub max_events: usize,
    /// Events older than this (after clock-skew correction) are rejected.
    #[arg(long, env = "QOE_MAX_EVENT_AGE_SECS", default_value_t = 3600)]
    pub max_event_age_secs: u64,
    /// Time allowed to receive a request's headers; a client that has not sent them all by
    /// then is disconnected.
    #[arg(long, env = "QOE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Time allowed to receive a whole request, body included (slow clients get 408).
    #[arg(long, env = "QOE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Open connections on the public listener at most; more get 503 and are closed at once.
    #[arg(long, env = "QOE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Beacon requests handled at once at most (reading, validating, waiting for Kafka); more
    /// get 503 with Retry-After.
    #[arg(long, env = "QOE_MAX_IN_FLIGHT_REQUESTS", default_value_t = 2048)]
    pub max_in_flight_requests: usize,
    /// Bytes of (decompressed) request bodies held at once by requests waiting for Kafka; a
    /// request that would exceed it gets 503 with Retry-After.
    #[arg(long, env = "QOE_MAX_IN_FLIGHT_BYTES", default_value_t = 256 << 20)]
    pub max_in_flight_bytes: usize,

    /// Requests per second per client address (0: no limit).
    #[arg(long, env = "QOE_RATE_PER_IP", default_value_t = 100)]
    pub rate_per_ip: u32,
    /// Events per second per client address (a request of n events counts n; 0: no limit).
    /// Keeps one address from taking the collector's whole Kafka capacity with big requests.
    #[arg(long, env = "QOE_RATE_EVENTS_PER_IP", default_value_t = 2_000)]
    pub rate_events_per_ip: u32,
    /// IPv6 clients are rate-limited by their network of this many bits (a subscriber usually
    /// gets a /64 and can rotate addresses inside it).
    #[arg(long, env = "QOE_IPV6_PREFIX_LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_prefix_len: u8,
    /// Requests per second per view_id (0: no limit).
    #[arg(long, env = "QOE_RATE_PER_VIEW", default_value_t = 10)]
    pub rate_per_view: u32,
    /// Requests per second for the whole process (0: no limit).
    #[arg(long, env = "QOE_RATE_GLOBAL", default_value_t = 20_000)]
    pub rate_global: u32,
    /// Burst allowance, as a multiple of the per-second rates.
    #[arg(long, env = "QOE_RATE_BURST_FACTOR", default_value_t = 3)]
    pub rate_burst_factor: u32,
    /// Bound on rate-limiter state: keys are hashed into this many buckets.
    #[arg(long, env = "QOE_RATE_LIMIT_BUCKETS", default_value_t = 1 << 18)]
    pub rate_limit_buckets: u64,

    /// Proxies whose X-Forwarded-For is trusted (comma-separated CIDRs).
    #[arg(long, env = "QOE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Request header set by a trusted edge with the client's region (e.g. X-Edge-Region).
    #[arg(long, env = "QOE_REGION_HEADER")]
    pub region_header: Option<String>,
    /// MaxMind/DB-IP country database (.mmdb) to resolve regions from client addresses.
    #[arg(long, env = "QOE_GEOIP_DB")]
    pub geoip_db: Option<PathBuf>,
    /// Maps a GeoIP country (ISO code) to a region, `COUNTRY=REGION` (repeatable, or
    /// comma-separated in the environment; e.g. `jp=ap-northeast`). Unmapped countries are
    /// reported as their lower-case ISO code.
    #[arg(long = "geoip-region", env = "QOE_GEOIP_REGIONS", value_delimiter = ',', value_parser = qoe_telemetry::process::parse_key_value)]
    pub geoip_regions: Vec<(String, String)>,

    /// Maps the host of CMCD request URLs to a CDN, `HOST_SUFFIX=CDN` (repeatable, or
    /// comma-separated in the environment; e.g. `cdn-a.example.net=cdn-a`). The longest matching
    /// suffix wins. Used when a report has no `cdn` key; unmapped hosts leave the CDN to the
    /// target URL's `cdn` parameter, else the session's last known one, else `unknown`.
    #[arg(long = "cdn-host", env = "QOE_CDN_HOSTS", value_delimiter = ',')]
    pub cdn_hosts: Vec<String>,
    /// Most lines one `POST /v1/cdn-logs` body may hold (a larger body gets 413 and nothing
    /// of it is taken: configure the log shipper's batches below this).
    #[arg(long, env = "QOE_MAX_LOG_LINES", default_value_t = 10_000)]
    pub max_log_lines: usize,

    /// Origins allowed to post beacons from browsers (comma-separated; `*` for any).
    #[arg(
        long,
        env = "QOE_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_origins: Vec<String>,
    /// Ingest keys (comma-separated). When set, beacons need one, in the X-QoE-Key header or
    /// the `key` query parameter, or get 401.
    #[arg(
        long,
        env = "QOE_INGEST_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub ingest_keys: Vec<String>,

    /// On SIGTERM/SIGINT: how long to finish in-flight requests and flush the producer.
    #[arg(long, env = "QOE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Log format.
    #[arg(long, env = "QOE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: qoe_telemetry::LogFormat,
}

impl Config {
    /// The Kafka sink's settings.
    pub fn sink_config(&self) -> crate::sink::SinkConfig {
        crate::sink::SinkConfig {
            kind: self.sink,
            brokers: self.kafka_brokers.clone(),
            topic: self.topic.clone(),
            ack_mode: self.ack_mode,
            message_format: self.kafka_message_format,
            compression: self.kafka_compression,
            linger_ms: self.kafka_linger_ms,
            batch_bytes: self.kafka_batch_bytes,
            queue_messages: self.kafka_queue_messages,
            queue_kbytes: self.kafka_queue_kbytes,
            delivery_timeout: std::time::Duration::from_millis(self.kafka_delivery_timeout_ms),
            kafka_options: self.kafka_options.clone(),
        }
    }

    /// The rate limits.
    pub fn rate_config(&self) -> crate::rate_limit::RateConfig {
        crate::rate_limit::RateConfig {
            per_ip: self.rate_per_ip,
            events_per_ip: self.rate_events_per_ip,
            per_view: self.rate_per_view,
            global: self.rate_global,
            burst_factor: self.rate_burst_factor,
            buckets: self.rate_limit_buckets,
            ipv6_prefix_len: self.ipv6_prefix_len,
        }
    }

    /// The HTTP layer's settings.
    pub fn http_config(&self) -> crate::http::HttpConfig {
        crate::http::HttpConfig {
            cors_origins: self.cors_origins.clone(),
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
        }
    }

    pub fn limits(&self) -> qoe_schemas::Limits {
        qoe_schemas::Limits {
            max_events: self.max_events,
            max_age_ms: (self.max_event_age_secs * 1000) as i64,
            ..qoe_schemas::Limits::default()
        }
    }
}
