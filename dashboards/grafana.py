"""What Grafana and its ClickHouse data source do with the provisioned files, in one place.

The alert evaluation (`alert_eval.py`), the dashboard tests and the dashboard viewer
(`viewer/server.py`) all send queries and evaluate alert rules through this module, so the
three agree by construction:

- `expand`: the data source plugin's macros (pkg/macros of grafana-clickhouse-datasource:
  `$__timeFilter(col)`, `$__fromTime`, `$__toTime`, `$__interval_s`) and Grafana's
  `${var:singlequote}` template variables, for a time range in epoch seconds;
- `load_rules`: the provisioned alert rules as the evaluation needs them;
- `grafana_states` / `state_at`: Grafana's alert state transitions (pending period, stale
  series) over a rule's results at successive evaluations.
"""

import pathlib
import re

import yaml

RULES_FILE = pathlib.Path(__file__).resolve().parent / "provisioning" / "alerting" / "qoe-alerts.yaml"


def quote(value):
    """A ClickHouse string literal, as Grafana's `singlequote` format writes it."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand(sql, frm, to, interval_s=60, variables=None):
    """Expands the ClickHouse data source plugin's macros and Grafana's `${var:singlequote}`
    for a time range in epoch seconds, as Grafana sends the query. Every `$` must be expanded:
    a query that still holds one is refused (ValueError), never sent."""
    frm, to, interval_s = int(frm), int(to), int(interval_s)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)",
                 lambda m: f"{m.group(1).strip()} >= toDateTime({frm}) AND "
                           f"{m.group(1).strip()} <= toDateTime({to})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({frm})").replace("$__toTime", f"toDateTime({to})")
    sql = sql.replace("$__interval_s", str(interval_s))

    def var(m):
        values = (variables or {}).get(m.group(1))
        if values is None:
            raise ValueError(f"no value for variable {m.group(1)!r}")
        return ",".join(quote(v) for v in values)

    sql = re.sub(r"\$\{(\w+):singlequote\}", var, sql)
    if "$" in sql:
        raise ValueError(f"unexpanded macro or variable in: {sql}")
    return sql


def parse_duration(s):
    """Grafana's duration strings (`1m`, `1h30m`) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", s))


def load_rules(path=RULES_FILE):
    """The provisioned rules: uid, title, the data source query (`sql`, its relative time
    range `rng`), the pending period and the group's evaluation interval in seconds, and what
    Grafana does on no data and on a query error."""
    doc = yaml.safe_load(pathlib.Path(path).read_text())
    out = []
    for group in doc["groups"]:
        for r in group["rules"]:
            [query] = [d for d in r["data"] if d["refId"] == "A"]
            out.append(dict(uid=r["uid"], title=r["title"], sql=query["model"]["rawSql"],
                            rng=query["relativeTimeRange"], pending=parse_duration(r["for"]),
                            interval=parse_duration(group["interval"]),
                            no_data=r.get("noDataState", "NoData"),
                            exec_err=r.get("execErrState", "Error"),
                            labels=r.get("labels", {}), annotations=r.get("annotations", {})))
    return out


def grafana_states(results, pending, step):
    """Grafana's transitions over a rule's results ({t: {(region, cdn): value}}, every
    evaluation in order): {(region, cdn): {t: (state, value)}}, state 'pending' or 'alerting'
    (normal is absent). A returned instance whose value passes the threshold (B > 0) is
    pending, and alerting once it has been so for the pending period; a series missing from a
    result keeps its state (value None) until it has been missing for two evaluations
    (Grafana's default "missing series evaluations to resolve"), then is normal again."""
    states, live = {}, {}  # live: instance -> [state, starts_at, last_seen]
    for t in sorted(results):
        firing = {inst: v for inst, v in results[t].items() if v is not None and v > 0}
        for inst, value in firing.items():
            s = live.get(inst)
            if s is None:
                s = live[inst] = ["pending", t, t]
            s[2] = t
            if s[0] == "pending" and t - s[1] >= pending:
                s[0] = "alerting"
            states.setdefault(inst, {})[t] = (s[0], value)
        for inst in list(live):
            if inst in firing:
                continue
            if t - live[inst][2] >= 2 * step:
                del live[inst]
            else:
                states.setdefault(inst, {})[t] = (live[inst][0], None)
    return states


def evaluation_times(rule, at):
    """The evaluations whose results decide a rule's state at `at`: enough of them before it
    for the pending period to elapse and a stale series to resolve."""
    step = rule["interval"]
    n = rule["pending"] // step + 3
    return [at - k * step for k in range(n, -1, -1)]


def state_at(rule, results, at):
    """The rule's state at `at` (the last of `results`' times) as Grafana shows it: the rule's
    own state ('firing', 'pending', 'normal', 'nodata' or 'error') and its instances'
    [(instance, state, value)]. `results[t]` is None where the query failed."""
    if results.get(at) is None:
        state = {"Error": "error", "Alerting": "firing", "OK": "normal"}.get(rule["exec_err"], "error")
        return state, []
    clean = {t: r for t, r in results.items() if r is not None}
    states = grafana_states(clean, rule["pending"], rule["interval"])
    instances = []
    for inst, by_t in sorted(states.items()):
        if at in by_t:
            st, value = by_t[at]
            instances.append((inst, "firing" if st == "alerting" else "pending", value))
    if not results[at] and not instances:
        state = {"NoData": "nodata", "Alerting": "firing", "OK": "normal"}.get(rule["no_data"], "nodata")
    elif any(s == "firing" for _, s, _ in instances):
        state = "firing"
    elif instances:
        state = "pending"
    else:
        state = "normal"
    return state, instances
