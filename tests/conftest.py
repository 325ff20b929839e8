"""Shared test fixtures: a throw-away copy of the project to run Kedro in, one tiny random SD per
session, one builder of hand-made training examples, and the guard that keeps the test tiers honest.

Tiers (``pyproject.toml`` declares the markers): a test with neither ``integration`` nor ``service``
is a unit test. ``integration`` runs Kedro (``kedro run`` or a ``KedroSession``), DVC or a
notebook kernel; ``service`` starts PostgreSQL, Ray, a scoring or tracking server or Chromium;
``slow`` marks a long test of any tier. ``make test-fast`` runs the unit tier less ``slow``. The
guard below fails a test that runs Kedro, DVC, a kernel or a service without its marker, so
``-m "not integration and not service"`` needs nothing running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from full_disk import pytest_terminal_summary  # noqa: F401 - the "could not run" report
from scheduling import group_shared_fixtures, heavy_first

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


def copy_project(dest: Path) -> Path:
    """Copy what a Kedro run needs (conf, pyproject, empty data tree) into ``dest``.

    The package itself is imported from the editable install, so ``src`` is not copied.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(
        PROJECT_ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local")
    )
    (dest / "conf" / "local").mkdir(exist_ok=True)
    # Kedro checks that the project's source folder exists, even though the package is imported
    # from the editable install.
    (dest / "src").mkdir(exist_ok=True)
    for folder in sorted((PROJECT_ROOT / "data").iterdir()):
        if folder.is_dir():
            (dest / "data" / folder.name).mkdir(parents=True, exist_ok=True)
    return dest


def run_kedro(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``kedro <args>`` in ``project`` as a user would, returning the finished process."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_kedro_here(project: Path, *args: str) -> subprocess.CompletedProcess:
    """``kedro <args>`` in ``project`` through Kedro's own command line (the same click commands,
    option parsing, session, hooks and nodes) in this process, returning what :func:`run_kedro`
    returns: exit status, stdout, and stderr (with the traceback of an uncaught error, as a child's
    would print it). For tests of what a run writes or refuses, not of the process itself: a child
    pays Python's, torch's, diffusers', MLflow's and great-expectations' imports again (5-12 CPU s
    a run, issue 17), this process pays them once. The working directory and
    ``MLFLOW_TRACKING_URI`` (the copy's sqlite store unless set) hold for the run only."""
    import io
    import traceback

    from kedro.framework.cli.cli import KedroCLI, _init_plugins

    out, err = io.StringIO(), io.StringIO()
    code = 0
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    previous_cwd = Path.cwd()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                _init_plugins()
                KedroCLI(project_path=project).main(args=list(args), prog_name="kedro")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # noqa: BLE001 - a child would print it and exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous_cwd)
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri
    return subprocess.CompletedProcess(["kedro", *args], code, out.getvalue(), err.getvalue())


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_loudly_without_chromium(script, what: str) -> None:
    """Skip, with a warning in the summary, when Debian's chromium (``script.chromium_binary``)
    is missing: ``what`` was NOT checked in a browser. (``make test`` installs it as root.)"""
    import warnings

    if script.chromium_binary() is None:
        message = (
            f"CHROMIUM NOT INSTALLED: {what} was NOT checked in a browser "
            "(apt-get install -y chromium; make test does it as root)"
        )
        warnings.warn(message, pytest.PytestWarning, stacklevel=2)
        pytest.skip(message)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh copy of the project in a temporary folder (data/ empty)."""
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One ``kedro run --pipelines=customize --env=demo`` with every stage shrunk to a few steps
    (``e2e/demo_fingerprint.py``'s ``SHRINK``: checkpoints, heatmaps, a validation, Real-ESRGAN and
    the registration still happen), tracked in the copy's sqlite store, shared by the tests that
    read what the whole demo chain writes, the bitwise golden test among them.

    Returns ``(project, finished_process)``. Those tests only read the project; they carry
    ``@pytest.mark.xdist_group("demo_run")`` so that one worker runs the chain once.
    """
    from e2e.demo_fingerprint import run_shrunk_demo

    project = copy_project(tmp_path_factory.mktemp("demo_run") / "project")
    return project, run_shrunk_demo(project)


def run_shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder that every xdist worker of this run sees (the workers' base temps' parent),
    for things built once per run under a file lock."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory):
    """``sqlite_store(path) -> uri``: a new MLflow sqlite store at ``path``, as MLflow makes it.

    MLflow creates a store by running its ~60 alembic migrations, about 2 CPU s each time (16
    unit tests did so). Here that is done once per run (shared by the xdist workers under a file
    lock) and each store is a copy of the result with its ``Default`` experiment removed, so that
    MLflow's first open creates that experiment as it does in a fresh store (its artifact root
    from the opening process's working folder, its creation time now). Tests whose subject is
    creating a store (``test_store``'s concurrent runs, the migration's target) do not use it.
    """
    import sqlite3

    template = run_shared_root(tmp_path_factory) / "mlflow_store" / "empty.db"

    def fresh(path: Path) -> str:
        template.parent.mkdir(parents=True, exist_ok=True)
        with open(template.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not template.is_file():
                _build_store_template(template, sqlite3)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return fresh


def _build_store_template(template: Path, sqlite3) -> None:  # noqa: ANN001 - the module
    from mlflow import MlflowClient

    building = template.with_suffix(".building")
    building.unlink(missing_ok=True)
    uri = f"sqlite:///{building}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    with contextlib.closing(sqlite3.connect(building)) as db, db:
        db.execute("DELETE FROM experiment_tags")
        db.execute("DELETE FROM experiments")
    building.rename(template)


# --- one tiny random SD per session, one example builder ------------------------------------

RES = 64
"""Side of the hand-made training crops, in pixels (the latent is ``RES // 8``)."""

LANDMARKS = [[22.4, 25.6], [41.6, 25.6], [32.0, 35.2], [24.3, 44.8], [39.7, 44.8]]
"""Five facial landmarks (eyes, nose, mouth corners) of a 64 px crop, as detection writes them."""


def make_examples(res: int = RES) -> list:
    """Four training examples (two ``source``, two ``reference``) of random pixels in [-1, 1].

    Each has a centred square face mask on the latent grid (the middle half of each side) and
    :data:`LANDMARKS` scaled to ``res``. Seeded, so every call returns the same tensors.
    """
    import torch

    latent = res // 8
    middle = (latent // 4, 3 * latent // 4)
    return _examples(res, middle, middle, per_role=2, landmarks=torch.tensor(LANDMARKS) * res / 64)


def make_pair(res: int, rows: tuple[int, int], cols: tuple[int, int]) -> list:
    """One ``source`` and one ``reference`` example of random pixels in [-1, 1] (seed 0), no
    landmarks; the face mask is the box ``rows`` x ``cols`` on the ``res // 8`` latent grid (give
    an asymmetric box, so a transposed or swapped mask shows)."""
    return _examples(res, rows, cols, per_role=1, landmarks=None)


def _examples(res: int, rows, cols, per_role: int, landmarks) -> list:
    import torch

    from magicapture_pipeline.core.training import TrainingExample

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, res // 8, res // 8)
    mask[:, rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return [
        TrainingExample(
            f"{role}{i}",
            role,
            torch.rand(3, res, res, generator=generator) * 2 - 1,
            mask.clone(),
            None if landmarks is None else landmarks.clone(),
        )
        for role in ("source", "reference")
        for i in range(per_role)
    ]


def random_identity(**overrides):
    """Eq. 7 as the trainer tests run it: a random-weight IResNet r18 (no ArcFace weights ship),
    ``T' = 1.0`` and the identity branch in fp32 (``autocast_dtype="fp32"``, the authors'), unless
    ``overrides`` say otherwise.

    Not the default bf16 autocast: on a CPU without native bf16 the trainer now leaves it off
    (``identity_term.cpu_has_native_bf16``; emulated, one r18 forward of two faces took 5.5 s CPU
    against 0.2 s in fp32), but a CI machine with AVX512-BF16 would run it, so the tests pin fp32
    and stay the same everywhere. What they check (which steps run Eq. 7, its target, that its
    gradient reaches the LoRA) does not depend on the dtype; the bf16 branch has its own test,
    ``test_identity_loss_reaches_lora[single_pass-bf16]``, which forces native bf16.
    """
    from magicapture_pipeline.config.loss_terms import IdentityConfig

    values = {"random_init": True, "arch": "r18", "threshold_fraction": 1.0}
    return IdentityConfig(**{**values, "autocast_dtype": "fp32", **overrides})


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory):
    """Build (once per test run and size, shared by the xdist workers) the tiny random SD of
    ``core.models.build_tiny_sd``.

    Returns a function ``tiny_sd(sample_size=128) -> Path`` of the saved folder. The weights are
    seeded, so every test sees the same model; tests only read the folder (``from_pretrained``).
    """
    from magicapture_pipeline.config.model import TinyModelConfig
    from magicapture_pipeline.core.models.builders import build_tiny_sd
    from magicapture_pipeline.core.models.loading import is_local_model

    built: dict[int, Path] = {}
    # Under pytest-xdist every worker has its own base temp inside the run's; the model is built
    # once per run in that shared parent (one worker builds under a file lock, the others load).
    root = run_shared_root(tmp_path_factory)

    def get(sample_size: int = TinyModelConfig().sample_size) -> Path:
        if sample_size not in built:
            folder = root / f"tiny_sd_{sample_size}" / "tiny_sd"
            folder.parent.mkdir(parents=True, exist_ok=True)
            with open(folder.parent / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not is_local_model(folder):
                    build_tiny_sd(folder, TinyModelConfig(sample_size=sample_size))
            built[sample_size] = folder
        return built[sample_size]

    return get


@pytest.fixture(scope="session")
def tiny_dir(tiny_sd) -> Path:
    """The session's tiny random SD at the default size (``TinyModelConfig()``)."""
    return tiny_sd()


# --- the tier guard ---------------------------------------------------------------------------

_INTEGRATION_PROGRAMS = {"kedro", "dvc", "ipykernel_launcher"}
_SERVICE_PROGRAMS = {"pg_ctl", "initdb", "postgres", "chromium", "uvicorn", "gunicorn", "raylet"}
_current: list[pytest.Item] = []  # the test being set up, run or torn down


def tier_of_command(args) -> str | None:
    """The tier a child process needs (``"integration"``, ``"service"``) or None for a unit test.

    ``args`` is what ``subprocess.Popen`` got: a program and its arguments, or a shell string.
    """
    words = args.split() if isinstance(args, str | bytes) else [os.fspath(a) for a in args]
    words = [w.decode() if isinstance(w, bytes) else str(w) for w in words]
    names = {Path(w).name for w in words}
    modules = {words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"}
    if names & _SERVICE_PROGRAMS or any("/ray/" in w for w in words):
        return "service"
    if "magicapture_pipeline.tracking.server" in modules:
        return "service"
    if ("mlflow" in names or "mlflow" in modules) and {"serve", "server"} & set(words):
        return "service"
    if names & _INTEGRATION_PROGRAMS or modules & _INTEGRATION_PROGRAMS:
        return "integration"
    return None


def _require(tier: str, what: str) -> None:
    """Fail the current test if it does ``what`` without the ``tier`` marker."""
    if _current and _current[-1].get_closest_marker(tier) is None:
        item = _current[-1]
        pytest.fail(
            f"{item.nodeid} {what} but is not marked {tier}: add @pytest.mark.{tier} "
            "(or the module's pytestmark) so the unit tier stays fast and needs no service",
            pytrace=False,
        )


def pytest_configure(config: pytest.Config) -> None:
    """Install the tier guard: every child process and every in-process Kedro session is checked
    against the current test's markers (fixtures of any scope included, since the guard is on
    from the first setup to the last teardown).

    The pytest-xdist controller runs no test: it only registers the CPU report, and imports
    neither Kedro nor (this module no longer does at import) torch, ~3 CPU s it paid for nothing."""
    import cpu_time

    config.pluginmanager.register(cpu_time, "magicapture_cpu_time")
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    from kedro.framework.session import KedroSession

    execute_child = subprocess.Popen._execute_child
    create = KedroSession.__dict__["create"]

    def checked_child(self, args, *rest, **kwargs):
        tier = tier_of_command(args)
        if tier is not None:
            _require(tier, f"starts {args if isinstance(args, str) else list(args)[:4]}")
        return execute_child(self, args, *rest, **kwargs)

    def checked_create(cls, *args, **kwargs):
        _require("integration", "creates a KedroSession")
        return create.__func__(cls, *args, **kwargs)

    subprocess.Popen._execute_child = checked_child
    KedroSession.create = classmethod(checked_create)
    config.add_cleanup(lambda: setattr(subprocess.Popen, "_execute_child", execute_child))
    config.add_cleanup(lambda: setattr(KedroSession, "create", create))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(tryfirst=True)  # before xdist's, which turns the groups into node-id suffixes
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_shared_fixtures(items)
    items[:] = heavy_first(items)
