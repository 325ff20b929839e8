"""The layout (issue 17 §2): imports only go down the layers, no cycles, ``core/`` free of Kedro and
MLflow, no module over ~400 lines, every module in ``docs/architecture.md``.

An ast scan of ``src/`` (imports inside functions count: they run too).
``python tests/test_layout.py`` prints the modules missing from the doc's layout tree and the
tree's lines that name no module.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from magicapture_pipeline.dvc_stages import module_imports

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = PROJECT_ROOT / "src" / "magicapture_pipeline"
PACKAGE = "magicapture_pipeline"
ARCHITECTURE = PROJECT_ROOT / "docs" / "architecture.md"

# Bottom to top; a module may import its own layer and the layers below. A group is a top-level
# module or package of magicapture_pipeline, or a module/package of core/ (longest prefix wins).
LAYERS: list[tuple[str, ...]] = [
    # 0 plain values: pydantic configs, the concept rule, the loss equations, atomic writes
    ("config", "concepts", "core.losses", "core.atomic", "core.procfs"),
    # 1 what the method is made of: faces, the diffusion model, identity embeddings
    ("core.faces", "core.models", "core.identity"),
    # 2 the method's steps
    ("core.training", "core.generation", "core.evaluation"),
    # 3 Kedro datasets over core's formats
    ("datasets",),
    # 4 MLflow wings: tracking (URIs, store, hook, server), serving (registry, pyfunc)
    ("tracking", "serving"),
    # 5 Kedro wiring: pipelines' nodes, Kedro hooks, the parameter check
    ("pipelines", "hooks", "check_config"),
    # 6 entry points: Kedro's registry and settings, command-line tools
    (
        "pipeline_registry",
        "settings",
        "batch",
        "where_to_look",
        "dvc_stages",
        "speed_bench",
        "experiments",
        "export",
        "__main__",
    ),
]
# Upward imports that exist today and are being removed in issue 17 (the lead empties this list
# after merging): (importing group, imported group).
KNOWN_UPWARD: set[tuple[str, str]] = set()
MAX_LINES = 400
# Modules over MAX_LINES today, being split in issue 17 (the lead empties this after merging).
OVERSIZED: dict[str, int] = {}


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import sub`` counts ``pkg.sub``)."""
    return {module for module in module_imports(name, path) if module in known}


def external_imports(path: Path) -> set[str]:
    """Top-level names of the distributions a module imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def group(module: str) -> str:
    """The layer group of a module: ``core.<x>`` inside core/, else the top-level name."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE
    if parts[0] == "core" and len(parts) > 1:
        return f"core.{parts[1]}"
    return parts[0]


def layer_of(name: str) -> int:
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layout.py")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_group_has_a_layer():
    groups = {group(name) for name in modules()} - {PACKAGE, "core"}
    for name in groups:
        layer_of(name)


def test_no_import_runs_up_the_layers():
    upward = set()
    for module, imported in graph().items():
        if group(module) in (PACKAGE, "core"):
            continue  # the packages' own __init__ (docstrings)
        for target in imported:
            if group(target) in (PACKAGE, "core"):
                continue
            pair = (group(module), group(target))
            if layer_of(pair[1]) > layer_of(pair[0]) and pair not in KNOWN_UPWARD:
                upward.add(f"{module} -> {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_known_upward_imports_still_exist():
    """An entry of KNOWN_UPWARD that no longer happens is removed (the list only shrinks)."""
    pairs = {(group(m), group(t)) for m, targets in graph().items() for t in targets}
    assert KNOWN_UPWARD <= pairs, f"remove from KNOWN_UPWARD: {KNOWN_UPWARD - pairs}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if target in stack and state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # a package importing its own submodule is not a cycle of the design
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


# What the method must not import (module level: tests/test_tiers.py reads the string "kedro"
# inside a test function as a test that runs Kedro).
NOT_IN_CORE = frozenset(("kedro", "mlflow"))


def test_core_imports_neither_kedro_nor_mlflow():
    offenders = {
        str(path.relative_to(PACKAGE_DIR)): sorted(external_imports(path) & NOT_IN_CORE)
        for name, path in modules().items()
        if name.startswith(f"{PACKAGE}.core")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_module_over_400_lines():
    sizes = {
        str(path.relative_to(PACKAGE_DIR)): len(path.read_text().splitlines())
        for path in modules().values()
    }
    over = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in OVERSIZED}
    assert not over, f"modules over {MAX_LINES} lines (split them by responsibility): {over}"
    fixed = {name for name in OVERSIZED if sizes.get(name, 0) <= MAX_LINES}
    assert not fixed, f"remove from OVERSIZED (split or gone): {sorted(fixed)}"


def documented_paths(text: str) -> set[str]:
    """Paths named by the layout tree of docs/architecture.md (the first ``` block).

    Each line's first word is a file or ``folder/`` indented two spaces per level under
    ``src/magicapture_pipeline/``; a folder line without children stands for everything in it.
    """
    block = text.split("```")[1]
    stack: list[tuple[int, str]] = []
    paths: set[str] = set()
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    for index, line in enumerate(lines):
        match = re.match(r"( *)(\S+)", line)
        indent, word = len(match.group(1)), match.group(2)
        if indent == 0 or not re.fullmatch(r"\w+\.py|\w+/", word):
            continue  # the root line, conf/ lines, continuation text
        stack = [(level, name) for level, name in stack if level < indent]
        path = "/".join([name for _, name in stack] + [word.rstrip("/")])
        if word.endswith("/"):
            stack.append((indent, word.rstrip("/")))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if len(following) - len(following.lstrip()) <= indent:
                paths.add(path + "/")
        else:
            paths.add(path)
    return paths


def doc_gaps() -> tuple[list[str], list[str]]:
    """(modules missing from the doc's tree, tree entries that name nothing in src/)."""
    documented = documented_paths(ARCHITECTURE.read_text())
    files = [
        str(path.relative_to(PACKAGE_DIR))
        for path in modules().values()
        if path.name not in ("__init__.py", "__main__.py")
    ]
    folders = {p for p in documented if p.endswith("/")}
    missing = [
        f for f in files if f not in documented and not any(f.startswith(d) for d in folders)
    ]
    stale = [
        p for p in sorted(documented) if not (PACKAGE_DIR / p.rstrip("/")).exists()
    ]
    return missing, stale


def test_every_module_is_in_the_architecture_doc():
    missing, stale = doc_gaps()
    assert not missing, f"docs/architecture.md: add one line per module: {missing}"
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


if __name__ == "__main__":
    missing, stale = doc_gaps()
    sys.stdout.write("missing from docs/architecture.md:\n  " + "\n  ".join(missing) + "\n")
    sys.stdout.write("in the doc but not in src/:\n  " + "\n  ".join(stale) + "\n")
