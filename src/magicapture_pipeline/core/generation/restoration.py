"""Face restoration for post-processing (paper: Postprocessing): CodeFormer / GFPGAN, the blend.

Runs only from a checkpoint the user configures (non-commercial weights are never bundled).
CodeFormer is built in code (:mod:`core.codeformer`); GFPGAN is tried through its package and
reported unavailable with the reason where it cannot run (here: basicsr needs a torchvision this
environment cannot have). The restored face is blended back through the feathered face mask.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class FaceRestorer:
    """A loaded restorer: ``restore(rgb uint8) -> rgb uint8`` at the input size, or None when the
    image has no face it can restore."""

    name: str
    restore: Callable[[np.ndarray], np.ndarray | None]


GFPGAN_UNAVAILABLE = (
    "gfpgan: cannot run in this environment: the gfpgan package imports basicsr, which needs "
    "torchvision.transforms.functional_tensor (removed in torchvision 0.17, and torchvision does "
    "not install beside this project's CPU torch), and GFPGANer downloads facexlib's detector "
    "and parser weights at run time; use backend 'codeformer' (built in code, loads your "
    "checkpoint)"
)


def load_face_restorer(
    backend: str,
    checkpoint: str | None,
    fidelity_weight: float = 0.5,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> tuple[FaceRestorer | None, str | None]:
    """A face restorer from the user's checkpoint, or ``(None, reason)``.

    CodeFormer is built in code (:mod:`core.codeformer`) and loads the checkpoint with
    ``weights_only=True`` (or safetensors); it needs ``landmark_fn`` (5 face landmarks of an
    image, e.g. ``FaceRegions.landmarks5``) to align the face. GFPGAN is tried through the
    ``gfpgan`` package and reported unavailable with the reason when it cannot import or start.
    Weights are never downloaded.
    """
    if not checkpoint:
        return None, (
            f"{backend}: no checkpoint configured (postprocess.face_restoration.checkpoint); "
            "weights are not bundled (non-commercial licence)"
        )
    if not Path(checkpoint).is_file():
        return None, f"{backend}: checkpoint {checkpoint} does not exist"
    if backend == "gfpgan":
        return _load_gfpgan(checkpoint)
    if backend != "codeformer":
        return None, f"{backend}: unknown face restorer (codeformer or gfpgan)"
    return _load_codeformer(checkpoint, fidelity_weight, landmark_fn)


def _load_codeformer(
    checkpoint: str,
    fidelity_weight: float,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None,
) -> tuple[FaceRestorer | None, str | None]:
    if landmark_fn is None:
        return None, "codeformer: no face landmark finder (mediapipe) to align the face"
    from magicapture_pipeline.core.generation.codeformer import load_codeformer, restore_face

    try:
        model = load_codeformer(checkpoint)
    except (RuntimeError, ValueError, OSError) as error:
        first = str(error).splitlines()[0][:300]
        return None, f"codeformer: {checkpoint} does not load as CodeFormer: {first}"

    def _restore(rgb: np.ndarray) -> np.ndarray | None:
        points = landmark_fn(rgb)
        if points is None:
            return None
        return restore_face(model, rgb, points, fidelity_weight)

    return FaceRestorer("codeformer", _restore), None


def _load_gfpgan(checkpoint: str) -> tuple[FaceRestorer | None, str | None]:
    if importlib.util.find_spec("gfpgan") is None:
        return None, "gfpgan: the gfpgan package is not installed. " + GFPGAN_UNAVAILABLE
    try:
        from gfpgan import GFPGANer

        restorer = GFPGANer(
            model_path=checkpoint, upscale=1, arch="clean", channel_multiplier=2, bg_upsampler=None
        )
    except Exception as error:  # noqa: BLE001 - any import/start-up failure becomes the reason
        return None, f"{GFPGAN_UNAVAILABLE} ({type(error).__name__}: {str(error)[:200]})"

    def _restore(rgb: np.ndarray) -> np.ndarray | None:
        # paste_back: GFPGAN pastes with its own soft mask; the caller then restricts the
        # change to the face mask (one visible blend: the face region only).
        _, _, out = restorer.enhance(
            np.ascontiguousarray(rgb[:, :, ::-1]), has_aligned=False, paste_back=True
        )
        return np.ascontiguousarray(out[:, :, ::-1]) if out is not None else None

    return FaceRestorer("gfpgan", _restore), None


def blend_face(
    original: Image.Image, restored: Image.Image, mask: Image.Image, feather: int = 15
) -> Image.Image:
    """Paste ``restored`` over ``original`` through a feathered face ``mask`` (255 = face).

    Both images and the mask are brought to ``original``'s size; outside the mask the original
    pixels are kept exactly.
    """
    import cv2

    size = original.size
    alpha = np.asarray(mask.convert("L").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    if feather > 0:
        k = 2 * int(feather) + 1
        alpha = cv2.GaussianBlur(alpha, (k, k), 0) * (alpha > 0)
    alpha = alpha[:, :, None]
    a = np.asarray(original.convert("RGB"), dtype=np.float32)
    b = np.asarray(restored.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
    out = a * (1.0 - alpha) + b * alpha
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
