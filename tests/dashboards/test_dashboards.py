"""Grafana provisioning against real data.

Structure: every file parses, uids are unique, everything uses the provisioned data source,
every template variable used is defined, the generated files are current.

Queries: the simulator plays viewers through the real collector, broker and aggregator into
ClickHouse 18.16 twice, with and without a CDN incident (same seed). Every panel query and
every alert query, with the plugin's macros expanded the way the plugin expands them, runs
there and returns the columns its panel uses; the same SQL runs on current ClickHouse (chDB).
Evaluated every minute through Grafana's state transitions (the rule's pending period, stale
series), each relevant alert rule alerts for the incident slice while the incident is in its
range, no rule alerts for another slice or at another time, and none alerts on the data without
the incident. A single breaching evaluation is pending, not an alert: the rules are built so
that one bad minute does not page (dashboards/README.md).

Cluster: the incident run's tables are copied into a database of the local ClickHouse cluster
(scripts/cluster.sh, migrated by `aggregator migrate --clickhouse-cluster`), spread over both
shards; every panel query and every alert evaluation, unchanged, returns the same through its
Distributed tables (`<database>_all`) as on the single server.
"""

import concurrent.futures
import contextlib
import fcntl
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "dashboards"))
import alert_eval  # noqa: E402  (the alert evaluation's ClickHouse loading)
import grafana  # noqa: E402  (Grafana's macros and alert state transitions)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
DS_UID = "qoe-clickhouse"
CH = os.environ.get("QOE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
BROKERS = os.environ.get("QOE_KAFKA_BROKERS", "127.0.0.1:9092")
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"

SPAN_S = 30 * 60
INCIDENT_START_S, INCIDENT_LEN_S = 14 * 60, 10 * 60
INCIDENT = (f"region=eu-west,cdn=cdn-b,start={INCIDENT_START_S}s,duration={INCIDENT_LEN_S}s,"
            "stalls=6,stall_length=3,startup=4,start_failures=0.3")
INCIDENT_SLICE = ("eu-west", "cdn-b")
# Business refusals of the simulated service (--business-refusal-rate), counted apart.
BUSINESS_CODES = "ENTITLEMENT_DENIED,GEO_BLOCKED,CONCURRENT_STREAM_LIMIT"
# Rules this incident must trip (it does not change playback failures after start).
RELEVANT = {"qoe-rebuffering", "qoe-start-failures", "qoe-ebvs", "qoe-startup-p95"}


def dashboards():
    return {p.name: json.loads(p.read_text()) for p in sorted((DASHBOARDS / "json").glob("*.json"))}


def alert_rules():
    doc = yaml.safe_load((DASHBOARDS / "provisioning" / "alerting" / "qoe-alerts.yaml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def panel_targets():
    for name, d in dashboards().items():
        for p in d["panels"]:
            for t in p["targets"]:
                yield name, d, p, t


# --- macro and variable expansion, as the ClickHouse plugin and Grafana do it -------------

# The plugin's macro expansion lives with the alert evaluation, which sends queries the same way.
expand = alert_eval.expand


def used_variables(sql):
    names = set(re.findall(r"\$\{(\w+)(?::\w+)?\}", sql))
    names |= {n for n in re.findall(r"\$(\w+)", sql) if not n.startswith("__")}
    names |= set(re.findall(r"\[\[(\w+)\]\]", sql))
    return names


# --- structure ------------------------------------------------------------------------------

def test_generated_files_are_current():
    r = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_uids_unique_and_data_source_provisioned():
    ds = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "qoe-clickhouse.yaml").read_text())
    [source] = ds["datasources"]
    assert (source["uid"], source["type"]) == (DS_UID, "grafana-clickhouse-datasource")
    for key in ["host", "port", "username", "defaultDatabase"]:
        assert str(source["jsonData"][key]).startswith("${QOE_"), f"{key} comes from the environment"
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards" / "qoe.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"

    uids = [d["uid"] for d in dashboards().values()]
    assert len(uids) == len(set(uids)) == 6
    for name, d in dashboards().items():
        ids = [p["id"] for p in d["panels"]]
        titles = [p["title"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        assert len(titles) == len(set(titles)), f"{name}: panel titles repeat"
        for p in d["panels"]:
            assert p["datasource"]["uid"] == DS_UID, f"{name}/{p['title']}"
            assert p["targets"], f"{name}/{p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == DS_UID and t["rawSql"].strip()
        for v in d["templating"]["list"]:
            if v["type"] == "textbox":  # free text (the one-view dashboard's view id): no query
                continue
            assert v["datasource"]["uid"] == DS_UID

    rules = alert_rules()
    assert len({r["uid"] for r in rules}) == len(rules) == 6
    for r in rules:
        [query] = [q for q in r["data"] if q["datasourceUid"] != "__expr__"]
        assert query["datasourceUid"] == DS_UID == query["model"]["datasource"]["uid"]
        assert r["condition"] in {q["refId"] for q in r["data"]}
        assert set(r["labels"]) >= {"severity", "metric"}
        assert {"summary", "runbook", "description"} <= set(r["annotations"])
        assert re.fullmatch(r"\d+m", r["for"]), "a pending period"
        # Evaluation lags behind now by more than the aggregator's allowed lateness (30 s).
        assert query["relativeTimeRange"]["to"] >= 60


def test_every_variable_used_is_defined():
    for name, d in dashboards().items():
        defined = {v["name"] for v in d["templating"]["list"]}
        texts = [t["rawSql"] for p in d["panels"] for t in p["targets"]]
        texts += [v["query"] for v in d["templating"]["list"]]
        for text in texts:
            missing = used_variables(text) - defined
            assert not missing, f"{name}: undefined variables {missing}"
    for r in alert_rules():
        for q in r["data"]:
            assert not used_variables(q["model"].get("rawSql", "")), "alert queries use no variables"


def test_expansion_matches_the_plugin():
    sql = "SELECT 1 WHERE $__timeFilter(window_start) AND t < $__toTime AND b = $__interval_s AND r IN (${region:singlequote})"
    assert expand(sql, 10, 20, 30, {"region": ["eu", "o'x"]}) == (
        "SELECT 1 WHERE window_start >= toDateTime(10) AND window_start <= toDateTime(20) "
        "AND t < toDateTime(20) AND b = 30 AND r IN ('eu','o\\'x')")


# --- data -----------------------------------------------------------------------------------

def ch(database, sql, fmt="JSON", url=CH):
    req = urllib.request.Request(f"{url}/?database={database}", data=f"{sql}\nFORMAT {fmt}".encode())
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"ClickHouse rejected the query: {e.read().decode()}\n{sql}") from None
    return json.loads(body) if fmt == "JSON" else body


def ch_exec(database, sql, url=CH, settings=""):
    """A statement with no result (DDL, INSERT ... VALUES); `settings`: `&name=value...`."""
    req = urllib.request.Request(f"{url}/?database={database}{settings}", data=sql.encode())
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"ClickHouse rejected the statement: {e.read().decode()}\n{sql}") from None


_HANDED_OUT = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port():
    """A free loopback port, handed out once per test process: the kernel may give a
    just-released port to the next bind, so calls in a row (a run's collector, aggregator and
    admin listeners) could otherwise get the same port."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def wait_http(url, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} not up within {seconds} s")


def run_scenario(name, incident, start_ms):
    run = uuid.uuid4().hex[:8]
    topic, database = f"test.dash.{name}.{run}", f"test_dash_{name}_{run}"
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "create-topic", topic, "6"], check=True,
                   capture_output=True)
    cport, aport, admin_port = free_port(), free_port(), free_port()
    # The aggregator and the simulator read the business codes from the same variable.
    env = dict(os.environ, RUST_LOG="warn", QOE_BUSINESS_ERROR_CODES=BUSINESS_CODES)
    procs = [
        subprocess.Popen([str(TARGET / "aggregator"), "run", "--kafka-brokers", BROKERS,
                          "--topic", topic, "--group", f"dash-{run}", "--clickhouse-url", CH,
                          "--clickhouse-database", database, "--listen", f"127.0.0.1:{aport}",
                          "--flush-interval-ms", "5000"], env=env),
        subprocess.Popen([str(TARGET / "collector"), "--listen", f"127.0.0.1:{cport}",
                          "--admin-listen", f"127.0.0.1:{admin_port}",
                          "--kafka-brokers", BROKERS, "--topic", topic, "--rate-per-ip", "0",
                          "--rate-events-per-ip", "0", "--rate-per-view", "0", "--rate-global", "0"],
                         env=env),
    ]
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", 60)
        truth_file = pathlib.Path(f"/tmp/qoe-dash-truth-{run}.json")
        args = [str(TARGET / "simulator"), "--url", f"http://127.0.0.1:{cport}", "--seed", "11",
                "--viewers", "3000", "--duration", f"{SPAN_S}s", "--speed", "0",
                "--start-ms", str(start_ms), "--progress-secs", "30", "--connections", "64",
                "--truth-out", str(truth_file), "--business-refusal-rate", "0.001"]
        if incident:
            args += ["--incident", incident]
        sim = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        assert sim.returncode == 0, sim.stderr + sim.stdout
        truth = json.loads(truth_file.read_text())
        truth_file.unlink()
        assert truth["uncertain_events"] == 0 and truth["unacknowledged_events"] == 0
        deadline = time.time() + 300
        while True:
            got = int(ch(database, "SELECT sum(events) + sum(duplicate_events) + sum(late_events) AS n "
                                   "FROM qoe_window_10s")["data"][0]["n"] or 0)
            if got >= truth["acknowledged_events"]:
                break
            assert time.time() < deadline, f"aggregator behind: {got} of {truth['acknowledged_events']}"
            time.sleep(1)
        # A commit reaches its tables one materialized view after another: wait for its end
        # (query ids start with the writer's commit_query_id_prefix).
        while int(ch(database, "SELECT count() AS n FROM system.processes WHERE "
                               f"startsWith(query_id, 'qoe-commit-{topic}-')")["data"][0]["n"]):
            assert time.time() < deadline, "aggregator commits still running"
            time.sleep(0.1)
        return database
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def data():
    """Two databases of simulator data on the same timeline: with and without the incident.
    The two runs are independent (own topic, group, database, ports), so they run side by side."""
    start_ms = (int(time.time()) - SPAN_S - 120) // 60 * 60 * 1000
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        incident = pool.submit(run_scenario, "incident", INCIDENT, start_ms)
        baseline = pool.submit(run_scenario, "baseline", None, start_ms)
        return {"start": start_ms // 1000, "incident": incident.result(),
                "baseline": baseline.result()}


def variable_values(database, d, frm, to):
    out = {}
    for v in d["templating"]["list"]:
        if v["type"] == "textbox":  # the one-view dashboard's view id: the most stalled view
            out[v["name"]] = [ch(database, VIEW_ID_SQL)["data"][0]["view_id"]]
            continue
        rows = ch(database, expand(v["query"], frm, to))
        out[v["name"]] = [list(r.values())[0] for r in rows["data"]]
        assert out[v["name"]], f"variable {v['name']} has no values"
    return out


VIEW_ID_SQL = "SELECT view_id FROM qoe_views ORDER BY stall_ms DESC, view_id LIMIT 1"
NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal)")


def expanded_panels(data):
    frm, to = data["start"], data["start"] + SPAN_S
    for name, d, p, t in panel_targets():
        values = variable_values(data["incident"], d, frm, to)
        yield name, p, t, expand(t["rawSql"], frm, to, 60, values)


def test_panel_queries_return_what_panels_use(data):
    for name, p, t, sql in expanded_panels(data):
        result = ch(data["incident"], sql)
        cols = {c["name"]: c["type"] for c in result["meta"]}
        where = f"{name} / {p['title']}"
        assert result["data"], f"{where}: no rows on simulator data"
        used = [o["matcher"]["options"] for o in p["fieldConfig"]["overrides"]]
        for tr in p.get("transformations", []):
            used += [v for k, v in tr["options"].items() if k.endswith("Field")]
        missing = set(used) - set(cols)
        assert not missing, f"{where}: columns {missing} missing from {list(cols)}"
        if t["format"] == 0:
            names = list(cols)
            assert names[0] == "time" and cols["time"].startswith("DateTime"), f"{where}: {cols}"
            assert any(NUMERIC.match(ty) for ty in list(cols.values())[1:]), f"{where}: no values"
        else:
            assert any(NUMERIC.match(ty) for ty in cols.values()) or p["type"] == "table", where


@pytest.fixture(scope="module")
def chdb_run(data, chdb_session, chdb_migrate, tmp_path_factory):
    """The incident run in current ClickHouse too: chDB database `run` with every migration,
    fed the batches the aggregator committed (their staged rows, moved into `qoe_ingest` as the
    writer's fenced move does), so the materialized views of the current version compute their
    own tables from the same rows."""
    db = data["incident"]
    described = ch(db, "DESCRIBE TABLE qoe_staging")["data"]
    columns = [c["name"] for c in described]
    structure = ", ".join(f"{c['name']} {c['type']}" for c in described).replace("'", "\\'")
    cols = ", ".join(columns)
    rows = ch(db, f"SELECT {cols} FROM qoe_staging WHERE batch_id IN "
                  "(SELECT batch_id FROM qoe_checkpoints)", fmt="TSV")
    assert rows.count("\n") > 100, "the run committed no batches"
    path = tmp_path_factory.mktemp("run") / "staged.tsv"
    path.write_text(rows)
    try:
        chdb_migrate(chdb_session, "run")
        chdb_session.query(f"INSERT INTO qoe_ingest ({cols}) SELECT {cols} "
                           f"FROM file('{path}', 'TSV', '{structure}')")
        yield chdb_session
    finally:
        chdb_session.query("USE qoe")


def as_number(v):
    """A cell as a number, if it is one (64-bit integers are quoted in 18.16's JSON), and the
    unit of its last printed digit (panels round: `round()` may differ by one in that digit
    between versions, e.g. on a half)."""
    if isinstance(v, bool) or v is None:
        return None, None
    text = str(v)
    try:
        number = float(text)
    except ValueError:
        return None, None
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0
    return number, 10.0 ** -decimals


def row_mismatch(old, new):
    """The first difference between two results, matching rows by their non-numeric cells (time,
    slice, ids: ties in an ORDER BY may come in either order) and numbers to the last printed
    digit; None when they agree."""
    def key(row):
        return tuple((k, v) for k, v in sorted(row.items()) if as_number(v)[0] is None)
    by_key = {}
    for row in new:
        by_key.setdefault(key(row), []).append(row)
    if len(old) != len(new):
        return f"{len(old)} rows vs {len(new)}"
    for row in old:
        candidates = by_key.get(key(row), [])
        if not candidates:
            return f"{row} has no counterpart"
        other = candidates.pop(0)
        for k, v in row.items():
            (x, ux), (y, uy) = as_number(v), as_number(other.get(k))
            if x is None or y is None:
                if v != other.get(k):
                    return f"{k}: {v!r} vs {other.get(k)!r} in {row}"
            elif abs(x - y) > max(ux, uy) * 1.0001 + 1e-9 * max(abs(x), abs(y)):
                return f"{k}: {v} vs {other.get(k)} in {row}"
    return None


def test_panel_queries_give_the_same_values_on_current_clickhouse(data, chdb_run):
    """Every panel's query, on the same committed rows, returns the same columns and values on
    the oldest supported server (18.16) and on current ClickHouse (chDB): the dashboards read
    alike on both, materialized views included. (Doubling one region's minute rows in chDB
    makes 18 of the panels differ: measured 2026-12-07, overview, region x CDN and streams.)"""
    for name, p, t, sql in expanded_panels(data):
        where = f"{name} / {p['title']}"
        old = ch(data["incident"], sql)
        new = json.loads(str(chdb_run.query(sql, "JSON")))
        assert [c["name"] for c in new["meta"]] == [c["name"] for c in old["meta"]], where
        assert old["data"], f"{where}: no rows"
        mismatch = row_mismatch(old["data"], new["data"])
        assert mismatch is None, f"{where}: 18.16 and current ClickHouse differ: {mismatch}"


def evaluations(data, database, rule, url=CH):
    """Firing slices of one rule at each minute of the run: {t: [(region, cdn, value)]}."""
    [query] = [q for q in rule["data"] if q["datasourceUid"] == DS_UID]
    rng = query["relativeTimeRange"]
    fired = {}
    for t in range(data["start"] + 12 * 60, data["start"] + SPAN_S + rng["to"] + 60, 60):
        result = ch(database, expand(query["model"]["rawSql"], t - rng["from"], t - rng["to"]), url=url)
        assert [c["name"] for c in result["meta"]] == ["region", "cdn", "value"]
        rows = [(r["region"], r["cdn"], float(r["value"])) for r in result["data"]]
        if rows:
            fired[t] = rows
    return fired


def alert_states(data, database, rule):
    """The rule's alert instances over the run, through Grafana's transitions (pending period,
    stale series) from its query's results at every minute."""
    fired = evaluations(data, database, rule)
    [query] = [q for q in rule["data"] if q["datasourceUid"] == DS_UID]
    rng = query["relativeTimeRange"]
    times = range(data["start"] + 12 * 60, data["start"] + SPAN_S + rng["to"] + 60, 60)
    results = {t: {r[:2]: r[2] for r in fired.get(t, [])} for t in times}
    return alert_eval.grafana_states(results, alert_eval.parse_duration(rule["for"]), 60)


def test_alerts_fire_for_the_incident_slice_during_the_incident_only(data):
    inc_from = data["start"] + INCIDENT_START_S
    inc_to = inc_from + INCIDENT_LEN_S
    for rule in alert_rules():
        [query] = [q for q in rule["data"] if q["datasourceUid"] == DS_UID]
        rng = query["relativeTimeRange"]
        alerts = alert_eval.alerting(alert_states(data, data["incident"], rule))
        for t, inst in alerts:
            assert inst == INCIDENT_SLICE, f"{rule['uid']} alerted for {inst} at +{t - data['start']} s"
            # Alerting while the range holds incident minutes, or one evaluation after (a
            # series missing once keeps its state).
            window = (t - 60 - rng["from"], t - rng["to"])
            assert window[0] < inc_to and window[1] > inc_from, (
                f"{rule['uid']} alerted outside the incident at +{t - data['start']} s")
        if rule["uid"] in RELEVANT:
            assert alerts, f"{rule['uid']} never alerted during the incident"
        else:
            assert not alerts, f"{rule['uid']} alerted on an incident that does not concern it"


def test_alerts_stay_quiet_without_the_incident(data):
    for rule in alert_rules():
        alerts = alert_eval.alerting(alert_states(data, data["baseline"], rule))
        assert not alerts, f"{rule['uid']} alerted without an incident: {alerts}"


def test_cdn_request_error_rule_fires_for_the_failing_cdn_only(data):
    """The simulator's beacons carry no request reports (CMCD players send them), so this rule
    is proven on request rows written for it: in the hour before, two CDNs of a region answer
    0.5% of requests with errors; then one of them fails 20% for 10 minutes."""
    [rule] = [r for r in alert_rules() if r["uid"] == "qoe-cdn-request-errors"]
    [query] = [q for q in rule["data"] if q["datasourceUid"] == DS_UID]
    rng = query["relativeTimeRange"]
    database = f"test_dash_requests_{uuid.uuid4().hex[:8]}"
    ch_exec("default", f"CREATE DATABASE {database}")
    ch_exec(database, f"CREATE TABLE qoe_window_1m AS {data['incident']}.qoe_window_1m")
    t = data["start"] + 3 * 3600 // 2  # evaluated at this instant
    rows = []
    for minute in range(t - 3600 - rng["from"], t - rng["to"], 60):
        minute -= minute % 60
        current = minute >= t - rng["from"]
        for cdn in ("cdn-a", "cdn-b"):
            errors = 200 if current and cdn == "cdn-b" else 5
            rows.append(f"({minute}, 'eu-west', '{cdn}', 1000, {errors})")
    ch_exec(database, "INSERT INTO qoe_window_1m (window_start, region, cdn, cdn_requests, "
                      "cdn_request_errors) VALUES " + ", ".join(rows))
    result = ch(database, expand(query["model"]["rawSql"], t - rng["from"], t - rng["to"]))
    fired = [(r["region"], r["cdn"], float(r["value"])) for r in result["data"]]
    assert [f[:2] for f in fired] == [("eu-west", "cdn-b")], fired
    assert 19 <= fired[0][2] <= 21, fired
    # One hour later, with nothing new, the rule is quiet (no current traffic).
    later = t + 3600
    result = ch(database, expand(query["model"]["rawSql"], later - rng["from"], later - rng["to"]))
    assert not result["data"]


def test_alert_queries_give_the_same_values_on_current_clickhouse(data, chdb_run):
    """Every alert rule's query, over the incident's half hour, fires for the same slices with
    the same values on 18.16 and on current ClickHouse."""
    for rule in alert_rules():
        [query] = [q for q in rule["data"] if q["datasourceUid"] == DS_UID]
        for minute in range(0, SPAN_S // 60 - 5, 5):
            to = data["start"] + 60 * (minute + 5)
            sql = expand(query["model"]["rawSql"], to - 600, to)
            old = ch(data["incident"], sql)
            new = json.loads(str(chdb_run.query(sql, "JSON")))
            assert [c["name"] for c in new["meta"]] == ["region", "cdn", "value"], rule["uid"]
            mismatch = row_mismatch(old["data"], new["data"])
            assert mismatch is None, f"{rule['uid']} at {to}: {mismatch}"


# --- the same on a cluster ------------------------------------------------------------------

def cluster_servers():
    out = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "urls"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return out, [u for shard in out.split(";") for u in shard.split(",")]


@pytest.fixture(scope="module")
def cluster_lock():
    """The local cluster, taken from the Rust cluster tests (which kill its servers and run
    beside this suite in `make test`): the lock file they take too, held for this module."""
    path = ROOT / ".stack" / "cluster" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # A ZooKeeper outage of the cluster tests can leave a server's DDL worker stopped.
            subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "heal"], check=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def cluster_copy(data, cluster_lock):
    """The incident run's tables in a cluster database, inserted through its Distributed tables
    (rows spread over both shards), every replica caught up. Returns (server, read database)."""
    spec, servers = cluster_servers()
    database = f"test_dash_cluster_{uuid.uuid4().hex[:8]}"
    migrate = [str(TARGET / "aggregator"), "migrate", "--clickhouse-cluster", "qoe",
               "--clickhouse-shards", spec, "--clickhouse-database", database]
    migrated = subprocess.run(migrate, capture_output=True, text=True,
                              env=dict(os.environ, RUST_LOG="warn"))
    if migrated.returncode != 0:
        # Once more after a heal: ClickHouse 18.16's distributed DDL can stall on a server
        # just after the cluster tests' outages (the migration is idempotent). The first
        # failure stays in the log.
        print(f"cluster migration failed, healing and retrying once:\n{migrated.stderr}",
              file=sys.stderr)
        subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "heal"], check=True)
        migrated = subprocess.run(migrate, capture_output=True, text=True,
                                  env=dict(os.environ, RUST_LOG="warn"))
    assert migrated.returncode == 0, f"cluster migration failed:\n{migrated.stderr}\n{migrated.stdout}"
    read = f"{database}_all"
    seed = servers[0]
    tables = [r["name"] for r in ch(read, f"SELECT name FROM system.tables WHERE database = '{read}' "
                                          "AND engine = 'Distributed'", url=seed)["data"]]
    assert len(tables) >= 6, tables
    native = CH.rsplit(":", 1)[0].split("//")[1] + ":" + os.environ.get("QOE_CH_TCP_PORT", "9000")
    for t in tables:
        cols = ", ".join(r["name"] for r in ch(data["incident"], f"SELECT name FROM system.columns WHERE "
                                               f"database = '{data['incident']}' AND table = '{t}'")["data"])
        # Synchronous, as a setting of the request: a SETTINGS clause of INSERT ... SELECT
        # reaches only the SELECT on 18.16, and the Distributed table would then queue the
        # rows and send them to the shards in the background, after the replicas were synced.
        ch_exec(read, f"INSERT INTO {read}.{t} ({cols}) SELECT {cols} FROM "
                      f"remote('{native}', {data['incident']}, {t})",
                url=seed, settings="&insert_distributed_sync=1")
    for url in servers:
        for t in tables:
            ch_exec(database, f"SYSTEM SYNC REPLICA {database}.{t}", url=url)
    shard_rows = [int(ch(database, "SELECT count() AS n FROM qoe_window_10s", url=u)["data"][0]["n"])
                  for u in servers]
    assert shard_rows[0] > 0 and shard_rows[2] > 0, f"rows on both shards: {shard_rows}"
    events = [int(ch(db, "SELECT sum(events) AS n FROM qoe_window_1m", url=u)["data"][0]["n"])
              for db, u in ((data["incident"], CH), (read, seed))]
    assert events[0] == events[1], f"copied completely: {events}"
    return seed, read


def canonical(rows):
    """Result rows comparable across servers: floats to 9 significant digits (sums of floats
    may be added in another order on a cluster), rows sorted."""
    def value(v):
        if isinstance(v, float):
            return float(f"{v:.9g}")
        if isinstance(v, str):
            try:
                return float(f"{float(v):.9g}") if "." in v or "e" in v else v
            except ValueError:
                return v
        return v
    return sorted(json.dumps({k: value(v) for k, v in r.items()}, sort_keys=True) for r in rows)


def test_panels_and_alerts_read_the_same_through_a_cluster(data, cluster_copy):
    server, read = cluster_copy
    for name, p, t, sql in expanded_panels(data):
        single = ch(data["incident"], sql)
        cluster = ch(read, sql, url=server)
        assert [c["name"] for c in cluster["meta"]] == [c["name"] for c in single["meta"]], name
        assert canonical(cluster["data"]) == canonical(single["data"]), f"{name} / {p['title']}"
    for rule in alert_rules():
        def rounded(fired):
            return {t: sorted((r, c, float(f"{v:.9g}")) for r, c, v in rows) for t, rows in fired.items()}
        single = rounded(evaluations(data, data["incident"], rule))
        if rule["uid"] in RELEVANT:
            assert single, f"{rule['uid']}: no breaching evaluation to compare"
        assert rounded(evaluations(data, read, rule, url=server)) == single, rule["uid"]


# --- the dashboard viewer, in Chromium --------------------------------------------------------

VIEWER = DASHBOARDS / "viewer" / "server.py"
SCREENSHOTS = pathlib.Path(os.environ.get("QOE_SCREENSHOTS_DIR", TARGET.parent / "viewer-screenshots"))
UNKNOWN_PANEL = {"uid": "test-unknown-panel", "title": "Test: a panel type the viewer does not draw",
                 "tags": [], "templating": {"list": []}, "time": {"from": "now-1h", "to": "now"},
                 "panels": [{"id": 1, "type": "piechart", "title": "A pie", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 6},
                             "targets": [{"refId": "A", "rawSql": "SELECT 1 AS n"}]}]}


def get(url):
    """(status, JSON body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@contextlib.contextmanager
def viewer_on(database, url=CH, extra_dashboard=None, tmp=None):
    """The viewer serving the dashboard files (and `extra_dashboard`) on `database`."""
    directory = DASHBOARDS / "json"
    if extra_dashboard:
        directory = tmp / "dashboards"
        shutil.copytree(DASHBOARDS / "json", directory)
        (directory / f"{extra_dashboard['uid']}.json").write_text(json.dumps(extra_dashboard))
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(VIEWER), "--listen", f"127.0.0.1:{port}",
                             "--clickhouse-url", url, "--clickhouse-database", database,
                             "--dashboards", str(directory)], stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def alerts_at(data):
    return data["start"] + INCIDENT_START_S + INCIDENT_LEN_S


@pytest.fixture(scope="module")
def viewer(data, tmp_path_factory):
    with viewer_on(data["incident"], extra_dashboard=UNKNOWN_PANEL, tmp=tmp_path_factory.mktemp("viewer")) as url:
        yield url


@pytest.fixture(scope="module")
def browsed(data, viewer, tmp_path_factory):
    """What Chromium showed of every dashboard, a variable and a range change, the alerts page
    (tests/players/viewer.mjs)."""
    out = tmp_path_factory.mktemp("browsed") / "viewer.json"
    run = subprocess.run(["node", str(ROOT / "tests" / "players" / "viewer.mjs"), "--viewer", viewer,
                          "--from", str(data["start"]), "--to", str(data["start"] + SPAN_S),
                          "--alerts-at", str(alerts_at(data)), "--out", str(out),
                          "--screenshots", str(SCREENSHOTS)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr + run.stdout
    return json.loads(out.read_text())


def direct(data, uid, panel_id, frm, to, interval, fixed=None):
    """A panel's rows, its query run straight on ClickHouse with every variable on All."""
    d = dashboards()[f"{uid}.json"]
    [panel] = [p for p in d["panels"] if p["id"] == panel_id]
    values = variable_values(data["incident"], d, frm, to)
    values.update(fixed or {})
    return ch(data["incident"], expand(panel["targets"][0]["rawSql"], frm, to, interval, values))["data"]


def test_viewer_draws_every_panel_of_every_dashboard_without_a_console_error(browsed):
    assert browsed["errors"] == []
    files = {d["uid"] for d in dashboards().values()}
    assert files | {UNKNOWN_PANEL["uid"]} == set(browsed["dashboards"])
    for uid, panels in browsed["dashboards"].items():
        if uid == UNKNOWN_PANEL["uid"]:
            assert [p["state"] for p in panels] == ["unsupported"]
            continue
        in_file = {p["id"] for p in dashboards()[f"{uid}.json"]["panels"]}
        assert {p["id"] for p in panels} == in_file, uid
        for p in panels:
            assert p["state"] == "done" and p["rows"] > 0, f"{uid} / {p['title']}: {p}"
    assert browsed["unknown"] and "piechart" in browsed["unknown"][0]
    # The one-view dashboard opened from a view id link, with that view's row.
    assert f"var-view_id={browsed['view']['id']}" in browsed["view"]["url"]
    assert browsed["view"]["summary"][0] == browsed["view"]["id"]
    for name in ("viewer-overview.png", "viewer-region-cdn.png", "viewer-alerts.png"):
        assert (SCREENSHOTS / name).stat().st_size > 20000, name


def test_viewer_numbers_equal_the_panel_queries(data, browsed):
    frm, to = data["start"], data["start"] + SPAN_S
    # A table: the region x CDN rebuffering matrix, cell by cell, as drawn.
    rows = direct(data, "qoe-region-cdn", 2, frm, to, 60)
    want = {(r["region"], r["cdn"]): r["rebuffering_pct"] for r in rows}
    header = [h.strip() for h in browsed["numbers"]["table"]["header"]]
    got = {}
    for row in browsed["numbers"]["table"]["rows"]:
        for cdn, cell in zip(header[1:], row[1:]):
            if cell["value"] != "":
                got[(row[0]["value"], cdn)] = float(cell["value"])
                assert float(cell["text"].rstrip("%")) == float(cell["value"]), cell
    assert got == {k: float(v) for k, v in want.items() if v is not None}
    assert any(c["background"] for row in browsed["numbers"]["table"]["rows"] for c in row[1:]), "cells coloured"
    # Stats: the view drill-down's counts (shown as they are below 1000, "1.234 K" above).
    stats = browsed["numbers"]["stat"]
    assert [s["panel"] for s in stats] == [1, 2, 3, 4]
    for s in stats:
        [row] = direct(data, "qoe-views", s["panel"], frm, to, 60)
        want = float(row[s["field"]])
        assert float(s["value"]) == want, s
        shown = float(s["text"][:-2]) * 1000 if s["text"].endswith(" K") else float(s["text"])
        assert abs(shown - want) <= (0.5 if s["text"].endswith(" K") else 0), s
    assert sum(float(s["value"]) > 0 for s in stats) >= 3, stats
    # A time series: the overview's rebuffering ratio, its legend's mean, max and last.
    rows = direct(data, "qoe-overview", 5, frm, to, browsed["numbers"]["timeseries_interval"])
    values = [float(r["rebuffering_pct"]) for r in rows if r["rebuffering_pct"] is not None]
    [series] = browsed["numbers"]["timeseries"]
    cells = {c["calc"]: c for c in series["cells"]}
    assert float(cells["lastNotNull"]["value"]) == values[-1]
    assert float(cells["max"]["value"]) == max(values)
    assert abs(float(cells["mean"]["value"]) - sum(values) / len(values)) < 1e-9
    assert float(cells["max"]["text"].rstrip("%")) == max(values)


def test_viewer_requeries_on_a_variable_and_a_time_range(data, browsed):
    var = browsed["changes"]["variable"]
    assert var["queries"] and all(f"var-region={var['region']}" in q for q in var["queries"])
    assert {row[0]["value"] for row in var["matrix"]} == {var["region"]}
    rng = browsed["changes"]["range"]
    assert rng["queries"] and all(f"from={rng['from']}" in q for q in rng["queries"])
    rows = direct(data, "qoe-region-cdn", 2, rng["from"], data["start"] + SPAN_S, 60,
                  fixed={"region": [var["region"]]})
    assert [row[0]["value"] for row in rng["matrix"]] == [var["region"]]
    got = sorted(float(c["value"]) for c in rng["matrix"][0][1:] if c["value"] != "")
    assert got == sorted(float(r["rebuffering_pct"]) for r in rows if r["rebuffering_pct"] is not None)
    before = sorted(float(c["value"]) for c in var["matrix"][0][1:] if c["value"] != "")
    assert got != before, "the new range's figures differ from the whole run's"


def test_viewer_alert_states_are_the_evaluations(data, browsed):
    """The alerts page at the incident's end shows what Grafana's transitions give over the
    rules' evaluations (grafana.state_at), and the incident's rules fire for its slice."""
    at = alerts_at(data)
    shown = {r["uid"]: r for r in browsed["alerts"]}
    assert set(shown) == {r["uid"] for r in alert_rules()}
    for rule in grafana.load_rules():
        results = {}
        for t in grafana.evaluation_times(rule, at):
            sql = grafana.expand(rule["sql"], t - rule["rng"]["from"], t - rule["rng"]["to"], rule["interval"])
            results[t] = {(r["region"], r["cdn"]): float(r["value"]) for r in ch(data["incident"], sql)["data"]}
        state, instances = grafana.state_at(rule, results, at)
        assert shown[rule["uid"]]["state"] == state, rule["uid"]
        assert len(shown[rule["uid"]]["instances"]) == len(instances), rule["uid"]
        for (region, cdn), st, _ in instances:
            assert any(f"{region} x {cdn}" in i and i.startswith(st) for i in shown[rule["uid"]]["instances"])
    firing = {u for u, r in shown.items() if r["state"] == "firing"}
    assert firing & RELEVANT, f"no incident rule firing at the incident's end: {shown}"
    for uid in firing:
        assert all(" x ".join(INCIDENT_SLICE) in i for i in shown[uid]["instances"] if i.startswith("firing"))


def test_viewer_refuses_anything_but_a_panel_of_the_files(data, viewer):
    q = f"{viewer}/api/query?dashboard=qoe-overview&from={data['start']}&to={data['start'] + SPAN_S}"
    ok, body = get(f"{q}&panel=5")
    assert ok == 200 and body["results"][0]["rows"], body
    for url, status, words in [
        (f"{q}&panel=5&sql=SELECT%201", 400, "only the queries of the dashboard files"),
        (f"{q}&panel=5&query=SELECT%201", 400, "only the queries of the dashboard files"),
        (f"{q}&panel=5&database=system", 400, "unknown parameter database"),
        (f"{q}&panel=999", 404, "no panel '999'"),
        (f"{viewer}/api/query?dashboard=nope&panel=1", 404, "no dashboard 'nope'"),
        (f"{q}&panel=5&var-nope=x", 400, "no variable nope"),
        (f"{viewer}/api/query?dashboard=qoe-overview&panel=5&from=yesterday", 400, "expected epoch seconds"),
        (f"{q.replace('from=', 'x=')}&panel=5&from=1&to=99999999", 400, "unknown parameter x"),
        (f"{viewer}/api/query?dashboard=qoe-overview&panel=5&from=1&to=99999999", 400, "time range over"),
        (f"{viewer}/static/..%2Fserver.py", 404, "no file"),
        (f"{viewer}/api/variable?dashboard=qoe-overview&name=nope", 400, "no variable 'nope'"),
    ]:
        status_got, body = get(url)
        assert status_got == status and words in body.get("error", ""), (url, status_got, body)
    # A value is a value, never SQL: quoted, so a hostile one matches nothing.
    status_got, body = get(f"{q}&panel=5&var-region=x')%20OR%201%3D1%20--")
    assert status_got == 200 and body["results"][0]["rows"] == [], body
    req = urllib.request.Request(f"{q}&panel=5", data=b"SELECT 1", method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("POST accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405


def test_viewer_reads_the_same_through_a_cluster(data, viewer, cluster_copy):
    """Every panel as the viewer serves it: the same rows from the cluster's Distributed
    tables as from the single server."""
    server, read = cluster_copy
    frm, to = data["start"], data["start"] + SPAN_S
    view_id = ch(data["incident"], VIEW_ID_SQL)["data"][0]["view_id"]
    with viewer_on(read, url=server) as on_cluster:
        for d in dashboards().values():
            # Ages against now() (pipeline freshness) move between the two reads.
            for p in [p for p in d["panels"] if "now()" not in p["targets"][0]["rawSql"]]:
                q = (f"/api/query?dashboard={d['uid']}&panel={p['id']}&from={frm}&to={to}&interval=60"
                     f"&var-view_id={urllib.parse.quote(view_id)}" if d["uid"] == "qoe-view" else
                     f"/api/query?dashboard={d['uid']}&panel={p['id']}&from={frm}&to={to}&interval=60")
                single, cluster = get(viewer + q), get(on_cluster + q)
                assert single[0] == cluster[0] == 200, (q, single, cluster)

                def rows(body):
                    r = body["results"][0]
                    return canonical([dict(zip([c["name"] for c in r["columns"]], row)) for row in r["rows"]])
                assert rows(cluster[1]) == rows(single[1]), f"{d['uid']} / {p['title']}"
