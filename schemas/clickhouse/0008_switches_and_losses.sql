-- CDN switches and lost reports (catalogue entries cdn_switches, events_lost, reports_lost,
-- schemas/src/metrics.rs): per window and slice, the mid-view CDN switches CMCD players'
-- reports show (in the new CDN's slice), and the beacon events and CMCD reports that never
-- arrived (gaps in `seq` and `sn`, counted when the view or session is forgotten). Adds the
-- columns wherever window metrics travel and re-creates the window materialized views with
-- them, like 0005_request_metrics.sql (apply with the aggregators stopped; every statement can
-- be re-run).

ALTER TABLE qoe_staging ADD COLUMN cdn_switches UInt64 AFTER ttfb_le_inf;
ALTER TABLE qoe_staging ADD COLUMN events_lost UInt64 AFTER cdn_switches;
ALTER TABLE qoe_staging ADD COLUMN reports_lost UInt64 AFTER events_lost;
ALTER TABLE qoe_ingest ADD COLUMN cdn_switches UInt64 AFTER ttfb_le_inf;
ALTER TABLE qoe_ingest ADD COLUMN events_lost UInt64 AFTER cdn_switches;
ALTER TABLE qoe_ingest ADD COLUMN reports_lost UInt64 AFTER events_lost;
ALTER TABLE qoe_window_10s ADD COLUMN cdn_switches UInt64;
ALTER TABLE qoe_window_10s ADD COLUMN events_lost UInt64;
ALTER TABLE qoe_window_10s ADD COLUMN reports_lost UInt64;
ALTER TABLE qoe_window_1m ADD COLUMN cdn_switches UInt64;
ALTER TABLE qoe_window_1m ADD COLUMN events_lost UInt64;
ALTER TABLE qoe_window_1m ADD COLUMN reports_lost UInt64;
ALTER TABLE qoe_window_1h ADD COLUMN cdn_switches UInt64;
ALTER TABLE qoe_window_1h ADD COLUMN events_lost UInt64;
ALTER TABLE qoe_window_1h ADD COLUMN reports_lost UInt64;

DROP TABLE IF EXISTS qoe_window_10s_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_window_10s_mv TO qoe_window_10s AS
SELECT
    window_start, region, cdn, stream_type, platform, stream_id,
    events, attempts, plays, startup_ms_sum, startup_le_250, startup_le_500,
    startup_le_1000, startup_le_2000, startup_le_3000, startup_le_5000, startup_le_8000, startup_le_15000,
    startup_le_inf, vsf, vpf, ebvs, errors, playing_ms,
    stall_ms, stalls, bitrate_kbps_ms, upswitches, downswitches, latency_ms_sum,
    latency_samples, dropped_frames, late_events, duplicate_events, seeks, startup_unknown,
    cdn_requests, cdn_request_errors, ttfb_ms_sum, ttfb_le_50, ttfb_le_100, ttfb_le_200,
    ttfb_le_400, ttfb_le_800, ttfb_le_1600, ttfb_le_3200, ttfb_le_inf, cdn_switches, events_lost, reports_lost
FROM qoe_ingest
WHERE kind = 'window';

DROP TABLE IF EXISTS qoe_window_1m_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_window_1m_mv TO qoe_window_1m AS
SELECT
    toDateTime(intDiv(toUInt32(window_start), 60) * 60, 'UTC') AS window_start,
    region, cdn, stream_type, platform, stream_id,
    sum(events) AS events,
    sum(attempts) AS attempts,
    sum(plays) AS plays,
    sum(startup_ms_sum) AS startup_ms_sum,
    sum(startup_le_250) AS startup_le_250,
    sum(startup_le_500) AS startup_le_500,
    sum(startup_le_1000) AS startup_le_1000,
    sum(startup_le_2000) AS startup_le_2000,
    sum(startup_le_3000) AS startup_le_3000,
    sum(startup_le_5000) AS startup_le_5000,
    sum(startup_le_8000) AS startup_le_8000,
    sum(startup_le_15000) AS startup_le_15000,
    sum(startup_le_inf) AS startup_le_inf,
    sum(vsf) AS vsf,
    sum(vpf) AS vpf,
    sum(ebvs) AS ebvs,
    sum(errors) AS errors,
    sum(playing_ms) AS playing_ms,
    sum(stall_ms) AS stall_ms,
    sum(stalls) AS stalls,
    sum(bitrate_kbps_ms) AS bitrate_kbps_ms,
    sum(upswitches) AS upswitches,
    sum(downswitches) AS downswitches,
    sum(latency_ms_sum) AS latency_ms_sum,
    sum(latency_samples) AS latency_samples,
    sum(dropped_frames) AS dropped_frames,
    sum(late_events) AS late_events,
    sum(duplicate_events) AS duplicate_events,
    sum(seeks) AS seeks,
    sum(startup_unknown) AS startup_unknown,
    sum(cdn_requests) AS cdn_requests,
    sum(cdn_request_errors) AS cdn_request_errors,
    sum(ttfb_ms_sum) AS ttfb_ms_sum,
    sum(ttfb_le_50) AS ttfb_le_50,
    sum(ttfb_le_100) AS ttfb_le_100,
    sum(ttfb_le_200) AS ttfb_le_200,
    sum(ttfb_le_400) AS ttfb_le_400,
    sum(ttfb_le_800) AS ttfb_le_800,
    sum(ttfb_le_1600) AS ttfb_le_1600,
    sum(ttfb_le_3200) AS ttfb_le_3200,
    sum(ttfb_le_inf) AS ttfb_le_inf,
    sum(cdn_switches) AS cdn_switches,
    sum(events_lost) AS events_lost,
    sum(reports_lost) AS reports_lost
FROM qoe_ingest
WHERE kind = 'window'
GROUP BY window_start, region, cdn, stream_type, platform, stream_id;

DROP TABLE IF EXISTS qoe_window_1h_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_window_1h_mv TO qoe_window_1h AS
SELECT
    toDateTime(intDiv(toUInt32(window_start), 3600) * 3600, 'UTC') AS window_start,
    region, cdn, stream_type, platform, stream_id,
    sum(events) AS events,
    sum(attempts) AS attempts,
    sum(plays) AS plays,
    sum(startup_ms_sum) AS startup_ms_sum,
    sum(startup_le_250) AS startup_le_250,
    sum(startup_le_500) AS startup_le_500,
    sum(startup_le_1000) AS startup_le_1000,
    sum(startup_le_2000) AS startup_le_2000,
    sum(startup_le_3000) AS startup_le_3000,
    sum(startup_le_5000) AS startup_le_5000,
    sum(startup_le_8000) AS startup_le_8000,
    sum(startup_le_15000) AS startup_le_15000,
    sum(startup_le_inf) AS startup_le_inf,
    sum(vsf) AS vsf,
    sum(vpf) AS vpf,
    sum(ebvs) AS ebvs,
    sum(errors) AS errors,
    sum(playing_ms) AS playing_ms,
    sum(stall_ms) AS stall_ms,
    sum(stalls) AS stalls,
    sum(bitrate_kbps_ms) AS bitrate_kbps_ms,
    sum(upswitches) AS upswitches,
    sum(downswitches) AS downswitches,
    sum(latency_ms_sum) AS latency_ms_sum,
    sum(latency_samples) AS latency_samples,
    sum(dropped_frames) AS dropped_frames,
    sum(late_events) AS late_events,
    sum(duplicate_events) AS duplicate_events,
    sum(seeks) AS seeks,
    sum(startup_unknown) AS startup_unknown,
    sum(cdn_requests) AS cdn_requests,
    sum(cdn_request_errors) AS cdn_request_errors,
    sum(ttfb_ms_sum) AS ttfb_ms_sum,
    sum(ttfb_le_50) AS ttfb_le_50,
    sum(ttfb_le_100) AS ttfb_le_100,
    sum(ttfb_le_200) AS ttfb_le_200,
    sum(ttfb_le_400) AS ttfb_le_400,
    sum(ttfb_le_800) AS ttfb_le_800,
    sum(ttfb_le_1600) AS ttfb_le_1600,
    sum(ttfb_le_3200) AS ttfb_le_3200,
    sum(ttfb_le_inf) AS ttfb_le_inf,
    sum(cdn_switches) AS cdn_switches,
    sum(events_lost) AS events_lost,
    sum(reports_lost) AS reports_lost
FROM qoe_ingest
WHERE kind = 'window'
GROUP BY window_start, region, cdn, stream_type, platform, stream_id;
