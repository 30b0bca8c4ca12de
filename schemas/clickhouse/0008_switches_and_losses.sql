-- CDN switches and lost reports (catalogue entries cdn_switches, events_lost, reports_lost,
-- schemas/src/metrics.rs): per window and slice, the mid-view CDN switches CMCD players'
-- reports show (in the new CDN's slice), and the beacon events and CMCD reports that never
-- arrived (gaps in `seq` and `sn`, counted when the view or session is forgotten). Adds the
-- columns wherever window metrics travel and re-creates the window materialized views with
-- them, like 0005_request_metrics.sql (apply with the aggregators stopped; every statement can
-- be re-run).

-- The statements, generated from the metric catalogue (schemas/src/window_sql.rs):
-- qoe:generate add-window-columns ttfb_le_inf reports_lost
