"""DreamBooth's class images: "a photo of a person" sampled from the BASE model (no concept),
generated once and cached per concept (Ruiz et al. 2023, arXiv 2208.12242, prior preservation;
diffusers ``train_dreambooth_lora.py`` generates ``--num_class_images`` into ``--class_data_dir``
and reuses what is there).

The cache is one sub-folder per setting (``<root>/<key>/``, ``key`` a hash of base model, prompt,
count, seed, steps, CFG and resolution) holding ``class_XXXX.png`` and ``manifest.json``; it is
reused only when the manifest matches and every image is there, otherwise regenerated whole
(written beside and swapped in: a stopped run never leaves a half folder that reads as complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from magicapture_pipeline.core.atomic import staged_dir

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def class_image_settings(
    *,
    base_model: str,
    prompt: str,
    count: int,
    seed: int,
    steps: int,
    guidance: float,
    resolution: int,
) -> dict[str, Any]:
    """Everything the class images depend on (the cache key)."""
    return {
        "base_model": str(base_model),
        "prompt": prompt,
        "count": int(count),
        "seed": int(seed),
        "num_inference_steps": int(steps),
        "guidance_scale": float(guidance),
        "resolution": int(resolution),
    }


def _key(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_class_images(root: Path, settings: dict[str, Any]) -> list[Path] | None:
    """The cached images for ``settings``, or ``None`` when the folder is absent, its manifest
    differs or an image is missing."""
    folder = Path(root) / _key(settings)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("settings") != settings:
        return None
    paths = [folder / name for name in manifest.get("files", [])]
    if len(paths) != settings["count"] or not all(p.is_file() for p in paths):
        return None
    return paths


def generate_class_images(pipe: Any, settings: dict[str, Any], folder: Path) -> list[Path]:
    """Sample ``settings["count"]`` images of the class prompt from ``pipe`` (the base model's own
    pipeline and scheduler, as diffusers does) into ``folder``; image ``i`` uses ``seed + i``."""
    from magicapture_pipeline.core.generation.sampling import sample_image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(settings["count"]):
        image = sample_image(
            pipe,
            settings["prompt"],
            seed=settings["seed"] + index,
            num_inference_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"],
            resolution=settings["resolution"],
        )
        name = f"class_{index:04d}.png"
        image.save(folder / name)
        names.append(name)
    (folder / MANIFEST).write_text(
        json.dumps({"settings": settings, "files": names}, indent=2, sort_keys=True)
    )
    return [folder / name for name in names]


def class_images(root: Path, settings: dict[str, Any], load_pipe: Any) -> tuple[list[Path], bool]:
    """The class images for ``settings`` under ``root``: ``(paths, generated)``.

    ``load_pipe()`` builds the base model's pipeline; it is called only when the cache misses.
    """
    found = cached_class_images(root, settings)
    if found is not None:
        logger.info("Reusing %d cached class images in %s", len(found), found[0].parent)
        return found, False
    target = Path(root) / _key(settings)
    logger.info(
        "Generating %d class images of %r into %s", settings["count"], settings["prompt"], target
    )
    pipe = load_pipe()
    with staged_dir(target) as staging:
        generate_class_images(pipe, settings, Path(staging))
    paths = cached_class_images(root, settings)
    if paths is None:  # pragma: no cover - the folder was just written
        raise RuntimeError(f"class images under {target} did not read back")
    return paths, True


def class_image_tensor(path: Path, resolution: int) -> torch.Tensor:
    """A class image as the trainers' ``(3, H, W)`` float in ``[-1, 1]``."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
