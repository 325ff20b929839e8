"""Where the suite's CPU goes: each test's CPU seconds, its own process's and those of the child
processes it started and waited for (``kedro run``, a batch driver, a server), setup and teardown
included.

``--durations`` shows wall time, which on two cores mostly says how busy the other worker was;
CPU seconds say what a test costs. Each test's figure is a ``cpu_s`` property in ``--junitxml``
and the session ends with the 15 most expensive. Blind spots: a daemon nobody waits for (Ray's
raylet and workers are reaped by Ray, not by the test) is not counted, and a session fixture's
cost lands on the first test that uses it.
"""

from __future__ import annotations

import os

import pytest

SHOWN = 15
_started: dict[str, float] = {}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _started[item.nodeid] = _cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem):  # noqa: ANN001
    yield
    started = _started.pop(item.nodeid, None)
    if started is not None:  # the teardown report (made after this hook) carries it
        item.user_properties.append(("cpu_s", round(_cpu_seconds() - started, 2)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    """The tests that cost the most CPU (works under xdist: it reads the reports)."""
    costs = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == "cpu_s":
                    costs.append((float(value), report.nodeid))
    if not costs:
        return
    costs.sort(reverse=True)
    total = sum(cost for cost, _ in costs)
    terminalreporter.section(
        f"most CPU: {min(SHOWN, len(costs))} of {len(costs)} tests, "
        f"{total:.0f} CPU s in all (tests/cpu_time.py)"
    )
    for cost, nodeid in costs[:SHOWN]:
        terminalreporter.write_line(f"{cost:8.1f}s {100 * cost / total:5.1f}%  {nodeid}")
