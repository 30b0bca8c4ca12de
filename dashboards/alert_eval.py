#!/usr/bin/env python3
"""Alert quality, measured: the provisioned alert rules evaluated over a simulated day.

The simulator runs offline (no collector; every event counts once, which is what the
pipeline's rows equal, as the end-to-end tests prove) with a diurnal audience (night trough
10 % of peak, busier networks at peak), small and big slices, and incidents of several kinds,
sizes and lengths at known times. Its per-minute region x CDN rows are loaded into
`qoe_window_1m` of a scratch database on a real ClickHouse. Every minute of simulated time,
each rule of `provisioning/alerting/qoe-alerts.yaml` is evaluated the way Grafana does it: its
query with the data source's macros expanded for the rule's relative time range, one alert
instance per returned (region, cdn), the pending period (`for`) applied, and a series missing
for two evaluations resolved (Grafana's stale-series rule).

Output: per rule and incident, detected or not and the delay from incident start; false
alert-minutes (alerting outside any incident's slice and time) per simulated day; alerts on
slices below the rule's traffic guard; optionally a PNG of one incident.

    .stack/venv/bin/python dashboards/alert_eval.py                 # the day with incidents (about 10 minutes)
    .stack/venv/bin/python dashboards/alert_eval.py --plan healthy  # the same day without them
    .stack/venv/bin/python dashboards/alert_eval.py --plan reduced  # the form `make test` runs

Needs a ClickHouse at QOE_CLICKHOUSE_URL (`make stack`) and the built `simulator` and
`aggregator` binaries (`cargo build --release` or `cargo build`).
"""

import argparse
import calendar
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid


HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import generate  # noqa: E402  (the rules' thresholds and guards, as generated)
from grafana import expand, grafana_states, load_rules, parse_duration  # noqa: E402,F401

CH = os.environ.get("QOE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
DAY0 = calendar.timegm((2026, 1, 12, 0, 0, 0))  # a Monday, 00:00 UTC
WARMUP_S = 3600  # simulated before the first evaluation: the rules compare with the hour before
PEAK_HOUR = 20

# Slices by share of the peak audience (population.rs, with the long tail): the incident
# slices of each kind, about 1 % and 3-6 % of the audience, and the biggest.
KIND_SLICES = {
    "rebuffering": [("af-south", "cdn-a"), ("sa-east", "cdn-c")],
    "start_failures": [("oc-east", "cdn-a"), ("ap-south", "cdn-c")],
    "startup": [("oc-east", "cdn-b"), ("eu-west", "cdn-c")],
}
BIG_SLICE = ("us-east", "cdn-a")
SIZES = {
    "rebuffering": [2, 3, 5],
    "start_failures": [3, 10, 25],
    "startup": [1.5, 2, 3],
}
TARGET = {"rebuffering": 3, "start_failures": 10, "startup": 2}
TARGET_MINUTES = 10
# Which rule is meant to catch which kind of incident (others may fire too: slow starts make
# viewers give up, so the EBVS rule may catch a startup incident; that is not a false alert).
KIND_RULE = {"rebuffering": "qoe-rebuffering", "start_failures": "qoe-start-failures",
             "startup": "qoe-startup-p95"}


class Incident:
    def __init__(self, kind, size, minutes, region, cdn, start_s, when):
        self.kind, self.size, self.minutes = kind, size, minutes
        self.region, self.cdn, self.start_s, self.when = region, cdn, start_s, when

    @property
    def end_s(self):
        return self.start_s + 60 * self.minutes

    def label(self):
        unit = {"rebuffering": "x", "start_failures": "+", "startup": "x"}[self.kind]
        tail = " pts" if self.kind == "start_failures" else ""
        return f"{self.kind} {unit}{self.size:g}{tail} {self.minutes} min"

    def flag(self, sim_start_s):
        setting = {"rebuffering": f"stalls={self.size}",
                   "start_failures": f"start_failure_points={self.size}",
                   "startup": f"startup={self.size}"}[self.kind]
        return (f"region={self.region},cdn={self.cdn},start={self.start_s - sim_start_s}s,"
                f"duration={60 * self.minutes}s,{setting}")


def plan(name):
    """(first evaluation, last evaluation, incidents), epoch seconds."""
    incidents = []
    if name == "full":
        first, last = DAY0, DAY0 + 86400
        # Peak (16:00-24:00, 78-100 % of the peak audience): every size and length of each
        # kind, in its two slices, 96 minutes apart (an incident must not sit in the hour the
        # next one is compared with).
        for kind, slices in KIND_SLICES.items():
            combos = [(size, minutes) for size in SIZES[kind] for minutes in (3, 10, 30)]
            # The target-size incidents in the ~1 % slice, the rest spread over both.
            combos.sort(key=lambda c: (c[0] != TARGET[kind], c))
            slots = [(s, k) for s in slices for k in range(5)]
            for (size, minutes), (sl, k) in zip(combos, slots):
                start = DAY0 + 16 * 3600 + 5 * 60 + k * 96 * 60
                incidents.append(Incident(kind, size, minutes, *sl, start, "peak"))
        # The trough (06:30-10:30, 10-20 % of the peak): the target size for 10 minutes, in the
        # biggest slice and in the ~1 % slice (a few dozen viewers: below most traffic guards).
        for i, kind in enumerate(KIND_SLICES):
            incidents.append(Incident(kind, TARGET[kind], 10, *BIG_SLICE,
                                      DAY0 + 6 * 3600 + 30 * 60 + i * 96 * 60, "night"))
            incidents.append(Incident(kind, TARGET[kind], 10, *KIND_SLICES[kind][0],
                                      DAY0 + 7 * 3600 + i * 96 * 60, "night"))
    elif name == "healthy":
        first, last = DAY0, DAY0 + 86400
    elif name == "reduced":
        # Three hours of the evening, from 16:00: the target size in each kind's ~1 % slice, then
        # the biggest size for 3 minutes in its bigger slice.
        first, last = DAY0 + 16 * 3600, DAY0 + 19 * 3600
        for kind, slices in KIND_SLICES.items():
            incidents.append(Incident(kind, TARGET[kind], TARGET_MINUTES, *slices[0],
                                      first + 20 * 60, "peak"))
            incidents.append(Incident(kind, SIZES[kind][-1], 3, *slices[1],
                                      first + 120 * 60, "peak"))
    else:
        raise SystemExit(f"unknown plan {name!r} (full, healthy, reduced)")
    return first, last, incidents


# --- ClickHouse ------------------------------------------------------------------------------

def ch(sql, database=None, data=None, fmt=None):
    sql += f" FORMAT {fmt}" if fmt else ""
    params = {"database": database} if database else {}
    if data is None:  # the statement as the body: a POST, which may write
        data = sql.encode()
    else:  # an INSERT: the statement in the URL, its rows as the body
        params["query"] = sql
    req = urllib.request.Request(f"{CH}/?{urllib.parse.urlencode(params)}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"ClickHouse: {e.read().decode()[:2000]}\nquery: {sql[:2000]}") from None


def binary(name):
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = [p for p in (target / "release" / name, target / "debug" / name) if p.exists()]
    if built:  # the latest build
        return str(max(built, key=lambda p: p.stat().st_mtime))
    raise SystemExit(f"no {name} binary under {target}: run `cargo build --release` first")


def load(first, last, incidents, viewers, seed, database, rows_path):
    """Simulates the plan offline and loads its rows into `database`."""
    sim_start = first - WARMUP_S
    cmd = [binary("simulator"), "--offline-rows", str(rows_path), "--audience", "diurnal",
           "--peak-hour", str(PEAK_HOUR), "--trough", "0.1", "--long-tail",
           "--viewers", str(viewers), "--seed", str(seed), "--run-id", f"eval{seed}",
           "--start-ms", str(sim_start * 1000), "--duration", f"{last - sim_start}s",
           "--window-secs", "60", "--progress-secs", "0"]
    for inc in incidents:
        cmd += ["--incident", inc.flag(sim_start)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    sim_s = time.monotonic() - t0
    subprocess.run([binary("aggregator"), "migrate", "--clickhouse-url", CH,
                    "--clickhouse-database", database], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    ch("INSERT INTO qoe_window_1m FORMAT JSONEachRow", database, data=rows_path.read_bytes())
    return sim_s


# --- Grafana's evaluation ----------------------------------------------------------------------

def rules():
    return load_rules()


def evaluate(rule, database, first, last):
    """Alert state per instance and evaluation from `first` to `last`, the rule's query run on
    `database` at every evaluation: see `grafana_states`."""
    step = rule["interval"]
    times = list(range(first, last + 1, step))

    def run(t):
        sql = expand(rule["sql"], t - rule["rng"]["from"], t - rule["rng"]["to"], step)
        rows = ch(sql, database, fmt="JSONCompact")
        return t, {(r[0], r[1]): float(r[2]) for r in json.loads(rows)["data"]}

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(run, times))
    return grafana_states(results, rule["pending"], step)


def alerting(states):
    """(t, instance) of every alerting evaluation."""
    return sorted((t, inst) for inst, by_t in states.items()
                  for t, (state, _) in by_t.items() if state == "alerting")


def attribute(rule, states, incidents, first, last):
    """Detection per incident and false alert-minutes for one rule."""
    lag = rule["rng"]["to"]
    span = rule["rng"]["from"] - rule["rng"]["to"]
    # An incident owns its slice's alerts from its start until its minutes have left the
    # rule's current range (plus the range's lag and the two evaluations a stale series keeps).
    tail = span + lag + 2 * rule["interval"]
    owned = [(inc, inc.start_s, inc.end_s + tail) for inc in incidents]
    detections = {}
    false_minutes, false_slices = 0, set()
    for inst, by_t in states.items():
        for t, (state, _) in sorted(by_t.items()):
            if state != "alerting":
                continue
            owners = [inc for inc, a, b in owned
                      if (inc.region, inc.cdn) == inst and a <= t < b]
            if owners:
                for inc in owners:
                    detections.setdefault(id(inc), t)
            else:
                false_minutes += rule["interval"] / 60
                false_slices.add(inst)
    return detections, false_minutes, sorted(false_slices)


def guard_breaches(rule_spec, rule, states, database):
    """Alerting evaluations on slices whose traffic in the rule's current range is below the
    rule's own guard, counted from the stored rows independently of the rule's SQL (one query
    for the guard's per-minute values, summed here). Only evaluations whose result holds the
    slice count: the one evaluation a missing series keeps its state (Grafana's stale-series
    rule) is the slice leaving, not a breach."""
    expr, minimum = rule_spec["guard"]
    per_minute = {}
    rows = ch(f"SELECT toUInt32(window_start), region, cdn, {expr} FROM qoe_window_1m "
              "GROUP BY window_start, region, cdn", database, fmt="JSONCompact")
    for minute, region, cdn, value in json.loads(rows)["data"]:
        per_minute[(region, cdn, int(minute))] = float(value)
    n = 0
    for (region, cdn), by_t in states.items():
        for t, (state, value) in by_t.items():
            if state != "alerting" or value is None:
                continue
            frm, to = t - rule["rng"]["from"], t - rule["rng"]["to"]
            first_minute = -(-frm // 60) * 60
            got = sum(per_minute.get((region, cdn, m), 0.0)
                      for m in range(first_minute, to - 60 + 1, 60))
            n += got < minimum
    return n


def slice_share(database, region, cdn, t0, t1):
    """The slice's share of all viewing time over [t0, t1)."""
    got = ch(f"SELECT sumIf(playing_ms + stall_ms, region = '{region}' AND cdn = '{cdn}') / "
             f"sum(playing_ms + stall_ms), sumIf(playing_ms + stall_ms, region = '{region}' AND "
             f"cdn = '{cdn}') / 60000 / {max((t1 - t0) / 60, 1)} FROM qoe_window_1m WHERE "
             f"window_start >= toDateTime({t0}) AND window_start < toDateTime({t1})",
             database, fmt="TSV").split()
    return float(got[0]), float(got[1])


def clock(t):
    return time.strftime("%H:%M", time.gmtime(t))


def report(first, last, incidents, evaluated, database, by_uid):
    """The measured table (markdown) and a summary dict for assertions."""
    days = (last - first) / 86400
    lines = [f"Simulated {clock(first)}-{clock(last)} UTC ({(last - first) / 3600:g} h), "
             f"{len(incidents)} incidents, every rule evaluated every minute.", "",
             "| rule | pending | false alert-minutes / day | slices with false alerts | "
             "alerts below the traffic guard |", "|---|---|---|---|---|"]
    summary = {"false_minutes": {}, "below_guard": {}, "incidents": []}
    for uid, (states, (det, false_min, false_slices), below) in evaluated.items():
        r = by_uid[uid]
        lines.append(f"| {uid} | {r['pending'] // 60} min | {false_min / days:g} | "
                     f"{', '.join(f'{a} x {b}' for a, b in false_slices) or '-'} | {below} |")
        summary["false_minutes"][uid] = false_min
        summary["below_guard"][uid] = below
    lines += ["", "Delay: minutes from incident start to the first alerting evaluation. The first "
                  "evaluation whose range holds a minute of the incident comes "
                  "(60 s + the range's lag) after its start; 'in time' means alerting at most "
                  "the pending period plus 2 evaluations after that.", "",
              "| incident | slice | share of viewing | viewers | when | rule | detected | "
              "delay (min) | in time | other rules alerting |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for inc in sorted(incidents, key=lambda i: (i.kind, i.when, i.size, i.minutes)):
        uid = KIND_RULE[inc.kind]
        det = evaluated[uid][1][0].get(id(inc))
        share, viewers = slice_share(database, inc.region, inc.cdn, inc.start_s, inc.end_s)
        others = [u for u, (_, (d, _, _), _) in evaluated.items() if u != uid and id(inc) in d]
        delay = None if det is None else (det - inc.start_s) / 60
        rule = by_uid[uid]
        visible = -(-(60 + rule["rng"]["to"]) // rule["interval"]) * rule["interval"]
        allowed = (visible + rule["pending"] + 2 * rule["interval"]) / 60
        in_time = delay is not None and delay <= allowed
        lines.append(f"| {inc.label()} | {inc.region} x {inc.cdn} | {100 * share:.1f} % | "
                     f"{viewers:.0f} | {inc.when} {clock(inc.start_s)} | {uid} | "
                     f"{'yes' if det else 'no'} | {'' if delay is None else f'{delay:g}'} | "
                     f"{('yes' if in_time else 'no') if det else ''} | "
                     f"{', '.join(others) or '-'} |")
        summary["incidents"].append(dict(
            kind=inc.kind, size=inc.size, minutes=inc.minutes, when=inc.when,
            slice=(inc.region, inc.cdn), share=share, viewers=viewers, rule=uid,
            pending=rule["pending"], delay=delay, allowed=allowed, in_time=in_time))
    smallest = []
    for kind, uid in KIND_RULE.items():
        found = [i for i in summary["incidents"] if i["kind"] == kind and i["delay"] is not None]
        sizes = sorted({i["size"] for i in found})
        smallest.append(f"{uid}: smallest detected {kind} size "
                        f"{sizes[0] if sizes else 'none'}")
    lines += [""] + [f"- {s}" for s in smallest]
    return "\n".join(lines), summary


def plot(path, rule, states, inc, database):
    """One incident: the slice's KPI per evaluation (as the rule's query returns it, and the
    same over the full range), the rule's threshold, and the alert state."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    spec = next(r for r in generate.RULES if r["uid"] == rule["uid"])
    t0, t1 = inc.start_s - 40 * 60, inc.end_s + 40 * 60
    num, den = spec["kpi"]
    xs, kpi = [], []
    for t in range(t0, t1, 60):
        frm, to = t - rule["rng"]["from"], t - rule["rng"]["to"]
        got = ch(f"SELECT {num}, {den} FROM qoe_window_1m WHERE region = '{inc.region}' AND "
                 f"cdn = '{inc.cdn}' AND window_start >= toDateTime({frm}) AND "
                 f"window_start + 60 <= toDateTime({to})", database, fmt="TSV").split()
        n, d = float(got[0]), float(got[1])
        xs.append((t - inc.start_s) / 60)
        kpi.append(100 * n / d if d else float("nan"))
    by_t = states.get((inc.region, inc.cdn), {})
    level = {"pending": 0.5, "alerting": 1.0}
    alert = [level.get(by_t.get(t, ("normal", None))[0], 0.0) for t in range(t0, t1, 60)]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(xs, kpi, label=f"{spec['metric']} over the rule's range (%)")
    ax.axhline(spec["threshold"], color="red", linestyle="--", label="threshold")
    ax.axvspan(0, inc.minutes, color="orange", alpha=0.2, label="incident")
    ax.set_title(f"{rule['uid']}: {inc.label()} in {inc.region} x {inc.cdn} at {clock(inc.start_s)}")
    ax.legend(loc="upper right", fontsize=8)
    ax2.step(xs, alert, where="post", color="black")
    ax2.set_yticks([0, 0.5, 1], ["normal", "pending", "alerting"])
    ax2.axvspan(0, inc.minutes, color="orange", alpha=0.2)
    ax2.set_xlabel("minutes from incident start (evaluation time)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(plan_name, viewers=20000, seed=7, keep=False, plot_path=None, out=None):
    first, last, incidents = plan(plan_name)
    database = f"qoe_alert_eval_{uuid.uuid4().hex[:8]}"
    ch(f"CREATE DATABASE {database}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sim_s = load(first, last, incidents, viewers, seed, database,
                         pathlib.Path(tmp) / "rows.json")
        t0 = time.monotonic()
        evaluated = {}
        spec = {r["uid"]: r for r in generate.RULES}
        by_uid = {r["uid"]: r for r in rules()}
        for uid, rule in by_uid.items():
            states = evaluate(rule, database, first, last)
            evaluated[uid] = (states, attribute(rule, states, incidents, first, last),
                              guard_breaches(spec[uid], rule, states, database))
        eval_s = time.monotonic() - t0
        table, summary = report(first, last, incidents, evaluated, database, by_uid)
        summary["seconds"] = dict(simulation=sim_s, evaluation=eval_s)
        if plot_path and incidents:
            inc = next(i for i in incidents if i.kind == "rebuffering"
                       and i.size == TARGET["rebuffering"] and i.minutes == TARGET_MINUTES)
            rule = by_uid[KIND_RULE[inc.kind]]
            plot(plot_path, rule, evaluated[rule["uid"]][0], inc, database)
        text = (f"{table}\n\nPeak audience {viewers} viewers, seed {seed}; simulation "
                f"{sim_s:.0f} s, evaluation {eval_s:.0f} s.\n")
        if out:
            pathlib.Path(out).write_text(text)
        return text, summary
    finally:
        if not keep:
            ch(f"DROP DATABASE IF EXISTS {database}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--plan", choices=["full", "healthy", "reduced"], default="full",
                   help="full: a day with every incident size; healthy: the same day without "
                        "incidents; reduced: three evening hours with a few incidents")
    p.add_argument("--viewers", type=int, default=20000, help="peak concurrent viewers")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--plot", metavar="PNG", help="plot the target-size rebuffering incident")
    p.add_argument("--out", metavar="FILE", help="also write the report (markdown) here")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    a = p.parse_args()
    text, _ = run(a.plan, a.viewers, a.seed, a.keep, a.plot, a.out)
    print(text)


if __name__ == "__main__":
    main()
