"""MLflow is touched in two places: nothing outside ``tracking/`` and ``serving/`` imports it.

Read from the source with ``ast`` (no module is imported), so a lazy ``import mlflow`` inside a
function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import magicapture_pipeline

PACKAGE = Path(magicapture_pipeline.__file__).resolve().parent
ALLOWED = ("tracking", "serving")


def mlflow_imports(path: Path) -> list[int]:
    """The line numbers of every ``import mlflow...`` / ``from mlflow... import`` in ``path``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_tracking_and_serving_import_mlflow():
    offenders = {
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in ALLOWED
        for line in mlflow_imports(path)
    }
    assert not offenders, f"mlflow imported outside tracking/ and serving/: {sorted(offenders)}"


def test_the_scan_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from mlflow.entities import Metric\n    import mlflow\n")
    assert mlflow_imports(module) == [2, 3]


def test_tracking_and_serving_import_no_pipeline():
    """The wings sit below the Kedro wiring: no import runs back up into ``pipelines/``."""
    upward = set()
    for folder in ALLOWED:
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "magicapture_pipeline.pipelines"
                ):
                    upward.add(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not upward, f"tracking/ or serving/ imports pipelines/: {sorted(upward)}"
