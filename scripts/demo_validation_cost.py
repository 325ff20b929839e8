"""What validation during training costs the demo (issue 20): ``kedro run --pipelines=customize
--env=demo`` with validation on (the env's schedule) and off, each in a fresh copy of the project,
in the order given; prints wall seconds and CPU seconds (user + sys of the run and its children).

    .venv/bin/python scripts/demo_validation_cost.py off on off on

CPU seconds are the figure to compare on a shared machine: wall time follows the other processes'
load (the load average is printed with each run).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import copy_project  # noqa: E402

OFF = "--params=stage_one.validation.every_n_steps=0,stage_two.validation.every_n_steps=0"


def run(mode: str, folder: Path) -> tuple[int, float, float]:
    project = copy_project(folder / "project")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KEDRO_DISABLE_TELEMETRY": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    command = [sys.executable, "-m", "kedro", "run", "--pipelines=customize", "--env=demo"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        code = subprocess.run(command + ([OFF] if mode == "off" else []), cwd=project, env=env,
                              stdout=log, stderr=log, check=False).returncode  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return code, wall, cpu


def main(modes: list[str]) -> int:
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for index, mode in enumerate(modes or ["off", "on"]):
        if mode not in cpu:
            raise SystemExit(f"{mode!r}: expected on or off")
        with tempfile.TemporaryDirectory(prefix=f"validation_{mode}{index}_") as folder:
            code, wall, seconds = run(mode, Path(folder))
        print(f"{mode}: rc={code} wall={wall:.1f} s cpu={seconds:.1f} s "  # noqa: T201
              f"load={os.getloadavg()[0]:.1f}")
        if code:
            return code
        cpu[mode].append(seconds)
    if cpu["on"] and cpu["off"]:
        on, off = sum(cpu["on"]) / len(cpu["on"]), sum(cpu["off"]) / len(cpu["off"])
        print(f"validation on: {on:.1f} s CPU vs off {off:.1f} s: {100 * (on / off - 1):+.1f} %")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
