#!/usr/bin/env python3
"""The dashboard viewer: the provisioned Grafana dashboards and alert rules, drawn in a browser.

It reads the same files Grafana loads (`dashboards/json/*.json`, the alert rules of
`provisioning/alerting/`) and serves a page (`web/`) that renders their panels. The browser
names a dashboard, a panel and variable values, never SQL: the server takes the panel's own
query from the file, expands the ClickHouse data source's macros and the template variables
the way Grafana does (`grafana.py`, shared with the alert evaluation and the tests) and runs it
read-only on ClickHouse, whose address and credentials stay here. Alert states come from
`grafana.state_at`, the code `alert_eval.py` measures the rules with.

    .stack/venv/bin/python dashboards/viewer/server.py               # http://127.0.0.1:3000
    .stack/venv/bin/python dashboards/viewer/server.py --help

API (JSON; every error is a 4xx/5xx with {"error": "..."}):
    GET /api/dashboards                         uid, title, tags of every dashboard
    GET /api/dashboards/<uid>                   the dashboard's JSON, as in its file
    GET /api/variable?dashboard=&name=&from=&to=          a query variable's options
    GET /api/query?dashboard=&panel=&from=&to=&interval=&var-<name>=...   a panel's rows
    GET /api/alerts?at=                         every rule's state and firing instances at `at`
Times are epoch seconds or Grafana's relative `now`, `now-6h`, `now-30m`.
"""

import argparse
import base64
import concurrent.futures
import http.server
import json
import logging
import mimetypes
import os
import pathlib
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARDS = HERE.parent
sys.path.insert(0, str(DASHBOARDS))
import grafana  # noqa: E402

WEB = HERE / "web"
UPLOT = HERE / "node_modules" / "uplot" / "dist"
# Files the page loads: its own, and the chart library installed from npm (package-lock.json).
STATIC = {
    "app.js": WEB / "app.js",
    "app.css": WEB / "app.css",
    "uPlot.iife.min.js": UPLOT / "uPlot.iife.min.js",
    "uPlot.min.css": UPLOT / "uPlot.min.css",
}
MAX_RANGE_S = 31 * 86400
MAX_VALUES, MAX_VALUE_LEN = 500, 256
MAX_RESPONSE_BYTES = 32 << 20
QUERY_PARAMS = {"dashboard", "panel", "from", "to", "interval"}
log = logging.getLogger("viewer")


class Refused(Exception):
    """A request the viewer will not serve: its HTTP status and a message for the user."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# --- the files -------------------------------------------------------------------------------

def load_dashboards(directory):
    """{uid: dashboard} of every `*.json` in `directory`; a file that does not parse or has no
    uid stops the viewer with the file's name."""
    out = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        try:
            d = json.loads(path.read_text())
            uid = d["uid"]
        except (ValueError, KeyError) as e:
            raise SystemExit(f"{path}: not a dashboard ({e})") from None
        if uid in out:
            raise SystemExit(f"{path}: uid {uid!r} is used twice")
        out[uid] = d
    if not out:
        raise SystemExit(f"no dashboards (*.json) in {directory}")
    return out


def parse_time(value, now, name):
    """Epoch seconds from epoch seconds, `now` or `now-<n><s|m|h|d>`."""
    if value is None:
        raise Refused(400, f"missing {name}")
    if re.fullmatch(r"\d{1,10}", value):
        return int(value)
    m = re.fullmatch(r"now(?:-(\d{1,6})([smhd]))?", value)
    if not m:
        raise Refused(400, f"{name}={value!r}: expected epoch seconds, now or now-<n>[smhd]")
    if not m.group(1):
        return now
    return now - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def time_range(params, now):
    frm = parse_time(one(params, "from", "now-3h"), now, "from")
    to = parse_time(one(params, "to", "now"), now, "to")
    if not frm < to:
        raise Refused(400, f"from ({frm}) must be before to ({to})")
    if to - frm > MAX_RANGE_S:
        raise Refused(400, f"time range over {MAX_RANGE_S // 86400} days")
    return frm, to


def one(params, name, default=None):
    values = params.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise Refused(400, f"{name} given {len(values)} times")
    return values[0]


# --- ClickHouse --------------------------------------------------------------------------------

class ClickHouse:
    """Read-only queries over HTTP, with the server's own address, database and credentials."""

    def __init__(self, url, database, user, password, timeout_s):
        self.url, self.database, self.timeout_s = url.rstrip("/"), database, timeout_s
        self.headers = {}
        if user or password:  # HTTP basic authentication: every ClickHouse version takes it
            token = base64.b64encode(f"{user or 'default'}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def query(self, sql):
        """(columns [{name, type}], rows) of one SELECT."""
        params = {"database": self.database, "readonly": "2",
                  "max_execution_time": str(self.timeout_s),
                  "output_format_json_quote_64bit_integers": "0"}
        req = urllib.request.Request(f"{self.url}/?{urllib.parse.urlencode(params)}",
                                     data=(sql + "\nFORMAT JSONCompact").encode(),
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s + 5) as r:
                body = r.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            detail = e.read(4000).decode(errors="replace").strip()
            raise Refused(502, f"ClickHouse refused the query: {detail}") from None
        except OSError as e:
            raise Refused(502, f"ClickHouse at {self.url} did not answer: {e}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise Refused(502, f"ClickHouse answered over {MAX_RESPONSE_BYTES >> 20} MiB")
        try:
            doc = json.loads(body)
            return doc["meta"], doc["data"]
        except (ValueError, KeyError):
            raise Refused(502, "ClickHouse answered something that is not JSONCompact") from None


# --- the viewer ------------------------------------------------------------------------------

class Viewer:
    def __init__(self, dashboards, rules, clickhouse):
        self.dashboards, self.rules, self.ch = dashboards, rules, clickhouse

    def dashboard(self, uid):
        d = self.dashboards.get(uid)
        if d is None:
            raise Refused(404, f"no dashboard {uid!r} (there are: {', '.join(sorted(self.dashboards))})")
        return d

    def variable(self, d, name):
        for v in d.get("templating", {}).get("list", []):
            if v["name"] == name:
                return v
        raise Refused(400, f"dashboard {d['uid']!r} has no variable {name!r}")

    def variable_options(self, d, v, frm, to):
        if v["type"] != "query":
            raise Refused(400, f"variable {v['name']!r} is a {v['type']}, it has no query")
        _, rows = self.ch.query(grafana.expand(v["query"], frm, to))
        return [str(r[0]) for r in rows]

    def variable_values(self, d, params, frm, to):
        """Every variable's values as Grafana would send them: `$__all` (or none given) is
        every option of a query variable; a textbox is its text."""
        given = {k[4:]: v for k, v in params.items() if k.startswith("var-")}
        names = {v["name"] for v in d.get("templating", {}).get("list", [])}
        unknown = set(given) - names
        if unknown:
            raise Refused(400, f"dashboard {d['uid']!r} has no variable {', '.join(sorted(unknown))}")
        out = {}
        for v in d.get("templating", {}).get("list", []):
            values = given.get(v["name"])
            if len(values or []) > MAX_VALUES or any(len(x) > MAX_VALUE_LEN for x in values or []):
                raise Refused(400, f"variable {v['name']!r}: at most {MAX_VALUES} values of "
                                   f"{MAX_VALUE_LEN} characters")
            if v["type"] == "textbox":
                out[v["name"]] = values or [v.get("query", "")]
            elif not values or "$__all" in values:
                out[v["name"]] = self.variable_options(d, v, frm, to)
            else:
                out[v["name"]] = values
        return out

    def panel_query(self, params, now):
        unknown = {k for k in params if k not in QUERY_PARAMS and not k.startswith("var-")}
        if unknown:
            raise Refused(400, f"unknown parameter {', '.join(sorted(unknown))}: the viewer runs "
                               "only the queries of the dashboard files, for a panel id and "
                               "variable values")
        d = self.dashboard(one(params, "dashboard", ""))
        panel_id = one(params, "panel", "")
        panel = next((p for p in d["panels"] if str(p.get("id")) == panel_id), None)
        if panel is None:
            raise Refused(404, f"dashboard {d['uid']!r} has no panel {panel_id!r}")
        frm, to = time_range(params, now)
        interval = one(params, "interval", "60")
        if not re.fullmatch(r"\d{1,5}", interval) or not 1 <= int(interval) <= 86400:
            raise Refused(400, f"interval={interval!r}: seconds from 1 to 86400")
        values = self.variable_values(d, params, frm, to)
        results = []
        for t in panel.get("targets", []):
            try:
                sql = grafana.expand(t["rawSql"], frm, to, int(interval), values)
            except ValueError as e:
                raise Refused(400, str(e)) from None
            columns, rows = self.ch.query(sql)
            results.append({"refId": t.get("refId"), "columns": columns, "rows": rows})
        return {"from": frm, "to": to, "interval": int(interval), "results": results}

    def options(self, params, now):
        d = self.dashboard(one(params, "dashboard", ""))
        v = self.variable(d, one(params, "name", ""))
        frm, to = time_range(params, now)
        return {"options": self.variable_options(d, v, frm, to)}

    def alerts(self, params, now):
        at = parse_time(one(params, "at", "now"), now, "at")
        out = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for rule in self.rules:
                times = grafana.evaluation_times(rule, at)
                results = dict(pool.map(lambda t, r=rule: (t, self.evaluate(r, t)), times))
                state, instances = grafana.state_at(rule, results, at)
                out.append({"uid": rule["uid"], "title": rule["title"], "state": state,
                            "for_s": rule["pending"], "interval_s": rule["interval"],
                            "labels": rule["labels"], "summary": rule["annotations"].get("summary", ""),
                            "instances": [{"region": i[0], "cdn": i[1], "state": s, "value": v}
                                          for i, s, v in instances]})
        return {"at": at, "rules": out}

    def evaluate(self, rule, t):
        """One evaluation of a rule's query at t: {(region, cdn): value}, None on an error."""
        sql = grafana.expand(rule["sql"], t - rule["rng"]["from"], t - rule["rng"]["to"], rule["interval"])
        try:
            _, rows = self.ch.query(sql)
        except Refused as e:
            log.warning("rule %s at %d: %s", rule["uid"], t, e)
            return None
        return {(str(r[0]), str(r[1])): float(r[2]) for r in rows}


class Handler(http.server.BaseHTTPRequestHandler):
    viewer: Viewer
    server_version = "qoe-viewer"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        path = url.path
        try:
            if path in ("/", "/alerts") or path.startswith("/d/"):
                return self.send_file(WEB / "index.html")
            if path.startswith("/static/"):
                f = STATIC.get(path[len("/static/"):])
                if f is None or not f.exists():
                    raise Refused(404, f"no file {path}")
                return self.send_file(f)
            now = int(time.time())
            if path == "/api/dashboards":
                return self.send_json([{"uid": u, "title": d.get("title", u), "tags": d.get("tags", [])}
                                       for u, d in sorted(self.viewer.dashboards.items(),
                                                          key=lambda x: x[1].get("title", x[0]))])
            if path.startswith("/api/dashboards/"):
                return self.send_json(self.viewer.dashboard(path[len("/api/dashboards/"):]))
            if path == "/api/query":
                return self.send_json(self.viewer.panel_query(params, now))
            if path == "/api/variable":
                return self.send_json(self.viewer.options(params, now))
            if path == "/api/alerts":
                return self.send_json(self.viewer.alerts(params, now))
            if path == "/healthz":
                return self.send_json({"ok": True})
            raise Refused(404, f"no page {path}")
        except Refused as e:
            if e.status >= 500:
                log.warning("%s: %s", self.path, e)
            self.send_json({"error": str(e)}, e.status)

    def do_POST(self):
        self.send_json({"error": "the viewer is read-only: GET only"}, 405)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def send_json(self, doc, status=200):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_file(self, path):
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)


def main():
    p = argparse.ArgumentParser(
        description="Serve the QoE dashboards and alert rules, rendered from their own files, "
                    "reading ClickHouse read-only. The browser sends a panel id and variable "
                    "values; only the queries in the files run.")
    p.add_argument("--listen", default=os.environ.get("QOE_VIEWER_LISTEN", "127.0.0.1:3000"),
                   help="address:port to serve on (QOE_VIEWER_LISTEN; default 127.0.0.1:3000, loopback only)")
    p.add_argument("--clickhouse-url", default=os.environ.get("QOE_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
                   help="ClickHouse HTTP interface (QOE_CLICKHOUSE_URL)")
    p.add_argument("--clickhouse-database", default=os.environ.get("QOE_CLICKHOUSE_DATABASE", "qoe"),
                   help="database the queries read (QOE_CLICKHOUSE_DATABASE; on the cluster <db>_all)")
    p.add_argument("--clickhouse-user", default=os.environ.get("QOE_CLICKHOUSE_USER", ""),
                   help="ClickHouse user (QOE_CLICKHOUSE_USER; the password only from QOE_CLICKHOUSE_PASSWORD)")
    p.add_argument("--dashboards", default=str(DASHBOARDS / "json"), help="directory of dashboard JSON files")
    p.add_argument("--rules", default=str(grafana.RULES_FILE), help="alert rules file (Grafana provisioning YAML)")
    p.add_argument("--query-timeout", type=int, default=30, help="seconds a query may run (default 30)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s viewer %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen {args.listen!r}: expected address:port")
    for name, f in STATIC.items():
        if not f.exists():
            raise SystemExit(f"{f} is missing: run `scripts/players.sh setup` (installs the chart library)")
    ch = ClickHouse(args.clickhouse_url, args.clickhouse_database, args.clickhouse_user,
                    os.environ.get("QOE_CLICKHOUSE_PASSWORD", ""), args.query_timeout)
    Handler.viewer = Viewer(load_dashboards(args.dashboards), grafana.load_rules(args.rules), ch)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    log.info("serving %d dashboards and %d alert rules on http://%s (ClickHouse %s, database %s)",
             len(Handler.viewer.dashboards), len(Handler.viewer.rules), args.listen,
             args.clickhouse_url, args.clickhouse_database)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
