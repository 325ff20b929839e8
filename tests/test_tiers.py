"""Every test sits in its tier: the markers that ``make test-fast`` (the unit tier) selects on.

Two checks: the guard in ``conftest.py`` recognises the commands of each tier, and, read from
the source, every test that runs Kedro, DVC or a notebook (itself, through a helper of its
module or through a fixture) is marked ``integration``. The guard catches the rest when the
test runs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import tier_of_command
from scheduling import heavy_first

TESTS = Path(__file__).resolve().parent

# Names and string arguments that mean a Kedro run or session, DVC or a notebook kernel.
INTEGRATION_NAMES = {"run_kedro", "KedroSession", "NotebookClient", "run_shrunk_demo"}
INTEGRATION_STRINGS = {"kedro", "dvc"}


@pytest.mark.parametrize(
    ("args", "tier"),
    [
        ([sys.executable, "-m", "kedro", "run", "--env=demo"], "integration"),
        (["/venv/bin/kedro", "viz", "build"], "integration"),
        (["dvc", "repro"], "integration"),
        ([sys.executable, "-m", "ipykernel_launcher", "-f", "k.json"], "integration"),
        (["/usr/lib/postgresql/15/bin/pg_ctl", "-D", "db", "start"], "service"),
        (["/venv/bin/mlflow", "models", "serve", "-m", "models:/x@champion"], "service"),
        ([sys.executable, "-m", "magicapture_pipeline.tracking.server", "start"], "service"),
        (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet"], "service"),
        ("/usr/bin/chromium --headless --no-sandbox", "service"),
        ([sys.executable, "-c", "print('kedro')"], None),
        ([sys.executable, "-m", "magicapture_pipeline.check_config", "--env=demo"], None),
        (["make", "-n", "serve"], None),
    ],
)
def test_the_guard_knows_each_tier_by_its_command(args, tier):
    assert tier_of_command(args) == tier


def _marks(decorators: list[ast.expr]) -> set[str]:
    """The ``pytest.mark.<name>`` names among decorators (or a ``pytestmark`` value)."""
    found = set()
    for node in decorators:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute):
                if sub.value.attr == "mark":
                    found.add(sub.attr)
    return found


def _needs_integration(functions: dict[str, ast.FunctionDef]) -> set[str]:
    """Module-level functions that run Kedro, DVC or a notebook, directly or through another."""

    def direct(function: ast.FunctionDef) -> bool:
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id in INTEGRATION_NAMES:
                return True
            if isinstance(node, ast.Attribute) and node.attr in INTEGRATION_NAMES:
                return True
            if isinstance(node, ast.Constant) and node.value in INTEGRATION_STRINGS:
                return True
        return False

    def uses(function: ast.FunctionDef) -> set[str]:
        names = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
        return (names | {a.arg for a in function.args.args}) & set(functions)

    used = {name: uses(function) for name, function in functions.items()}
    needing = {name for name, function in functions.items() if direct(function)}
    while True:
        more = {n for n in functions if n not in needing and used[n] & needing}
        if not more:
            return needing
        needing |= more


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_every_kedro_dvc_or_notebook_test_is_marked_integration():
    shared = _functions(ast.parse((TESTS / "conftest.py").read_text()))
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path == Path(__file__).resolve():  # its own table of commands is data
            continue
        tree = ast.parse(path.read_text())
        module_marks = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
            ):
                module_marks |= _marks([node.value])
        functions = {**shared, **_functions(tree)}
        needing = _needs_integration(functions)
        for name, function in _functions(tree).items():
            if name.startswith("test_") and name in needing:
                if "integration" not in _marks(function.decorator_list) | module_marks:
                    unmarked.append(f"{path.relative_to(TESTS)}::{name}")
    assert not unmarked, f"run Kedro, DVC or a notebook but are not marked integration: {unmarked}"


class _Item:
    def __init__(self, module: str, mark: str | None) -> None:
        self.module, self.nodeid, self.mark = type(sys)(module), f"{module}::t", mark

    def get_closest_marker(self, name: str):
        return name if name == self.mark else None


def test_heavy_modules_are_handed_out_first_whole_and_in_order():
    """scheduling.heavy_first: a module with one integration/service/slow test moves before the
    unit-only modules with all its tests, and every module keeps its own order."""
    items = [_Item("unit_a", None), _Item("mixed", None), _Item("unit_a", None),
             _Item("mixed", "slow"), _Item("svc", "service"), _Item("unit_b", None)]
    ordered = heavy_first(items)
    assert [i.module.__name__ for i in ordered] == [
        "mixed", "mixed", "svc", "unit_a", "unit_a", "unit_b"]
    assert ordered[0] is items[1] and ordered[3] is items[0]
