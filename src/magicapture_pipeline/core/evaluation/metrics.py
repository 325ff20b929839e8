"""The paper's evaluation protocol (Experiments: Comparisons): CSIM, masked CLIP style
similarity, aesthetic score.

- CSIM (:func:`csim`, the entry point): the mean pairwise cosine over (source x generated) face
  embeddings, as the authors' helper does (``evaluate_pipe`` in ``lora_diffusion_/utils.py``
  averages ``cosine_similarity(source, generated)`` over every pair). Not the cosine to the mean
  source embedding: for unit vectors that equals the pairwise mean divided by the mean vector's
  length (< 1), so it reads high.
- Every CSIM key names its recognizer (``csim_arcface`` with an insightface ArcFace ONNX, the
  paper's choice; ``csim_dlib`` with dlib's offline model). When the recognizer is the network
  the identity loss (Eq. 7) trained against, the key carries ``_same_as_loss``
  (``csim_arcface_same_as_loss``) and the plain key is not reported: a concept is not graded by
  the network it was optimised for under the name of an independent measurement.
- Held-out identity: ``<csim key>_heldout`` scores the generated faces against source photos that
  training never saw (split off in preprocessing); the copy check compares each generated face's
  nearest training photo with its nearest held-out photo over equally sized sets (the expected
  nearest of a random training subset as large as the held-out set), so a concept that learned
  the person and copies nothing reads a gap of 0 (a max over K training photos against one
  held-out photo read +0.05 with no copying at all; issue 18 §4).
- Every mean carries ``_n`` and ``_se`` (:mod:`core.evaluation.stats`).
- Style and aesthetic: :mod:`core.evaluation.style` (CLIP); the Table-1-shaped report:
  :mod:`core.evaluation.comparison`.
- Face-detected rate of the generated images.

A metric that cannot be computed lands in ``unavailable`` with the reason, never as a fake 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magicapture_pipeline.core.evaluation.stats import expected_nearest, mean_with_error
from magicapture_pipeline.core.evaluation.style import (
    MASK_FILL,
    AestheticMLP,
    ClipEmbedder,
    StyleResult,
    aesthetic_scores,
    load_aesthetic,
    load_clip,
    mask_out,
    mean_pairwise_cosine,
    pairwise_cosines,
    style_similarity,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_FILL",
    "AestheticMLP",
    "ClipEmbedder",
    "CsimResult",
    "IdentityReport",
    "StyleResult",
    "aesthetic_scores",
    "csim",
    "identity_report",
    "load_aesthetic",
    "load_clip",
    "load_identity_embedder",
    "load_loss_recognizer",
    "mask_out",
    "network_agreement",
    "pairwise_cosines",
    "style_similarity",
]

SAME_AS_LOSS = "_same_as_loss"
HELDOUT = "_heldout"
# Two recognizers whose embeddings of the same aligned faces agree this much (mean cosine) are
# one network (e.g. an arcface_torch checkpoint and its ONNX export); two independently trained
# networks give unrelated embedding spaces (cosine near 0). Ours, not the paper's.
SAME_NETWORK_AGREEMENT = 0.9


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(pairwise_cosines(np.ravel(a), np.ravel(b))[0, 0])


# --------------------------------------------------------------------------- CSIM


@dataclass
class CsimResult:
    """Per-image CSIM (None where no face was found) under a recognizer-specific metric name."""

    name: str
    per_image: dict[str, float | None]
    n_source_faces: int
    reason: str | None = None

    @property
    def mean(self) -> float | None:
        values = [v for v in self.per_image.values() if v is not None]
        return float(np.mean(values)) if values else None

    def summary(self) -> dict[str, float]:
        """The mean with its n and standard error (``core.evaluation.stats``)."""
        return mean_with_error(self.name, self.per_image.values())


def _embed_sources(
    embedder: Any, images: Sequence[Image.Image], landmarks: Sequence[np.ndarray | None] | None
) -> list[np.ndarray]:
    points = list(landmarks) if landmarks is not None else [None] * len(images)
    vectors = [
        embedder.embed(np.asarray(image.convert("RGB")), lm)
        for image, lm in zip(images, points, strict=True)
    ]
    return [v for v in vectors if v is not None]


def _embed_generated(
    embedder: Any,
    generated: Mapping[str, Image.Image],
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None,
) -> dict[str, np.ndarray | None]:
    vectors = {}
    for key in sorted(generated):
        rgb = np.asarray(generated[key].convert("RGB"))
        vectors[key] = embedder.embed(rgb, landmark_fn(rgb) if landmark_fn is not None else None)
    return vectors


def _csim_from_vectors(
    name: str, generated: Mapping[str, np.ndarray | None], sources: Sequence[np.ndarray]
) -> CsimResult:
    if not sources:
        return CsimResult(name, {}, 0, "no face found in any of the source images")
    per_image = {
        key: mean_pairwise_cosine(vector, sources) if vector is not None else None
        for key, vector in generated.items()
    }
    return CsimResult(name, per_image, len(sources))


def csim(
    embedder: Any,
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> CsimResult:
    """CSIM: the mean pairwise cosine over (source x generated) face embeddings.

    Each generated face scores the mean of its cosines to every source face that embeds; the set's
    score (``CsimResult.mean``) is the mean over generated faces, i.e. the mean over all pairs.

    Args:
        embedder: an object with ``backend`` ("dlib" / "arcface") and
            ``embed(image_rgb, landmarks5=None) -> np.ndarray | None`` (``core.identity``).
        generated: key -> generated image.
        sources: the source (identity) photos.
        source_landmarks: optional 5-point landmarks per source photo (crop pixels).
        landmark_fn: finds 5 landmarks in a generated image (e.g. ``FaceRegions.landmarks5``);
            dlib uses them when its HOG detector misses a small face.

    Returns:
        A ``CsimResult`` named ``csim_<backend>``; ``reason`` is set when no source face embeds.
    """
    source_vectors = _embed_sources(embedder, sources, source_landmarks)
    return _csim_from_vectors(
        f"csim_{embedder.backend}", _embed_generated(embedder, generated, landmark_fn),
        source_vectors,
    )


def network_agreement(
    embedder: Any,
    other: Any,
    images: Sequence[Image.Image],
    landmarks: Sequence[np.ndarray | None],
) -> float | None:
    """Mean cosine between two recognizers' embeddings of the same faces (None: no common face).

    Different embedding sizes mean different networks (0.0).
    """
    values = []
    for image, lm in zip(images, landmarks, strict=True):
        rgb = np.asarray(image.convert("RGB"))
        a, b = embedder.embed(rgb, lm), other.embed(rgb, lm)
        if a is None or b is None:
            continue
        if np.size(a) != np.size(b):
            return 0.0
        values.append(cosine(a, b))
    return float(np.mean(values)) if values else None


@dataclass
class IdentityReport:
    """CSIM on the training photos and on the held-out ones, and the copy check."""

    name: str
    training: CsimResult
    heldout: CsimResult | None
    copy_check: dict[str, dict[str, float]]
    heldout_nearest_training: float | None
    same_as_loss: bool
    agreement: float | None
    note: str | None = None

    def metrics(self) -> dict[str, float]:
        """The report's numbers under their metric names (nothing for a missing value)."""
        out: dict[str, float] = {}
        if self.training.mean is not None and not self.training.reason:
            out.update(self.training.summary())
            out[f"{self.name}_faces"] = out[f"{self.name}_n"]
        if self.heldout is not None and self.heldout.mean is not None:
            out.update(self.heldout.summary())
        if self.copy_check:
            prefix = f"copy_check_{self.name.removeprefix('csim_')}"
            checks = list(self.copy_check.values())
            out.update(mean_with_error(f"{prefix}_gap", [v["gap"] for v in checks]))
            for key in ("nearest_training", "nearest_heldout"):
                out[f"{prefix}_{key}"] = float(np.mean([v[key] for v in checks]))
            out[f"{prefix}_set_size"] = checks[0]["set_size"]
            if self.heldout_nearest_training is not None:
                out[f"{prefix}_heldout_photo_nearest_training"] = self.heldout_nearest_training
                # the other like-with-like reading: both sides a max over all training photos
                nearest_all = float(np.mean([v["nearest_training_all"] for v in checks]))
                out[f"{prefix}_gap_vs_heldout_photo"] = nearest_all - self.heldout_nearest_training
        return out


def identity_report(
    embedder: Any,
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    heldout: Sequence[Image.Image] = (),
    *,
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    heldout_landmarks: Sequence[np.ndarray | None] | None = None,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
    loss_recognizer: tuple[Any, str | None] | None = None,
) -> IdentityReport:
    """CSIM against the training photos and the held-out photos, plus the copy check.

    Copy check, per generated face, over equally sized sets (m = the smaller of the two sets):
    ``nearest_training`` = its expected highest cosine to a random m-photo subset of the training
    photos (:func:`core.evaluation.stats.expected_nearest`), ``nearest_heldout`` = its highest
    cosine to m held-out photos, ``gap`` = the difference. Both sides are maxima over m photos
    of one person, so a concept that learned the person and copies nothing reads a gap of 0 in
    expectation; one that reproduces a training photo reads a positive gap.
    ``heldout_photo_nearest_training`` is the held-out photo's own cosine to its nearest training
    photo (what a new real photo of the person reaches); ``gap_vs_heldout_photo`` = the mean
    generated face's nearest over all training photos minus that (both a max over the same K
    photos: 0 in expectation when generated faces are new photos of the person, more sensitive
    to copying, but it reads low when the style moves faces away from photos).

    Args:
        loss_recognizer: ``(embedder of the identity loss's network, None)`` when the loss ran
            with a network that could be loaded; ``(None, reason)`` when it ran with one that
            cannot be checked (the CSIM is then labelled ``_same_as_loss`` to be safe); None when
            no identity loss ran.
    """
    name = f"csim_{embedder.backend}"
    landmarks = (
        list(source_landmarks) if source_landmarks is not None else [None] * len(sources)
    )
    same, agreement, note = False, None, None
    if loss_recognizer is not None:
        loss_embedder, reason = loss_recognizer
        if loss_embedder is None:
            same, note = True, f"identity-loss network not comparable ({reason}); labelled safe"
        else:
            agreement = network_agreement(embedder, loss_embedder, sources, landmarks)
            same = agreement is not None and agreement >= SAME_NETWORK_AGREEMENT
            if agreement is None:
                same, note = True, "no source face embedded by both networks; labelled safe"
    if same:
        name += SAME_AS_LOSS
    vectors = _embed_generated(embedder, generated, landmark_fn)
    training_vectors = _embed_sources(embedder, sources, landmarks)
    training = _csim_from_vectors(name, vectors, training_vectors)
    held_result, copy_check, heldout_nearest = None, {}, None
    if heldout:
        held_vectors = _embed_sources(embedder, heldout, heldout_landmarks)
        held_result = _csim_from_vectors(f"{name}{HELDOUT}", vectors, held_vectors)
        if held_vectors and training_vectors:
            train_stack, held_stack = np.stack(training_vectors), np.stack(held_vectors)
            heldout_nearest = float(pairwise_cosines(held_stack, train_stack).max(axis=1).mean())
            for key, vector in vectors.items():
                if vector is not None:
                    copy_check[key] = copy_check_one(vector, train_stack, held_stack)
    return IdentityReport(
        name, training, held_result, copy_check, heldout_nearest, same, agreement, note
    )


def copy_check_one(
    vector: np.ndarray, training: np.ndarray, heldout: np.ndarray
) -> dict[str, float]:
    """One generated face's copy check: nearest training vs nearest held-out over m photos each
    (m = the smaller set; the training side is the exact expectation over random m-subsets)."""
    size = min(len(training), len(heldout))
    nearest_training = expected_nearest(pairwise_cosines(vector, training)[0], size)
    nearest_heldout = expected_nearest(pairwise_cosines(vector, heldout)[0], size)
    return {
        "nearest_training": nearest_training,
        "nearest_training_all": float(pairwise_cosines(vector, training).max()),
        "nearest_heldout": nearest_heldout,
        "gap": nearest_training - nearest_heldout,
        "set_size": float(size),
    }


def load_identity_embedder(backend: str, arcface_model: str | None) -> tuple[Any, str | None]:
    """The CSIM embedder: ArcFace when ``arcface_model`` is set (or asked for), dlib otherwise.

    Returns:
        ``(embedder, None)`` or ``(None, reason)``.
    """
    from magicapture_pipeline.core.identity import embedders as identity

    if backend == "arcface" or (backend == "auto" and arcface_model):
        if not arcface_model:
            return None, "csim_arcface: evaluation.arcface_model is not set (buffalo_l / .onnx)"
        if not Path(arcface_model).exists():
            return None, f"csim_arcface: {arcface_model} does not exist"
        try:
            return identity.ArcFaceOnnxEmbedder(arcface_model), None
        except Exception as error:  # noqa: BLE001 - reported as unavailable, run continues
            return None, f"csim_arcface: could not load {arcface_model}: {error}"
    try:
        return identity.DlibFaceEmbedder(), None
    except Exception as error:  # noqa: BLE001
        return None, f"csim_dlib: dlib's face models could not load: {error}"


def load_loss_recognizer(identity: Mapping[str, Any] | None) -> tuple[Any, str | None] | None:
    """The identity loss's network as an embedder, from ``stage_two.identity`` settings.

    Returns:
        None when the configured identity loss did not run (mode off or no checkpoint: then no
        CSIM can be the loss's network); ``(embedder, None)`` when its checkpoint loads;
        ``(None, reason)`` when it ran with a network that cannot be loaded here.
    """
    identity = identity or {}
    checkpoint = identity.get("checkpoint")
    if identity.get("mode", "single_pass") == "off" or not checkpoint:
        return None
    if not Path(checkpoint).is_file():
        return None
    from magicapture_pipeline.core.identity.arcface import load_arcface
    from magicapture_pipeline.core.identity.embedders import IResNetEmbedder

    try:
        return IResNetEmbedder(load_arcface(checkpoint, identity.get("arch", "r100"))), None
    except Exception as error:  # noqa: BLE001 - reported; the CSIM is then labelled to be safe
        return None, f"{checkpoint}: {error}"
