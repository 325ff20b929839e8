"""``make gpu-bundle``: the Python 3.12 wheels ``scripts/gpu_bench.sh`` installs offline on the GPU.

The GPU machine has CUDA torch, transformers, peft, accelerate and safetensors but no diffusers
(and no Kedro/MLflow, which :mod:`.gpu_run` never imports). What :mod:`.gpu_run` imports beyond
those: diffusers and pydantic (the recipes' step counts, ``config/``). The bundle is their
dependency closure at the versions installed here (so the GPU runs what the tests ran), less the
large binary packages that machine's transformers/torch already bring (:data:`PRESENT`), as
cp312 manylinux x86_64 or pure-Python wheels; ``requirements.txt`` pins the two roots, so pip's
resolver there takes from the bundle only what is missing or too old.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ("diffusers", "pydantic")
PRESENT = {"torch", "numpy", "pillow", "safetensors", "regex", "pyyaml", "tokenizers"}
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}  # fmt: skip
LIMIT_BYTES = 64 * 1024**2


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """Distribution -> installed version, for ``roots`` and their runtime requirements."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = _key(todo.pop())
        if name in found or name in {_key(p) for p in PRESENT}:
            continue
        found[name] = md.version(name)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(MARKERS):
                todo.append(req.name)
    return found


def build(dest: Path) -> list[Path]:
    """Download the wheels into ``dest`` and write its ``requirements.txt``."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in sorted(closure().items())]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
         "--abi", "none", "--platform", "manylinux_2_17_x86_64", "--platform",
         "manylinux2014_x86_64", "--platform", "any", "-d", str(dest), *pins],
        check=True,
    )  # fmt: skip
    (dest / "requirements.txt").write_text(
        "".join(f"{name}=={md.version(name)}\n" for name in ROOTS)
    )
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    if total > LIMIT_BYTES:
        raise SystemExit(f"{dest}: {total / 1024**2:.1f} MiB of wheels, over the 64 MiB carry")
    size = f"{total / 1024**2:.1f} MiB"
    sys.stdout.write(f"{dest}: {len(wheels)} wheels, {size}: " + " ".join(pins) + "\n")
    return wheels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="gpu_bundle", type=Path)
    build(parser.parse_args(argv).dest)


if __name__ == "__main__":
    main()
