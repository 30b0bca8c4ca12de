#!/usr/bin/env python3
"""Generates the Grafana dashboards (JSON) and alert rules (provisioning YAML) of the QoE
pipeline from the definitions below, so that the SQL of every panel and rule is written once,
with the metric formulas of the spec shared between them.

    dashboards/generate.py          write dashboards/json/*.json and
                                    dashboards/provisioning/alerting/qoe-alerts.yaml
    dashboards/generate.py --check  exit 1 if the committed files differ from the output
    dashboards/generate.py --report-sql NAME FROM TO
                                    print the SQL of one table of the demo report (`slices`,
                                    `minutes`, `codes`) over [FROM, TO) (Unix seconds), so the report
                                    uses the same KPI formulas as the dashboards

The metric columns (and the startup histogram's buckets) come from the metric catalogue,
schemas/metrics.json; a KPI that names a column the catalogue does not have fails generation.

Every query is plain SQL for the official ClickHouse plugin (grafana-clickhouse-datasource) and
uses only the macros that expand to SQL valid on ClickHouse 18.16 as well as current versions:
$__timeFilter, $__fromTime, $__toTime and $__interval_s ($__timeInterval expands to
toStartOfInterval, which 18.16 lacks, so buckets are computed with intDiv instead).
"""

import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
CATALOGUE = json.loads((HERE.parent / "schemas" / "metrics.json").read_text())
WINDOW_COLUMNS = CATALOGUE["window_columns"]
DS_UID = "qoe-clickhouse"
DS = {"type": "grafana-clickhouse-datasource", "uid": DS_UID}
EXPR = {"type": "__expr__", "uid": "__expr__"}  # Grafana's server-side expressions

# Template variables: one per dimension; "All" expands to every value of the range.
DIMENSIONS = [
    ("region", "region", "Region"),
    ("cdn", "cdn", "CDN"),
    ("stream_type", "stream_type", "Stream type"),
    ("platform", "platform", "Platform"),
    ("stream", "stream_id", "Stream"),
]
FILTER = " AND ".join(f"{col} IN (${{{var}:singlequote}})" for var, col, _ in DIMENSIONS)
# Errors by code are kept per region, CDN, stream type, platform and player, not per stream.
ERROR_FILTER = " AND ".join(f"{col} IN (${{{var}:singlequote}})"
                            for var, col, _ in DIMENSIONS if col != "stream_id")
OTHER_CODES = "(other codes)"


def top_codes(key, business, top=5, where=None):
    """The `top` error codes per value of `key` (columns, comma-separated) over the range
    (`where`, else the dashboard's time range and selectors), plus one row for all the other
    codes of that value, each with its share of the value's attempts. `business`: business
    errors (counted apart) or the rest. Arrays instead of window functions: the query runs on
    ClickHouse 18.16."""
    where = where or f"$__timeFilter(window_start) AND {ERROR_FILTER}"
    return (
        f"SELECT {key}, if(code.1 = '', '(no code)', code.1) AS error_code,\n"
        f"  code.2 AS errors, code.3 AS fatal,\n"
        f"  round(100 * code.2 / greatest(attempts_, 1), 3) AS pct_of_attempts\n"
        f"FROM (\n"
        f"  SELECT {key}, arrayConcat(arraySlice(codes, 1, {top}), [('{OTHER_CODES}',\n"
        f"      arraySum(c -> c.2, arraySlice(codes, {top + 1})),\n"
        f"      arraySum(c -> c.3, arraySlice(codes, {top + 1})))]) AS top\n"
        f"  FROM (\n"
        f"    SELECT {key},\n"
        f"      arraySort(c -> (-toInt64(c.2), c.1), groupArray((error_code, errors_, fatal_))) AS codes\n"
        f"    FROM (\n"
        f"      SELECT {key}, error_code, sum(errors) AS errors_, sum(errors * fatal) AS fatal_\n"
        f"      FROM qoe_error_codes_1m\n"
        f"      WHERE {where} AND business = {int(business)}\n"
        f"      GROUP BY {key}, error_code\n"
        f"    )\n"
        f"    GROUP BY {key}\n"
        f"  )\n"
        f") ARRAY JOIN top AS code\n"
        f"ANY LEFT JOIN (\n"
        f"  SELECT {key}, sum(attempts) AS attempts_\n"
        f"  FROM qoe_error_codes_1m\n"
        f"  WHERE {where}\n"
        f"  GROUP BY {key}\n"
        f") AS slice_attempts USING ({key})\n"
        f"WHERE code.2 > 0\n"
        f"ORDER BY {key}, code.1 = '{OTHER_CODES}', errors DESC, error_code"
    )


def _histogram_of(name):
    """A catalogue histogram's columns and, for interpolating percentiles, each bucket's lower
    and upper bound as SQL arrays (the open last bucket is reported at its lower bound, the last
    finite bound)."""
    [m] = [m for m in CATALOGUE["metrics"] if m["name"] == name]
    bounds = [b["le"] for b in m["buckets"] if b["le"] is not None]
    lo = "[" + ", ".join(str(b) for b in [0] + bounds) + "]"
    hi = "[" + ", ".join(str(b) for b in bounds + [bounds[-1]]) + "]"
    return [b["column"] for b in m["buckets"]], lo, hi


STARTUP_COLUMNS, STARTUP_LO, STARTUP_HI = _histogram_of("startup_hist")
TTFB_COLUMNS, TTFB_LO, TTFB_HI = _histogram_of("ttfb_hist")


def column(name):
    """A window column, checked against the catalogue."""
    if name not in WINDOW_COLUMNS:
        raise SystemExit(f"dashboards/generate.py: {name!r} is not a column of the metric catalogue")
    return name


def bucket(seconds_floor):
    """Time bucket of at least the table's grain, following the panel's interval."""
    b = f"greatest($__interval_s, {seconds_floor})"
    return f"toDateTime(intDiv(toUInt32(window_start), {b}) * {b})", b


def histogram(cond=None, columns=None):
    agg = (lambda c: f"sum({column(c)})") if cond is None else (lambda c: f"sumIf({column(c)}, {cond})")
    return "[" + ", ".join(agg(c) for c in (columns or STARTUP_COLUMNS)) + "]"


def percentile(q, h, c, n, lo=None, hi=None):
    """Percentile from a histogram h (array), its running sum c and total n, linearly
    interpolated inside the bucket holding it; NULL without samples. Startup buckets unless
    other bounds are given."""
    lo, hi = lo or STARTUP_LO, hi or STARTUP_HI
    i = f"arrayFirstIndex(x -> x >= {q} * {n}, {c})"
    return (
        f"if({n} = 0, NULL, round({lo}[{i}] + ({hi}[{i}] - {lo}[{i}]) "
        f"* ({q} * {n} - ({c}[{i}] - {h}[{i}])) / greatest({h}[{i}], 1)))"
    )


# All sums a KPI needs (alias: catalogue column), as an inner SELECT list; outer queries
# compute the ratios.
SUM_ALIASES = {
    "attempts_": "attempts", "plays_": "plays", "vsf_": "vsf", "vpf_": "vpf", "ebvs_": "ebvs",
    "errors_": "errors", "playing_": "playing_ms", "stall_": "stall_ms", "stalls_": "stalls",
    "kbps_ms_": "bitrate_kbps_ms", "latency_sum_": "latency_ms_sum",
    "latency_n_": "latency_samples", "seeks_": "seeks", "startup_unknown_": "startup_unknown",
    "requests_": "cdn_requests", "request_errors_": "cdn_request_errors", "ttfb_sum_": "ttfb_ms_sum",
    "startup_sum_": "startup_ms_sum", "cdn_switches_": "cdn_switches",
}
_sums = [f"sum({column(c)}) AS {a}" for a, c in SUM_ALIASES.items()]
SUMS = ("\n    ".join(", ".join(_sums[i:i + 4]) + "," for i in range(0, len(_sums), 4))
        + "\n    " + histogram() + " AS h, arrayCumSum(h) AS c, arraySum(h) AS startups_,"
        + "\n    " + histogram(columns=TTFB_COLUMNS) + " AS th, arrayCumSum(th) AS tc, arraySum(th) AS ttfbs_")

KPIS = {
    "attempts": "attempts_",
    "plays": "plays_",
    "viewer_hours": "round((playing_ + stall_) / 3600000, 1)",
    "start_failure_pct": "if(attempts_ = 0, NULL, round(100 * vsf_ / attempts_, 2))",
    "ebvs_pct": "if(attempts_ = 0, NULL, round(100 * ebvs_ / attempts_, 2))",
    "playback_failure_pct": "if(plays_ = 0, NULL, round(100 * vpf_ / plays_, 2))",
    "rebuffering_pct": "if(playing_ + stall_ = 0, NULL, round(100 * stall_ / (playing_ + stall_), 3))",
    "stalls_per_hour": "if(playing_ = 0, NULL, round(stalls_ / (playing_ / 3600000), 2))",
    "seeks_per_hour": "if(playing_ = 0, NULL, round(seeks_ / (playing_ / 3600000), 2))",
    # Over the plays whose startup is known (the histogram's total), not all plays.
    "startup_p50_ms": percentile(0.5, "h", "c", "startups_"),
    "startup_p95_ms": percentile(0.95, "h", "c", "startups_"),
    "avg_bitrate_kbps": "if(playing_ = 0, NULL, round(kbps_ms_ / playing_))",
    "live_latency_ms": "if(latency_n_ = 0, NULL, round(latency_sum_ / latency_n_))",
    # From players' CMCD request reports: which CDN fails or is slow, before viewers rebuffer.
    "cdn_requests": "requests_",
    "request_error_pct": "if(requests_ = 0, NULL, round(100 * request_errors_ / requests_, 2))",
    "ttfb_p95_ms": percentile(0.95, "th", "tc", "ttfbs_", TTFB_LO, TTFB_HI),
    # Mid-view CDN switches of CMCD players, counted in the CDN switched to.
    "cdn_switches": "cdn_switches_",
}

# The experience score and its parts (schemas/src/score.rs, README "Experience score"), from the
# catalogue's SQL over the sums above: the same formula as each view's score in qoe_views.
SCORE_TOTALS = {
    "attempts": "attempts_", "ebvs": "ebvs_", "failures": "(vsf_ + vpf_)", "startups": "startups_",
    "startup_ms_sum": "startup_sum_", "playing_ms": "playing_", "stall_ms": "stall_",
    "stalls": "stalls_", "bitrate_kbps_ms": "kbps_ms_",
    "top_kbps": repr(float(CATALOGUE["score"]["default_top_kbps"])),
}
for _s in CATALOGUE["score"]["sql"]:
    KPIS[_s["name"]] = _s["sql"].format(**SCORE_TOTALS)

UNITS = {
    "start_failure_pct": "percent", "ebvs_pct": "percent", "playback_failure_pct": "percent",
    "rebuffering_pct": "percent", "startup_p50_ms": "ms", "startup_p95_ms": "ms",
    "startup_p95_ms_": "ms", "avg_bitrate_kbps": "Kbits", "live_latency_ms": "ms",
    # Hours of viewing as a count: unit "h" would print 133.9 viewer-hours as "5.58 day".
    "viewer_hours": "short", "freshness_s": "s", "seconds_since_write": "s",
    "request_error_pct": "percent", "ttfb_p95_ms": "ms", "pct_of_attempts": "percent",
    "score": "none", "score_success": "none", "score_startup": "none", "score_smoothness": "none",
    "score_quality": "none",
}


def kpi_series(names, custom=(), table="qoe_window_1m", grain=60):
    """A time series of KPIs per bucket; `custom` adds (name, expression) pairs."""
    t, _ = bucket(grain)
    cols = ", ".join([f"{KPIS[n]} AS {n}" for n in names] + [f"{e} AS {n}" for n, e in custom])
    return (
        f"SELECT time, {cols}\nFROM (\n  SELECT {t} AS time, {SUMS}\n  FROM {table}\n"
        f"  WHERE $__timeFilter(window_start) AND {FILTER}\n  GROUP BY time\n)\nORDER BY time"
    )


def kpi_table(keys, names, order, where_outer="1", limit=50,
              where=f"$__timeFilter(window_start) AND {FILTER}"):
    """KPIs per group over the whole time range."""
    keys_sql = ", ".join(keys)
    cols = ", ".join(f"{KPIS[n]} AS {n}" for n in names)
    return (
        f"SELECT {keys_sql}, {cols}\nFROM (\n  SELECT {keys_sql}, {SUMS}\n  FROM qoe_window_1m\n"
        f"  WHERE {where}\n  GROUP BY {keys_sql}\n)\n"
        f"WHERE {where_outer}\nORDER BY {order}\nLIMIT {limit}"
    )


def report_sql(name, frm, to):
    """A table of the demo report (scripts/demo.sh) over [frm, to), with the dashboards' KPIs."""
    where = f"window_start >= toDateTime({int(frm)}) AND window_start < toDateTime({int(to)})"
    if name == "slices":
        return kpi_table(["region", "cdn"],
                         ["score", "attempts", "plays", "start_failure_pct", "ebvs_pct",
                          "rebuffering_pct", "startup_p50_ms", "startup_p95_ms", "avg_bitrate_kbps",
                          "seeks_per_hour"],
                         "score ASC", limit=1000, where=where)
    if name == "minutes":
        # Slice-minutes with at least 50 minutes of viewing, so that a ratio means something.
        return kpi_table(["window_start", "region", "cdn"],
                         ["attempts", "start_failure_pct", "rebuffering_pct", "startup_p50_ms"],
                         "rebuffering_pct DESC", where_outer="playing_ + stall_ >= 50 * 60000",
                         limit=8, where=where)
    if name == "codes":
        # The top error codes of the slice with the worst experience score.
        worst = report_sql("slices", frm, to)
        return (f"SELECT * FROM (\n{top_codes('region, cdn', False, where=where)}\n)\n"
                f"WHERE (region, cdn) IN (SELECT region, cdn FROM (\n{worst}\n) LIMIT 1)")
    raise SystemExit(f"unknown report table {name!r} (slices, minutes, codes)")


class Dashboard:
    def __init__(self, uid, title, description, variables=True, textboxes=()):
        self.uid, self.title, self.description = uid, title, description
        self.panels, self.y, self.x, self.row_h = [], 0, 0, 0
        self.variables = variables
        self.textboxes = textboxes  # (name, label): free text, e.g. a view id

    def panel(self, kind, title, description, sql, fmt, w=12, h=8, columns=(), extra=None,
              defaults=None, links=None):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        overrides = [
            {"matcher": {"id": "byName", "options": c},
             "properties": [{"id": "unit", "value": UNITS[c]}]}
            for c in columns if c in UNITS
        ]
        for c, link in (links or {}).items():
            overrides.append({"matcher": {"id": "byName", "options": c},
                              "properties": [{"id": "links", "value": [link]}]})
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [{
                "refId": "A",
                "datasource": DS,
                "editorType": "sql",
                "format": 0 if fmt == "timeseries" else 1,
                "queryType": "timeseries" if fmt == "timeseries" else "table",
                "rawSql": sql,
            }],
            "fieldConfig": {"defaults": defaults or {}, "overrides": overrides},
            "options": LEGEND if kind == "timeseries" else {},
        }
        if extra:
            p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self):
        templating = []
        if self.variables:
            for var, col, label in DIMENSIONS:
                # Hour rows that overlap the range: one starting before `from` counts too,
                # or a range inside one hour would offer no values at all.
                sql = (f"SELECT DISTINCT {col} FROM qoe_window_1h "
                       f"WHERE window_start > $__fromTime - 3600 AND window_start <= $__toTime "
                       f"ORDER BY {col}")
                templating.append({
                    "name": var, "label": label, "type": "query", "datasource": DS,
                    "query": sql, "definition": sql, "refresh": 2, "multi": True,
                    "includeAll": True, "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                })
        for var, label in self.textboxes:
            templating.append({"name": var, "label": label, "type": "textbox", "query": "",
                               "current": {"text": "", "value": ""}})
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["qoe"],
            "timezone": "utc",
            "editable": True,
            "schemaVersion": 39,
            "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "templating": {"list": templating},
            "links": [{"title": "QoE dashboards", "type": "dashboards", "tags": ["qoe"],
                       "asDropdown": True, "includeVars": True, "keepTime": True}],
            "panels": self.panels,
        }


def overview():
    d = Dashboard("qoe-overview", "QoE overview",
                  "Quality of experience over time for the selected slices.")
    t10, b10 = bucket(10)
    d.panel("timeseries", "Concurrent viewers",
            "Average viewers playing or stalled: (playing + stalled time) / bucket length. "
            "Adds up across slices and grains.",
            kpi_series([], custom=[("concurrent_viewers",
                                    f"round((playing_ + stall_) / ({bucket(60)[1]} * 1000), 1)")]),
            "timeseries", columns=["concurrent_viewers"])
    d.panel("timeseries", "Active views (distinct, per 10 s window)",
            "Distinct views with at least one event in a 10 s window, averaged over the bucket.",
            f"SELECT {t10} AS time, round(avg(views_), 1) AS active_views\nFROM (\n"
            f"  SELECT window_start, uniqExactMerge(views) AS views_\n  FROM qoe_active_views_10s\n"
            f"  WHERE $__timeFilter(window_start) AND {FILTER}\n  GROUP BY window_start\n)\n"
            f"GROUP BY time\nORDER BY time",
            "timeseries", columns=["active_views"])
    d.panel("timeseries", "Attempts and plays",
            "Play attempts (view_start) and successful starts (first_frame) per bucket.",
            kpi_series(["attempts", "plays"]), "timeseries", columns=["attempts", "plays"])
    d.panel("timeseries", "Start failures, EBVS, playback failures (%)",
            "Start failures and exits before video start per attempt; fatal errors after start "
            "per play.",
            kpi_series(["start_failure_pct", "ebvs_pct", "playback_failure_pct"]), "timeseries",
            columns=["start_failure_pct", "ebvs_pct", "playback_failure_pct"])
    d.panel("timeseries", "Rebuffering ratio (%)",
            "Stalled time / (playing + stalled time).",
            kpi_series(["rebuffering_pct"]), "timeseries", columns=["rebuffering_pct"])
    d.panel("timeseries", "Stalls and seeks per hour of playback",
            "stall_start and seek events per playing hour.",
            kpi_series(["stalls_per_hour", "seeks_per_hour"]), "timeseries",
            columns=["stalls_per_hour", "seeks_per_hour"])
    d.panel("timeseries", "Startup time p50 / p95",
            "From the startup histogram, interpolated inside buckets.",
            kpi_series(["startup_p50_ms", "startup_p95_ms"]), "timeseries",
            columns=["startup_p50_ms", "startup_p95_ms"])
    d.panel("timeseries", "Average bitrate", "Playing-time weighted rendition bitrate.",
            kpi_series(["avg_bitrate_kbps"]), "timeseries", columns=["avg_bitrate_kbps"])
    d.panel("timeseries", "Live latency", "Average live-edge latency reported by heartbeats.",
            kpi_series(["live_latency_ms"]), "timeseries", columns=["live_latency_ms"])
    parts = ["score", "score_success", "score_startup", "score_smoothness", "score_quality"]
    d.panel("timeseries", "Experience score (0-100)",
            "One number for how viewers fared, and its parts: playback success, startup, "
            "smoothness, quality (README, \"Experience score\"). Computed from the bucket's totals.",
            kpi_series(parts), "timeseries", columns=parts)
    return d


MATRIX = {"transformations": [{"id": "groupingToMatrix", "options": {
    "columnField": "cdn", "rowField": "region", "valueField": None}}]}


def matrix(value):
    m = json.loads(json.dumps(MATRIX))
    m["transformations"][0]["options"]["valueField"] = value
    return m


def traffic_light(good, bad, higher_is_better=False):
    """Thresholds that colour a KPI green, orange from `good`, red from `bad` (or the other way
    round for a KPI where higher is better), for matrix cells and stats."""
    colours = ["red", "orange", "green"] if higher_is_better else ["green", "orange", "red"]
    return {"mode": "absolute", "steps": [{"color": colours[0], "value": None},
                                          {"color": colours[1], "value": min(good, bad)},
                                          {"color": colours[2], "value": max(good, bad)}]}


# Matrix cells coloured by how bad the KPI is: an SRE finds the broken slice by colour.
MATRIX_THRESHOLDS = {
    "score": traffic_light(60, 80, higher_is_better=True),
    "rebuffering_pct": traffic_light(0.5, 1),
    "start_failure_pct": traffic_light(1, 3),
    "ebvs_pct": traffic_light(3, 8),
    "startup_p95_ms": traffic_light(2000, 4000),
    "request_error_pct": traffic_light(1, 3),
    "ttfb_p95_ms": traffic_light(400, 800),
}


def matrix_defaults(value):
    """The matrix's value cells (its columns are named after the CDNs, so the unit and colours
    are defaults, not overrides by name)."""
    out = {"thresholds": MATRIX_THRESHOLDS[value], "color": {"mode": "thresholds"},
           "custom": {"cellOptions": {"type": "color-background"}}}
    if value in UNITS:
        out["unit"] = UNITS[value]
    return out


# Time series legends as a table with the figures an SRE reads first.
LEGEND = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                     "calcs": ["mean", "max", "lastNotNull"]},
          "tooltip": {"mode": "multi", "sort": "none"}}
# A view id opens the one-view dashboard with the same time range.
VIEW_LINK = {"title": "Open this view", "url": "/d/qoe-view?var-view_id=${__value.raw}&${__url_time_range}"}


def region_cdn():
    d = Dashboard("qoe-region-cdn", "QoE by region x CDN",
                  "Which slice is broken: KPIs as region x CDN matrices, and slices ranked by "
                  "how many viewers they affect.")
    all_kpis = ["score", "attempts", "plays", "viewer_hours", "start_failure_pct", "ebvs_pct",
                "playback_failure_pct", "rebuffering_pct", "stalls_per_hour", "seeks_per_hour",
                "startup_p50_ms", "startup_p95_ms", "avg_bitrate_kbps", "live_latency_ms",
                "cdn_requests", "request_error_pct", "ttfb_p95_ms", "cdn_switches"]
    for name, title in [("score", "Experience score (0-100)"),
                        ("rebuffering_pct", "Rebuffering ratio (%)"),
                        ("start_failure_pct", "Start failures (%)"),
                        ("ebvs_pct", "Exits before video start (%)"),
                        ("startup_p95_ms", "Startup p95 (ms)"),
                        ("request_error_pct", "CDN request errors (%, from CMCD players)"),
                        ("ttfb_p95_ms", "CDN time to first byte p95 (ms, from CMCD players)")]:
        d.panel("table", f"{title}: region x CDN",
                f"{title} per region (rows) and CDN (columns) over the time range.",
                kpi_table(["region", "cdn"], [name], "region, cdn", limit=10000),
                "table", columns=["region", "cdn", name], extra=matrix(name),
                defaults=matrix_defaults(name))
    fleet = (f"(SELECT sum(stall_ms) / greatest(sum(playing_ms) + sum(stall_ms), 1) FROM qoe_window_1m "
             f"WHERE $__timeFilter(window_start) AND {FILTER})")
    d.panel("table", "Worst slices: rebuffering",
            "Ranked by excess stalled hours: stalled time beyond what the slice would have at the "
            "fleet's ratio. Big slices with a bad ratio come first; tiny ones cannot dominate.",
            f"SELECT region, cdn, round((playing_ + stall_) / 3600000, 1) AS viewer_hours,\n"
            f"  {KPIS['rebuffering_pct']} AS rebuffering_pct,\n"
            f"  round((stall_ - {fleet} * (playing_ + stall_)) / 3600000, 2) AS excess_stall_hours\n"
            f"FROM (\n  SELECT region, cdn, {SUMS}\n  FROM qoe_window_1m\n"
            f"  WHERE $__timeFilter(window_start) AND {FILTER}\n  GROUP BY region, cdn\n)\n"
            f"ORDER BY excess_stall_hours DESC\nLIMIT 20",
            "table", columns=["region", "cdn", "viewer_hours", "rebuffering_pct", "excess_stall_hours"])
    fleet_vsf = (f"(SELECT sum(vsf) / greatest(sum(attempts), 1) FROM qoe_window_1m "
                 f"WHERE $__timeFilter(window_start) AND {FILTER})")
    d.panel("table", "Worst slices: start failures",
            "Ranked by excess failed starts: failures beyond the fleet's rate for that many attempts.",
            f"SELECT region, cdn, attempts_ AS attempts, vsf_ AS failed_starts,\n"
            f"  {KPIS['start_failure_pct']} AS start_failure_pct,\n"
            f"  round(vsf_ - {fleet_vsf} * attempts_, 1) AS excess_failed_starts\n"
            f"FROM (\n  SELECT region, cdn, {SUMS}\n  FROM qoe_window_1m\n"
            f"  WHERE $__timeFilter(window_start) AND {FILTER}\n  GROUP BY region, cdn\n)\n"
            f"ORDER BY excess_failed_starts DESC\nLIMIT 20",
            "table", columns=["region", "cdn", "attempts", "failed_starts", "start_failure_pct",
                              "excess_failed_starts"])
    d.panel("table", "Worst slices: startup p95",
            "Slices with at least 20 plays, slowest p95 startup first.",
            kpi_table(["region", "cdn"], ["plays", "startup_p50_ms", "startup_p95_ms"],
                      "startup_p95_ms DESC", where_outer="plays_ >= 20", limit=20),
            "table", columns=["region", "cdn", "plays", "startup_p50_ms", "startup_p95_ms"])
    for key, label in [("cdn", "CDN"), ("player", "player")]:
        d.panel("table", f"Top error codes by {label}",
                f"The 5 most frequent error codes of each {label} over the range, then all its "
                "other codes in one row, with how many were fatal and the errors' share of the "
                f"{label}'s play attempts. Business errors are not here (next panel). The stream "
                "selector does not apply: errors are kept per region, CDN, stream type, "
                "platform and player.",
                top_codes(key, business=False), "table",
                columns=[key, "error_code", "errors", "fatal", "pct_of_attempts"])
    d.panel("table", "Lost reports by player and CDN",
            "Beacon events (gaps in a view's seq) and CMCD reports (gaps in a session's sn) that "
            "never arrived: blocked, dropped by a proxy, or refused with a 4xx the player "
            "silently discards. Counted when the view or session is forgotten (its timeout "
            "after its last report), per 100 play attempts of the player on the CDN.",
            f"SELECT player, cdn, attempts_ AS attempts, events_lost_ AS events_lost,\n"
            f"  reports_lost_ AS reports_lost,\n"
            f"  round(100 * (events_lost_ + reports_lost_) / greatest(attempts_, 1), 2) AS lost_per_100_views\n"
            f"FROM (\n"
            f"  SELECT player, cdn, sum(attempts) AS attempts_, sum(events_lost) AS events_lost_,\n"
            f"    sum(reports_lost) AS reports_lost_\n"
            f"  FROM qoe_error_codes_1m\n"
            f"  WHERE $__timeFilter(window_start) AND {ERROR_FILTER}\n"
            f"  GROUP BY player, cdn\n"
            f")\n"
            f"ORDER BY lost_per_100_views DESC, player, cdn\nLIMIT 50",
            "table", columns=["player", "cdn", "attempts", "events_lost", "reports_lost",
                              "lost_per_100_views"])
    d.panel("table", "Business errors by code",
            "Errors whose code is configured as a business error (--business-error-codes: "
            "entitlement, geo-block, concurrent-stream limit, ...): counted apart, neither start "
            "nor playback failures, so not in the failure rates or the score.",
            top_codes("cdn", business=True), "table",
            columns=["cdn", "error_code", "errors", "fatal", "pct_of_attempts"])
    d.panel("table", "All KPIs by slice", "Every KPI per region x CDN, worst rebuffering first.",
            kpi_table(["region", "cdn"], all_kpis, "rebuffering_pct DESC", limit=1000),
            "table", w=24, h=10, columns=["region", "cdn"] + all_kpis)
    return d


def streams():
    d = Dashboard("qoe-streams", "QoE stream drill-down",
                  "Streams behind the selected slices, and how each behaves over time.")
    kpis = ["viewer_hours", "attempts", "start_failure_pct", "ebvs_pct", "rebuffering_pct",
            "startup_p95_ms", "avg_bitrate_kbps", "live_latency_ms"]
    d.panel("table", "Streams, worst rebuffering first",
            "Per stream over the time range; streams with less than 0.1 viewer-hours are hidden.",
            kpi_table(["stream_id", "stream_type"], kpis, "rebuffering_pct DESC",
                      where_outer="playing_ + stall_ >= 360000", limit=200),
            "table", w=24, h=10, columns=["stream_id", "stream_type"] + kpis)
    t, b = bucket(60)
    for name, expr, title in [
        ("concurrent_viewers", f"round((playing_ + stall_) / ({b} * 1000), 1)", "Concurrent viewers by stream"),
        ("rebuffering_pct", KPIS["rebuffering_pct"], "Rebuffering ratio by stream (%)"),
        ("start_failure_pct", KPIS["start_failure_pct"], "Start failures by stream (%)"),
        ("startup_p95_ms", KPIS["startup_p95_ms"], "Startup p95 by stream"),
    ]:
        d.panel("timeseries", title, "One series per stream.",
                f"SELECT time, stream_id, {expr} AS {name}\nFROM (\n"
                f"  SELECT {t} AS time, stream_id, {SUMS}\n  FROM qoe_window_1m\n"
                f"  WHERE $__timeFilter(window_start) AND {FILTER}\n  GROUP BY time, stream_id\n)\n"
                f"ORDER BY time, stream_id",
                "timeseries", columns=["stream_id", name])
    return d


def views():
    d = Dashboard("qoe-views", "QoE view drill-down",
                  "The individual views behind a bad slice: one row per view (qoe_views).")
    base = (f"FROM qoe_views\nWHERE start_time >= $__fromTime AND start_time <= $__toTime "
            f"AND {FILTER}")
    cols = ("view_id, start_time, region, cdn, platform, stream_id, score, started, startup_ms,\n"
            "  round(playing_ms / 1000) AS watched_s, round(stall_ms / 1000, 1) AS stalled_s, stalls,\n"
            "  if(playing_ms + stall_ms = 0, 0, round(100 * stall_ms / (playing_ms + stall_ms), 2)) AS rebuffering_pct,\n"
            "  round(avg_bitrate_kbps) AS avg_bitrate_kbps, errors, error_code, end_reason")
    names = ["view_id", "start_time", "region", "cdn", "platform", "stream_id", "score", "started",
             "startup_ms", "watched_s", "stalled_s", "stalls", "rebuffering_pct",
             "avg_bitrate_kbps", "errors", "error_code", "end_reason"]
    d.panel("stat", "Views started in range", "Distinct views that started in the time range.",
            f"SELECT count() AS views {base}", "table", w=6, h=4, columns=["views"])
    d.panel("stat", "Failed starts", "Views that never rendered a frame because of an error.",
            f"SELECT countIf(started = 0 AND end_reason = 'error') AS failed_starts {base}",
            "table", w=6, h=4, columns=["failed_starts"])
    d.panel("stat", "Exits before start", "Views that ended before the first frame, not by error.",
            f"SELECT countIf(started = 0 AND end_reason = 'exit') AS exits_before_start {base}",
            "table", w=6, h=4, columns=["exits_before_start"])
    d.panel("stat", "Median view rebuffering (%)", "Median over views with playback.",
            f"SELECT round(quantileExact(0.5)(100 * stall_ms / (playing_ms + stall_ms)), 2) AS median_rebuffering_pct "
            f"{base} AND playing_ms + stall_ms > 0", "table", w=6, h=4,
            columns=["median_rebuffering_pct"])
    d.panel("table", "Views by how they ended",
            "live: no view_end yet and heard from within the view timeout; timeout: went silent "
            "(closed tab, crashed app) and was ended by the aggregator; completed / exit / error: "
            "the player's view_end.",
            f"SELECT if(end_reason = '', 'live', end_reason) AS state, count() AS views, "
            f"countIf(started = 1) AS started_views\n{base}\nGROUP BY state\nORDER BY views DESC",
            "table", w=24, h=6, columns=["state", "views", "started_views"])
    d.panel("table", "Worst views by experience score",
            "The views of the selected slices that fared worst (README, \"Experience score\"): "
            "failed starts score 0, exits before start 50; its parts say why.",
            f"SELECT view_id, start_time, region, cdn, stream_id, score, score_success, score_startup,\n"
            f"  score_smoothness, score_quality, end_reason, error_code\n{base}\n"
            # view_id breaks ties (many failed starts score 0 in the same second), so that the
            # page of 500 is the same rows whichever server, or cluster, answers.
            f"ORDER BY score ASC, start_time DESC, view_id\nLIMIT 500",
            "table", w=24, h=10,
            columns=["view_id", "start_time", "region", "cdn", "stream_id", "score", "score_success",
                     "score_startup", "score_smoothness", "score_quality", "end_reason", "error_code"],
            links={"view_id": VIEW_LINK})
    d.panel("table", "Views with the most stalling",
            "Views of the selected slices, most stalled time first.",
            f"SELECT {cols}\n{base}\nORDER BY stall_ms DESC, errors DESC, view_id\nLIMIT 500",
            "table", w=24, h=12, columns=names, links={"view_id": VIEW_LINK})
    d.panel("table", "Views that failed", "Views with an error code, newest first.",
            f"SELECT {cols}\n{base} AND error_code != ''\nORDER BY start_time DESC, view_id\nLIMIT 500",
            "table", w=24, h=10, columns=names, links={"view_id": VIEW_LINK})
    return d


def one_view():
    d = Dashboard("qoe-view", "QoE one view",
                  "One view by its id (a link from the view drill-down's tables): its summary "
                  "row, and how its slice (region, CDN, stream type, platform, stream) fared "
                  "minute by minute while it played.", variables=False,
                  textboxes=[("view_id", "View id")])
    the_view = "FROM qoe_views WHERE view_id = ${view_id:singlequote}"
    parts = ["score", "score_success", "score_startup", "score_smoothness", "score_quality"]
    d.panel("stat", "Experience score and its parts", "The view's score (README, \"Experience "
            "score\"): 0-100, from its own totals.",
            f"SELECT {', '.join(parts)} {the_view}", "table", w=24, h=4, columns=parts,
            defaults={"thresholds": traffic_light(60, 80, higher_is_better=True),
                      "color": {"mode": "thresholds"}, "decimals": 1})
    cols = ["view_id", "start_time", "last_event_time", "region", "cdn", "stream_type", "platform",
            "stream_id", "player", "protocol", "started", "startup_ms", "playing_ms", "stall_ms",
            "stalls", "avg_bitrate_kbps", "errors", "error_code", "end_reason"]
    d.panel("table", "The view", "Its row of qoe_views: where it played, what it saw, how it ended.",
            f"SELECT {', '.join(cols)} {the_view}", "table", w=24, h=4, columns=cols)
    # The view's slice over its lifetime (not the dashboard's range): scalar subqueries, which
    # a Distributed table answers the same on a cluster.
    slice_cols = ["region", "cdn", "stream_type", "platform", "stream_id"]
    where = " AND ".join(f"{c} = (SELECT any({c}) {the_view})" for c in slice_cols)
    lifetime = (f"window_start >= (SELECT toStartOfMinute(min(start_time)) {the_view}) "
                f"AND window_start <= (SELECT max(last_event_time) {the_view})")
    kpis = ["concurrent_viewers", "attempts", "start_failure_pct", "rebuffering_pct",
            "startup_p95_ms", "avg_bitrate_kbps"]
    exprs = dict(KPIS, concurrent_viewers="round((playing_ + stall_) / 60000, 1)")
    select = ", ".join(f"{exprs[k]} AS {k}" for k in kpis)
    d.panel("table", "Its slice, minute by minute",
            "The 1-minute windows of the view's region x CDN x stream type x platform x stream "
            "from its start to its last report.",
            f"SELECT time, {select}\nFROM (\n  SELECT window_start AS time, {SUMS}\n"
            f"  FROM qoe_window_1m\n  WHERE {where}\n    AND {lifetime}\n  GROUP BY time\n)\n"
            f"ORDER BY time\nLIMIT 1440", "table", w=24, h=10, columns=["time"] + kpis)
    return d


def pipeline():
    d = Dashboard("qoe-pipeline", "QoE pipeline health",
                  "Is the data complete and current: event rates, late and duplicate events, "
                  "freshness of windows and of each partition's checkpoint.", variables=False)
    t, b = bucket(10)
    d.panel("timeseries", "Events per second",
            "Events counted into windows, duplicates and late events, per second of event time.",
            f"SELECT {t} AS time, round(sum(events) / {b}, 1) AS events_per_s,\n"
            f"  round(sum(duplicate_events) / {b}, 2) AS duplicates_per_s,\n"
            f"  round(sum(late_events) / {b}, 2) AS late_per_s\n"
            f"FROM qoe_window_10s\nWHERE $__timeFilter(window_start)\nGROUP BY time\nORDER BY time",
            "timeseries", w=24, columns=["events_per_s", "duplicates_per_s", "late_per_s"])
    d.panel("timeseries", "Late and duplicate events (%)",
            "Share of events that arrived after their window was final, or were repeats.",
            f"SELECT {t} AS time,\n"
            f"  round(100 * sum(late_events) / greatest(sum(events) + sum(late_events) + sum(duplicate_events), 1), 3) AS late_pct,\n"
            f"  round(100 * sum(duplicate_events) / greatest(sum(events) + sum(late_events) + sum(duplicate_events), 1), 3) AS duplicate_pct\n"
            f"FROM qoe_window_10s\nWHERE $__timeFilter(window_start)\nGROUP BY time\nORDER BY time",
            "timeseries", columns=["late_pct", "duplicate_pct"])
    d.panel("stat", "Data freshness",
            "Seconds since the start of the newest 10 s window with data; above ~60 s means "
            "events are not flowing (collector, broker or aggregator).",
            "SELECT toUInt32(now()) - toUInt32(max(window_start)) AS freshness_s FROM qoe_window_10s",
            "table", w=6, columns=["freshness_s"],
            defaults={"thresholds": traffic_light(30, 60), "color": {"mode": "thresholds"},
                      "decimals": 0})
    d.panel("table", "Checkpoints by partition",
            "Where each partition's data ends and when it was last written; a partition whose "
            "write age grows while others stay fresh is stuck.",
            "SELECT topic, partition, max(next_offset) AS next_offset,\n"
            "  toUInt32(now()) - toUInt32(max(written_at)) AS seconds_since_write\n"
            "FROM qoe_checkpoints\nGROUP BY topic, partition\nORDER BY topic, partition",
            "table", w=6, columns=["topic", "partition", "next_offset", "seconds_since_write"])
    return d


# Alert rules. Every rule's query returns one row per breaching region x CDN slice (labels:
# region, cdn; value: the current figure), so an empty result is healthy.
CURRENT = "window_start >= $__fromTime AND window_start + 60 <= $__toTime"
BASELINE = "window_start >= $__fromTime - 3600 AND window_start < $__fromTime"
# The current range ends this long before the evaluation: a minute is final once the
# aggregator's watermark is its end plus the allowed lateness (30 s) and it has flushed (about
# a second more); a minute-aligned evaluation then sees every minute that ended 60 s or more
# before it. Each rule's range is its window plus this lag.
ALERT_LAG_S = 60
ALERT_INTERVAL = "1m"


def alert_range(window_min):
    return {"from": window_min * 60 + ALERT_LAG_S, "to": ALERT_LAG_S}


def alert_sql(sums, value, conditions):
    inner = ",\n    ".join(sums)
    return (
        f"SELECT region, cdn, {value} AS value\nFROM (\n  SELECT region, cdn,\n    {inner}\n"
        f"  FROM qoe_window_1m\n  WHERE window_start >= $__fromTime - 3600 AND window_start + 60 <= $__toTime\n"
        f"  GROUP BY region, cdn\n)\nWHERE " + "\n  AND ".join(conditions)
    )


def describe(what, threshold, guard, guard_unit, times, window_min, min_count=0, count_unit="",
             z=0):
    """The rule in words, from the same numbers as its SQL."""
    count = f", at least {min_count} {count_unit}" if min_count else ""
    significance = (f", and the count exceeds the hour before's rate by {z:g} standard "
                    f"deviations") if z else ""
    return (f"{what} is above {threshold} over the last {window_min} complete minutes with at "
            f"least {guard} {guard_unit}{count}, and above {times:g}x the slice's value in the "
            f"hour before{significance}")


def ratio_rule(what, num, den, guard, guard_unit, pct_threshold, times, window_min, pending_min,
               guard_scale=1, min_count=0, count_unit="", z=0):
    """SQL and description of a rule on num / den, as a percentage. `min_count`: the numerator
    must reach this many too. `z`: for counted events (failed starts, errors), the current
    count must also exceed what the slice's rate of the hour before predicts by z standard
    deviations of a Poisson count (sqrt of the prediction): a few more failures than usual in a
    small slice is noise, the same share in a big one is not."""
    guard_raw = guard * guard_scale
    sums = [f"sumIf({num}, {CURRENT}) AS cur_num", f"sumIf({den}, {CURRENT}) AS cur_den",
            f"sumIf({num}, {BASELINE}) AS base_num", f"sumIf({den}, {BASELINE}) AS base_den"]
    conditions = [f"cur_den >= {guard_raw}", f"cur_num / cur_den > {pct_threshold / 100}",
                  f"(base_den < {guard_raw} OR cur_num / cur_den > {times} * base_num / base_den)"]
    if min_count:
        conditions.insert(1, f"cur_num >= {min_count}")
    if z:
        sums.append(f"if(base_den >= {guard_raw}, cur_den * base_num / base_den, 0) AS expected")
        conditions.append(f"cur_num - expected > {z} * sqrt(greatest(expected, 1))")
    sql = alert_sql(sums, "round(100 * cur_num / cur_den, 2)", conditions)
    # guard, kpi, threshold: the same numbers for dashboards/alert_eval.py, which checks
    # independently of the SQL that no alert fires below the guard, and plots the KPI.
    return dict(sql=sql, rule=describe(what, f"{pct_threshold:g}%", guard, guard_unit, times,
                                       window_min, min_count, count_unit, z),
                guard=(f"sum({den})", guard_raw), kpi=(f"sum({num})", f"sum({den})"),
                threshold=pct_threshold, range=alert_range(window_min), pending=pending_min)


def startup_rule(guard, threshold_ms, times, window_min, pending_min):
    """SQL and description of the startup p95 rule."""
    cur_h, base_h = histogram(CURRENT), histogram(BASELINE)
    # n: plays with a known startup (the histogram's total).
    sums = [f"{cur_h} AS cur_h", "arrayCumSum(cur_h) AS cur_c", "arraySum(cur_h) AS cur_n",
            f"{base_h} AS base_h", "arrayCumSum(base_h) AS base_c", "arraySum(base_h) AS base_n"]
    p_cur = percentile(0.95, "cur_h", "cur_c", "cur_n")
    p_base = percentile(0.95, "base_h", "base_c", "base_n")
    sql = alert_sql(
        sums, p_cur,
        [f"cur_n >= {guard}", f"{p_cur} > {threshold_ms}",
         f"(base_n < {guard} OR {p_cur} > {times} * {p_base})"])
    return dict(sql=sql, rule=describe("startup p95", f"{threshold_ms} ms", guard,
                                       "plays with a measured startup", times, window_min),
                guard=(" + ".join(f"sum({column(c)})" for c in STARTUP_COLUMNS), guard),
                kpi=None, threshold=threshold_ms, range=alert_range(window_min),
                pending=pending_min)


RULES = [
    dict(uid="qoe-rebuffering", metric="rebuffering_ratio", severity="critical",
         title="Rebuffering ratio regression",
         **ratio_rule("the share of viewing time stalled", "stall_ms", "playing_ms + stall_ms", 200,
                       "viewer-minutes", 0.5, 2, 3, 3, guard_scale=60000),
         summary="Rebuffering {{ $values.B.Value }}% in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Check the CDN's status page and edge error rates for the region; compare "
                 "with the other CDNs of the region on 'QoE by region x CDN'. If only this CDN "
                 "is affected, shift the region's traffic away from it (CDN switching / steering "
                 "weights) and open a ticket with the CDN."),
    dict(uid="qoe-start-failures", metric="start_failure_rate", severity="critical",
         title="Start failure rate regression",
         **ratio_rule("the share of attempts that failed to start", "vsf", "attempts", 50,
                       "attempts", 4.0, 2, 3, 3, z=4),
         summary="Start failures {{ $values.B.Value }}% of attempts in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Open 'QoE view drill-down' filtered to the slice: the error codes of failed "
                 "views say whether manifests (404), DRM licences or the network fail. Manifest "
                 "or segment errors on one CDN: steer traffic away; DRM errors everywhere: page "
                 "the licence service owner."),
    dict(uid="qoe-ebvs", metric="ebvs_rate", severity="warning",
         title="Exits before video start regression",
         **ratio_rule("the share of attempts abandoned before the first frame", "ebvs", "attempts",
                       50, "attempts", 8.0, 2, 3, 3, z=4),
         summary="Exits before start {{ $values.B.Value }}% of attempts in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Viewers give up when startup is slow: check the startup p95 of the slice and "
                 "the CDN's time to first byte for manifests and first segments."),
    dict(uid="qoe-startup-p95", metric="startup_p95", severity="warning",
         title="Startup time p95 regression",
         **startup_rule(50, 4500, 1.5, 3, 3),
         summary="Startup p95 {{ $values.B.Value }} ms in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Compare with the other CDNs of the region; slow starts on one CDN point at "
                 "its edge (cache misses, TTFB). Everywhere at once: check the origin and the "
                 "packager."),
    dict(uid="qoe-cdn-request-errors", metric="cdn_request_error_rate", severity="critical",
         title="CDN request error rate regression",
         **ratio_rule("the share of CDN requests that failed (players' CMCD request reports)",
                       "cdn_request_errors", "cdn_requests", 200, "requests", 5.0, 3, 3, 3, z=4),
         summary="CDN request errors {{ $values.B.Value }}% of requests in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Players see this CDN answer errors (status >= 400, or no response) before "
                 "viewers rebuffer. Check the CDN's status page and its edge logs for the region; "
                 "if the other CDNs of the region are healthy on 'QoE by region x CDN', steer the "
                 "region's traffic away and open a ticket with the CDN."),
    dict(uid="qoe-playback-failures", metric="playback_failure_rate", severity="critical",
         title="Playback failure rate regression",
         **ratio_rule("the share of plays ended by a fatal error", "vpf", "plays", 100, "plays",
                       15.0, 3, 3, 3, z=4),
         summary="Playback failures {{ $values.B.Value }}% of plays in {{ $labels.region }} x {{ $labels.cdn }}",
         runbook="Open 'QoE view drill-down' for the slice and group the failed views by error "
                 "code and player version; a new player release or a broken rendition is the "
                 "usual cause."),
]


def alerting():
    rules = []
    for r in RULES:
        rules.append({
            "uid": r["uid"],
            "title": r["title"],
            "condition": "C",
            "data": [
                {"refId": "A", "relativeTimeRange": r["range"], "datasourceUid": DS_UID,
                 "model": {"refId": "A", "datasource": DS, "editorType": "sql", "format": 1,
                           "queryType": "table", "rawSql": r["sql"]}},
                {"refId": "B", "datasourceUid": EXPR["uid"],
                 "model": {"refId": "B", "type": "reduce", "expression": "A",
                           "reducer": "last", "datasource": EXPR}},
                {"refId": "C", "datasourceUid": EXPR["uid"],
                 "model": {"refId": "C", "type": "threshold", "expression": "B",
                           "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                           "datasource": EXPR}},
            ],
            "noDataState": "OK",
            "execErrState": "Error",
            "for": f"{r['pending']}m",
            "labels": {"severity": r["severity"], "metric": r["metric"], "team": "video-sre"},
            "annotations": {
                "summary": r["summary"],
                "description": "Fires per region x CDN slice when " + r["rule"] + ". The region "
                               "and cdn labels come from the query's columns.",
                "runbook": r["runbook"],
                "dashboard": "qoe-region-cdn",
            },
        })
    return {
        "apiVersion": 1,
        "groups": [{"orgId": 1, "name": "qoe-regressions", "folder": "QoE", "interval": ALERT_INTERVAL,
                    "rules": rules}],
    }


class _Dumper(yaml.SafeDumper):
    """Readable YAML: no anchors, multi-line SQL as literal blocks."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(str, lambda dumper, s: dumper.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def outputs():
    files = {}
    for d in [overview(), region_cdn(), streams(), views(), one_view(), pipeline()]:
        files[HERE / "json" / f"{d.uid}.json"] = json.dumps(d.json(), indent=2) + "\n"
    header = ("# Generated by dashboards/generate.py from its rule definitions; edit there.\n"
              "# Grafana-managed alert rules for QoE regressions per region x CDN slice.\n")
    files[HERE / "provisioning" / "alerting" / "qoe-alerts.yaml"] = header + yaml.dump(
        alerting(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return files


def main():
    if sys.argv[1:2] == ["--report-sql"]:
        if len(sys.argv) != 5:
            raise SystemExit("usage: generate.py --report-sql slices|minutes|codes FROM TO")
        print(report_sql(sys.argv[2], sys.argv[3], sys.argv[4]))
        return
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in outputs().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(HERE.parent)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run dashboards/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
