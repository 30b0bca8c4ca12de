"""Alert quality, measured in `make test`: the reduced plan of dashboards/alert_eval.py.

Three evening hours (an hour before them to compare with) of a diurnal audience of 20,000 peak
viewers with small slices, simulated offline and loaded into a scratch database of the real
ClickHouse; every provisioned alert rule is evaluated every simulated minute as Grafana
evaluates it (macros, range, pending period, stale series). Six incidents: the target size of
each kind (rebuffering x3, start failures +10 points, startup x2) for 10 minutes in a slice of
about 1 % of the audience, and the biggest size for 3 minutes in a bigger slice.

Asserted: no rule alerts outside an incident, none on a slice below its own traffic guard, and
every incident is caught by its rule within the pending period plus two evaluations of the
first evaluation that could see it. The full day (every size, length, peak and trough) is
`make alert-eval`; its table is in dashboards/README.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "dashboards"))
import alert_eval  # noqa: E402


def test_rules_catch_the_target_incidents_in_time_and_nothing_else():
    text, summary = alert_eval.run("reduced")
    print(text)
    assert set(summary["false_minutes"]) == {r["uid"] for r in alert_eval.rules()}
    false = {uid: m for uid, m in summary["false_minutes"].items() if m}
    assert not false, f"false alert-minutes: {false}\n{text}"
    below = {uid: n for uid, n in summary["below_guard"].items() if n}
    assert not below, f"alerts below the traffic guard: {below}\n{text}"
    assert len(summary["incidents"]) == 6
    for inc in summary["incidents"]:
        assert inc["share"] > 0.008, f"the incident slice is as big as planned: {inc}"
        assert inc["in_time"], f"{inc['rule']} missed or was late for {inc}\n{text}"
