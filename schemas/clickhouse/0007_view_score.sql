-- Generated from schemas/src/score.rs (the experience score); do not edit. Regenerate with:
--   QOE_BLESS=1 cargo test -p qoe-schemas --lib score
-- qoe_views gains each view's experience score and its parts (README.md, "Experience score"),
-- computed from the view's totals with the same formula as a slice's, top rendition 8000 kbps.
-- A plain view: re-creating it moves no data.

DROP TABLE IF EXISTS qoe_views;
CREATE VIEW IF NOT EXISTS qoe_views AS
SELECT *,
    round(((if(1 = 0, NULL, least(100, greatest(0, 100 * (1 - (end_reason = 'error') - (started = 0 AND end_reason != 'error')) / 1 + 50 * (started = 0 AND end_reason != 'error') / 1)))) AS _score_success), 1) AS score_success,
    round(((if((started = 1 AND startup_ms > 0) = 0, NULL, 100 * 8.0 / (8.0 + if(started = 1 AND startup_ms > 0, startup_ms, 0) / (started = 1 AND startup_ms > 0) / 1000))) AS _score_startup), 1) AS score_startup,
    round(((if(playing_ms + stall_ms = 0, NULL, 100 / (1 + 20.0 * stall_ms / (playing_ms + stall_ms) + stalls / greatest((playing_ms + stall_ms) / 3600000, 0.16666666666666666) / 30.0))) AS _score_smoothness), 1) AS score_smoothness,
    round(((if(playing_ms = 0 OR bitrate_kbps_ms = 0, NULL, least(100, greatest(0, 100 * log2(bitrate_kbps_ms / playing_ms / 300.0) / log2(8000.0 / 300.0))))) AS _score_quality), 1) AS score_quality,
    round(if(isNull(((if(1 = 0, NULL, least(100, greatest(0, 100 * (1 - (end_reason = 'error') - (started = 0 AND end_reason != 'error')) / 1 + 50 * (started = 0 AND end_reason != 'error') / 1)))) AS _score_success)), ((if(((0.25 * isNotNull(((if((started = 1 AND startup_ms > 0) = 0, NULL, 100 * 8.0 / (8.0 + if(started = 1 AND startup_ms > 0, startup_ms, 0) / (started = 1 AND startup_ms > 0) / 1000))) AS _score_startup)) + 0.45 * isNotNull(((if(playing_ms + stall_ms = 0, NULL, 100 / (1 + 20.0 * stall_ms / (playing_ms + stall_ms) + stalls / greatest((playing_ms + stall_ms) / 3600000, 0.16666666666666666) / 30.0))) AS _score_smoothness)) + 0.3 * isNotNull(((if(playing_ms = 0 OR bitrate_kbps_ms = 0, NULL, least(100, greatest(0, 100 * log2(bitrate_kbps_ms / playing_ms / 300.0) / log2(8000.0 / 300.0))))) AS _score_quality))) AS _score_weight) = 0, NULL, (0.25 * ifNull(_score_startup, 0) + 0.45 * ifNull(_score_smoothness, 0) + 0.3 * ifNull(_score_quality, 0)) / _score_weight)) AS _score_mean), if(isNull(_score_mean), _score_success, _score_success / 100 * _score_mean)), 1) AS score
FROM
(
    SELECT
        view_id,
        anyLastMerge(region) AS region,
        anyLastMerge(cdn) AS cdn,
        anyLastMerge(stream_type) AS stream_type,
        anyLastMerge(platform) AS platform,
        anyLastMerge(stream_id) AS stream_id,
        anyLastMerge(player) AS player,
        anyLastMerge(protocol) AS protocol,
        minMerge(first_event_time) AS start_time,
        maxMerge(last_event_time) AS last_event_time,
        maxMerge(started) AS started,
        maxMerge(startup_ms) AS startup_ms,
        sumMerge(playing_ms) AS playing_ms,
        sumMerge(stall_ms) AS stall_ms,
        sumMerge(stalls) AS stalls,
        sumMerge(bitrate_kbps_ms) AS bitrate_kbps_ms,
        if(playing_ms = 0, 0, bitrate_kbps_ms / playing_ms) AS avg_bitrate_kbps,
        sumMerge(errors) AS errors,
        argMaxMerge(error_code) AS error_code,
        argMaxMerge(end_reason) AS end_reason
    FROM qoe_view_partials
    GROUP BY view_id
);
