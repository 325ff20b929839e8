"""The suite's ``xdist_group`` marks must hold: tests sharing a session fixture (``demo_run``) or a
machine-wide service (one Ray at a time) rely on running in one worker.

pytest 9.2 stores node ids in a structured field, and pytest-xdist 3.8's ``--dist loadgroup``
still writes the old one, so every group was silently ignored (pytest-dev/pytest-xdist#1386):
the demo chain ran twice and two Rays started side by side. ``requirements.txt`` pins a pytest
that works; this test runs a tiny suite the way ``make test`` does and fails if grouping breaks.
The tiny suite also has the suite's collection hook (``scheduling.group_shared_fixtures``): the
tests of a module-scoped fixture run on one worker, which builds the fixture once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TINY_SUITE = textwrap.dedent(
    """
    import os
    import pytest

    def _record(name):
        with open(os.path.join(os.path.dirname(__file__), name + ".worker"), "w") as handle:
            handle.write(os.environ["PYTEST_XDIST_WORKER"])

    @pytest.mark.xdist_group("together")
    @pytest.mark.parametrize("index", range(6))
    def test_grouped(index):
        _record(f"grouped{index}")

    @pytest.mark.parametrize("index", range(6))
    def test_free(index):
        _record(f"free{index}")

    @pytest.fixture(scope="module")
    def built():
        _record(f"built{os.getpid()}")

    @pytest.mark.parametrize("index", range(6))
    def test_sharing(built, index):
        _record(f"sharing{index}")
    """
)
CONFTEST = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    import pytest
    from scheduling import group_shared_fixtures

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(config, items):
        group_shared_fixtures(items)
    """
)


def test_xdist_group_keeps_a_group_on_one_worker(tmp_path: Path):
    (tmp_path / "test_tiny.py").write_text(TINY_SUITE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    # Only xdist is loaded: the other installed plugins (nbmake, hydra, anyio, ...) play no part in
    # grouping and, autoloaded by the runner and both workers, cost ~5 of the ~7 CPU seconds.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "xdist", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "--no-loadscope-reorder", "-c", "/dev/null", "--rootdir",
         str(tmp_path), str(tmp_path)],  # make test's PYTEST_ALL, with two workers
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers = {p.stem: p.read_text() for p in tmp_path.glob("*.worker")}
    builds = [name for name in workers if name.startswith("built")]
    assert len(workers) == 18 + len(builds), sorted(workers)
    grouped = {workers[f"grouped{i}"] for i in range(6)}
    assert len(grouped) == 1, f"one xdist_group ran on several workers: {sorted(grouped)}"
    assert len({workers[f"sharing{i}"] for i in range(6)}) == 1 and len(builds) == 1, builds
