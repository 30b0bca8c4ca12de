-- The alternative to the pipeline that teams build first, for
-- `scripts/bench-aggregator.sh raw-clickhouse`: every QoE event stored as a row, with
-- materialized views computing the 10 s windows at insert time. Not part of the product.
--
-- The views compute the per-event metrics of qoe_window_10s (each a function of one event)
-- and the distinct views per window. They cannot compute what needs a view's history:
-- start failures (vsf, vpf), exits before video start (ebvs), the per-view table, and
-- duplicate or late events (a retried beacon is counted twice here).

CREATE TABLE raw_events
(
    view_id String,
    stream_id String,
    stream_type String,
    cdn String,
    platform String,
    player String,
    protocol String,
    region String,
    seq UInt32,
    type String,
    ts Int64,
    event_time Int64,
    received_at Int64,
    playing_ms UInt32,
    stall_ms UInt32,
    bitrate_kbps UInt32,
    prev_bitrate_kbps UInt32,
    startup_ms UInt32,
    latency_ms UInt32,
    dropped_frames UInt32,
    code String,
    reason String,
    -- Stored for the view below: there `playing_ms` names the sum, so the product cannot be
    -- written in the view itself (an aggregate inside an aggregate).
    kbps_ms UInt64 MATERIALIZED toUInt64(bitrate_kbps) * playing_ms
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_time, 1000), 'UTC'))
ORDER BY (region, cdn, stream_type, platform, stream_id, event_time);

CREATE TABLE raw_window_10s
(
    window_start DateTime('UTC'),
    region String,
    cdn String,
    stream_type String,
    platform String,
    stream_id String,
    events UInt64,
    attempts UInt64,
    plays UInt64,
    startup_ms_sum UInt64,
    startup_le_250 UInt64,
    startup_le_500 UInt64,
    startup_le_1000 UInt64,
    startup_le_2000 UInt64,
    startup_le_3000 UInt64,
    startup_le_5000 UInt64,
    startup_le_8000 UInt64,
    startup_le_15000 UInt64,
    startup_le_inf UInt64,
    errors UInt64,
    playing_ms UInt64,
    stall_ms UInt64,
    stalls UInt64,
    bitrate_kbps_ms UInt64,
    upswitches UInt64,
    downswitches UInt64,
    latency_ms_sum UInt64,
    latency_samples UInt64,
    dropped_frames UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (window_start, region, cdn, stream_type, platform, stream_id);

CREATE MATERIALIZED VIEW raw_window_10s_mv TO raw_window_10s AS
SELECT
    toDateTime(intDiv(event_time, 10000) * 10, 'UTC') AS window_start,
    region, cdn, stream_type, platform, stream_id,
    count() AS events,
    countIf(type = 'view_start') AS attempts,
    countIf(type = 'first_frame') AS plays,
    sumIf(startup_ms, type = 'first_frame') AS startup_ms_sum,
    countIf(type = 'first_frame' AND startup_ms <= 250) AS startup_le_250,
    countIf(type = 'first_frame' AND startup_ms > 250 AND startup_ms <= 500) AS startup_le_500,
    countIf(type = 'first_frame' AND startup_ms > 500 AND startup_ms <= 1000) AS startup_le_1000,
    countIf(type = 'first_frame' AND startup_ms > 1000 AND startup_ms <= 2000) AS startup_le_2000,
    countIf(type = 'first_frame' AND startup_ms > 2000 AND startup_ms <= 3000) AS startup_le_3000,
    countIf(type = 'first_frame' AND startup_ms > 3000 AND startup_ms <= 5000) AS startup_le_5000,
    countIf(type = 'first_frame' AND startup_ms > 5000 AND startup_ms <= 8000) AS startup_le_8000,
    countIf(type = 'first_frame' AND startup_ms > 8000 AND startup_ms <= 15000) AS startup_le_15000,
    countIf(type = 'first_frame' AND startup_ms > 15000) AS startup_le_inf,
    countIf(type = 'error') AS errors,
    sum(playing_ms) AS playing_ms,
    sum(stall_ms) AS stall_ms,
    countIf(type = 'stall_start') AS stalls,
    sum(kbps_ms) AS bitrate_kbps_ms,
    countIf(type = 'bitrate_change' AND prev_bitrate_kbps > 0 AND bitrate_kbps > prev_bitrate_kbps) AS upswitches,
    countIf(type = 'bitrate_change' AND bitrate_kbps < prev_bitrate_kbps) AS downswitches,
    sum(latency_ms) AS latency_ms_sum,
    countIf(latency_ms > 0) AS latency_samples,
    sum(dropped_frames) AS dropped_frames

FROM raw_events
GROUP BY window_start, region, cdn, stream_type, platform, stream_id;

CREATE TABLE raw_active_views_10s
(
    window_start DateTime('UTC'),
    region String,
    cdn String,
    stream_type String,
    platform String,
    stream_id String,
    views AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (window_start, region, cdn, stream_type, platform, stream_id);

CREATE MATERIALIZED VIEW raw_active_views_10s_mv TO raw_active_views_10s AS
SELECT
    toDateTime(intDiv(event_time, 10000) * 10, 'UTC') AS window_start,
    region, cdn, stream_type, platform, stream_id,
    uniqExactState(view_id) AS views
FROM raw_events
GROUP BY window_start, region, cdn, stream_type, platform, stream_id;
