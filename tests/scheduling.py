"""How the suite is handed to pytest-xdist's workers (Makefile: ``PYTEST``, ``PYTEST_ALL``).

Imported by ``conftest.py``'s collection hook and by ``test_xdist_groups.py``'s tiny suite, so it
imports nothing but pytest.
"""

from __future__ import annotations

import pytest

HEAVY_MARKS = ("integration", "service", "slow")


def heavy_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """Modules holding an integration, service or slow test first; each module's order kept.

    ``make test`` runs ``--dist loadgroup --no-loadscope-reorder``: xdist hands out its work
    units (a group, or a single test) in collection order, a few at a time to whichever worker
    is free (without the option, groups would go first, largest first). The minute-long end-to-end,
    service and slow tests therefore start first and the thousand sub-second unit tests fill the two
    workers at the end, instead of one worker starting a 100 s test while the other runs out of
    work. Whole modules move together so module fixtures are set up once per worker."""

    def module(item: pytest.Item) -> str:
        return item.module.__name__ if item.module else item.nodeid

    heavy = {
        module(item) for item in items
        if any(item.get_closest_marker(mark) for mark in HEAVY_MARKS)
    }  # fmt: skip
    return sorted(items, key=lambda item: module(item) not in heavy)


SHARED_SCOPES = ("class", "module", "package")


def shares_a_fixture(item: pytest.Item) -> bool:
    """``item`` uses a fixture that outlives one test but not the session (class, module or
    package scope): one instance per module, built again on every worker that runs one of them."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(defs and defs[-1].scope in SHARED_SCOPES for defs in definitions)


def group_shared_fixtures(items: list[pytest.Item]) -> None:
    """Each module's tests that share a module- (or class-) scoped fixture go to one xdist worker
    (``xdist_group("module:<module>")``; a test's own group wins). ``loadgroup`` hands out every
    other test alone, so the two tests of a module fixture that builds a model or runs a pipeline
    for seven seconds used to land on both workers and build it twice."""
    for item in items:
        if item.module is not None and not item.get_closest_marker("xdist_group"):
            if shares_a_fixture(item):
                item.add_marker(pytest.mark.xdist_group(f"module:{item.nodeid.split('::')[0]}"))
