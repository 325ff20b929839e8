"""The paper's evaluation protocol (Sec. 4.1): CSIM, masked CLIP style similarity, aesthetic score.

- CSIM: cosine between the face embedding of each generated image and the mean embedding of the
  source photos. The metric's name carries the embedder (``csim_arcface`` with insightface ArcFace,
  the paper's choice; ``csim_dlib`` with dlib's offline model); numbers of two backends are never
  mixed.
- Style: cosine between CLIP image embeddings of each generated image and the mean embedding of the
  reference (style) images, with the face region masked out of both.
- Aesthetic: the LAION aesthetic predictor, an MLP (or the older linear head) on L2-normalised
  CLIP ViT-L/14 image embeddings.
- Face-detected rate of the generated images.

A metric that cannot be computed lands in ``unavailable`` with the reason, never as a fake 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

MASK_FILL = (127, 127, 127)  # neutral grey where the face was (close to CLIP's mean colour)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _unit_mean(vectors: Sequence[np.ndarray]) -> np.ndarray:
    stack = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    stack /= np.linalg.norm(stack, axis=1, keepdims=True) + 1e-12
    return stack.mean(axis=0)


# --------------------------------------------------------------------------- CSIM


@dataclass
class CsimResult:
    """Per-image CSIM (None where no face was found) under a backend-specific metric name."""

    name: str
    per_image: dict[str, float | None]
    n_source_faces: int
    reason: str | None = None

    @property
    def mean(self) -> float | None:
        values = [v for v in self.per_image.values() if v is not None]
        return float(np.mean(values)) if values else None


def csim(
    embedder: Any,
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> CsimResult:
    """CSIM of each generated image against the mean source embedding.

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
    name = f"csim_{embedder.backend}"
    landmarks = list(source_landmarks) if source_landmarks is not None else [None] * len(sources)
    source_vectors = []
    for image, lm in zip(sources, landmarks, strict=True):
        vector = embedder.embed(np.asarray(image.convert("RGB")), lm)
        if vector is not None:
            source_vectors.append(vector)
    if not source_vectors:
        return CsimResult(name, {}, 0, "no face found in any of the source images")
    reference = _unit_mean(source_vectors)
    per_image: dict[str, float | None] = {}
    for key in sorted(generated):
        rgb = np.asarray(generated[key].convert("RGB"))
        vector = embedder.embed(rgb, landmark_fn(rgb) if landmark_fn is not None else None)
        per_image[key] = cosine(vector, reference) if vector is not None else None
    return CsimResult(name, per_image, len(source_vectors))


def load_identity_embedder(backend: str, arcface_model: str | None) -> tuple[Any, str | None]:
    """The CSIM embedder: ArcFace when ``arcface_model`` is set (or asked for), dlib otherwise.

    Returns:
        ``(embedder, None)`` or ``(None, reason)``.
    """
    from magicapture_pipeline.core import identity

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


# --------------------------------------------------------------------------- faces in outputs


class FaceRegions:
    """Face detection, 5 landmarks and face masks of square images (mediapipe, ``core.faces``).

    The mask is the mesh's face oval; when the mesh finds nothing but the detector does, the
    ellipse in the detection box. Create once, reuse for a whole image set, ``close()`` after.
    """

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        from magicapture_pipeline.core.faces import FaceAnalyzer

        self._analyzer = FaceAnalyzer(min_detection_confidence=min_detection_confidence)

    def close(self) -> None:
        """Release mediapipe."""
        self._analyzer.close()

    def detected(self, image: Image.Image) -> bool:
        """True when at least one face is detected."""
        return bool(self._analyzer.detect(np.asarray(image.convert("RGB"))))

    def landmarks5(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """ArcFace-order 5 points from the mesh, or None."""
        from magicapture_pipeline.core.faces import landmarks5

        points = self._analyzer.mesh(np.ascontiguousarray(image_rgb))
        return landmarks5(points) if points is not None else None

    def mask(self, image: Image.Image) -> Image.Image | None:
        """Face mask (mode L, 255 = face) at the image's size, or None without a face."""
        from magicapture_pipeline.core.faces import ellipse_mask, face_mask

        rgb = np.asarray(image.convert("RGB").resize((max(image.size),) * 2))
        size = rgb.shape[0]
        points = self._analyzer.mesh(rgb)
        if points is not None:
            array = face_mask(points, size)
        else:
            found = self._analyzer.detect(rgb)
            if not found:
                return None
            array = ellipse_mask(found[0].box, size)
        return Image.fromarray(array, mode="L").resize(image.size)


# --------------------------------------------------------------------------- CLIP


def mask_out(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """``image`` with the face region (mask > 127) filled with neutral grey."""
    rgb = image.convert("RGB")
    if mask is None:
        return rgb
    keep = np.asarray(mask.convert("L").resize(rgb.size, Image.NEAREST)) <= 127
    array = np.asarray(rgb).copy()
    array[~keep] = MASK_FILL
    return Image.fromarray(array)


@dataclass
class ClipEmbedder:
    """CLIP image tower + its preprocessing; ``embed`` returns L2-normalised projected vectors."""

    model: Any
    processor: Any
    device: str = "cpu"

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(pixel_values=pixels)
        else:
            features = self.model(pixel_values=pixels).image_embeds
        if not isinstance(features, torch.Tensor):  # transformers 5 may return an output object
            embeds = getattr(features, "image_embeds", None)
            features = embeds if embeds is not None else features.pooler_output
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy()


def load_clip(
    path_or_id: str | None, local_files_only: bool = True, device: str = "cpu"
) -> tuple[ClipEmbedder | None, str | None]:
    """CLIP from a folder or hub id (``CLIPVisionModelWithProjection``, else ``CLIPModel``)."""
    if not path_or_id:
        return None, "no CLIP model configured (evaluation.clip_model)"
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    errors = []
    for cls in (CLIPVisionModelWithProjection, CLIPModel):
        try:
            model = cls.from_pretrained(path_or_id, local_files_only=local_files_only)
            processor = CLIPImageProcessor.from_pretrained(
                path_or_id, local_files_only=local_files_only
            )
        except Exception as error:  # noqa: BLE001 - each class is tried, reasons are kept
            errors.append(f"{cls.__name__}: {str(error).splitlines()[0]}")
            continue
        return ClipEmbedder(model.eval().to(device), processor, device), None
    where = " from local files (offline)" if local_files_only else ""
    return None, (
        f"CLIP {path_or_id} could not be loaded{where}; set evaluation.clip_model to a local "
        f"copy of CLIP ViT-L/14 ({errors[0][:160]})"
    )


@dataclass
class StyleResult:
    """Per-image masked CLIP style similarity and what was masked."""

    per_image: dict[str, float]
    masked: dict[str, bool] = field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.per_image.values()))) if self.per_image else None


def style_similarity(
    clip: ClipEmbedder,
    generated: Mapping[str, Image.Image],
    references: Sequence[Image.Image],
    generated_masks: Mapping[str, Image.Image | None] | None = None,
    reference_masks: Sequence[Image.Image | None] | None = None,
) -> StyleResult:
    """Cosine of CLIP embeddings of face-masked generated vs face-masked reference images.

    Args:
        clip: a loaded ``ClipEmbedder``.
        generated: key -> generated image.
        references: the style reference images.
        generated_masks: key -> face mask (255 = face) or None where no face was found.
        reference_masks: one face mask (or None) per reference image.
    """
    generated_masks = generated_masks or {}
    reference_masks = (
        list(reference_masks) if reference_masks is not None else [None] * len(references)
    )
    masked_refs = [mask_out(r, m) for r, m in zip(references, reference_masks, strict=True)]
    reference = _unit_mean(list(clip.embed(masked_refs)))
    keys = sorted(generated)
    masked_gen = [mask_out(generated[k], generated_masks.get(k)) for k in keys]
    vectors = clip.embed(masked_gen) if keys else []
    return StyleResult(
        {k: cosine(v, reference) for k, v in zip(keys, vectors, strict=True)},
        {k: generated_masks.get(k) is not None for k in keys},
    )


# --------------------------------------------------------------------------- aesthetic


class AestheticMLP(torch.nn.Module):
    """LAION's improved aesthetic predictor head (``layers.*``) on a CLIP image embedding."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_aesthetic(path: str | Path | None) -> tuple[torch.nn.Module | None, str | None]:
    """The LAION aesthetic head from a state dict (MLP ``layers.*`` or the v1 linear head)."""
    if not path:
        return None, "no LAION aesthetic predictor weights configured (evaluation.aesthetic_model)"
    if not Path(path).is_file():
        return None, f"aesthetic predictor weights {path} do not exist"
    state = _read_state_dict(path)
    if "layers.0.weight" in state:
        head: torch.nn.Module = AestheticMLP(state["layers.0.weight"].shape[1])
    elif "weight" in state and state["weight"].ndim == 2:
        head = torch.nn.Linear(state["weight"].shape[1], 1)
    else:
        return None, f"{path} is neither the LAION MLP (layers.*) nor the linear head (weight)"
    head.load_state_dict(state)
    return head.eval(), None


@torch.no_grad()
def aesthetic_scores(
    head: torch.nn.Module, clip: ClipEmbedder, images: Mapping[str, Image.Image]
) -> dict[str, float]:
    """LAION aesthetic score of each image (the head sees the L2-normalised CLIP embedding)."""
    keys = sorted(images)
    if not keys:
        return {}
    embeddings = torch.from_numpy(clip.embed([images[k] for k in keys]))
    expected = next(head.parameters()).shape[1]
    if embeddings.shape[1] != expected:
        raise ValueError(
            f"aesthetic head expects {expected}-d CLIP embeddings, the CLIP gives "
            f"{embeddings.shape[1]} (LAION's head needs ViT-L/14)"
        )
    scores = head(embeddings.float()).squeeze(-1)
    return {k: float(s) for k, s in zip(keys, scores, strict=True)}


# --------------------------------------------------------------------------- all of it


@dataclass
class Evaluation:
    """Top-level metrics, a per-image table and the reasons for anything not computed."""

    metrics: dict[str, float]
    per_image: dict[str, dict[str, Any]]
    unavailable: dict[str, str]
    info: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """Numbers at the top level (for DVC) + ``unavailable`` + ``info``."""
        return {**self.metrics, "unavailable": dict(self.unavailable), "info": dict(self.info)}


def evaluate_images(
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    references: Sequence[Image.Image],
    *,
    identity: tuple[Any, str | None],
    clip: tuple[ClipEmbedder | None, str | None],
    aesthetic: tuple[torch.nn.Module | None, str | None],
    face_mask_fn: Callable[[Image.Image], Image.Image | None] | None,
    face_detect_fn: Callable[[Image.Image], bool] | None,
    reference_masks: Sequence[Image.Image | None] | None = None,
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    mask_face_for_style: bool = True,
    unavailable_reasons: Mapping[str, str] | None = None,
    landmark_fn: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> Evaluation:
    """Every metric of the protocol that can run with what was loaded.

    Each ``(object, reason)`` pair comes from the matching ``load_*`` function; a None object puts
    its metric(s) in ``unavailable`` with the reason.
    """
    unavailable: dict[str, str] = dict(unavailable_reasons or {})
    metrics: dict[str, float] = {"n_images": float(len(generated))}
    per_image: dict[str, dict[str, Any]] = {k: {} for k in sorted(generated)}
    info: dict[str, Any] = {}

    embedder, reason = identity
    if embedder is None:
        unavailable["csim"] = reason or "no identity embedder"
    else:
        result = csim(embedder, generated, sources, source_landmarks, landmark_fn)
        info["csim_backend"] = embedder.backend
        info["csim_source_faces"] = result.n_source_faces
        for key, value in result.per_image.items():
            per_image[key][result.name] = value
        if result.reason:
            unavailable[result.name] = result.reason
        elif result.mean is None:
            unavailable[result.name] = "no face found in any generated image"
        else:
            metrics[result.name] = result.mean
            metrics[f"{result.name}_faces"] = float(
                sum(v is not None for v in result.per_image.values())
            )

    if face_detect_fn is not None:
        detected = {k: bool(face_detect_fn(generated[k])) for k in per_image}
        for key, found in detected.items():
            per_image[key]["face_detected"] = found
        if detected:
            metrics["face_detected_rate"] = float(np.mean(list(detected.values())))
    else:
        unavailable.setdefault("face_detected_rate", "no face detector available")

    clip_model, clip_reason = clip
    if clip_model is None:
        unavailable["style_similarity"] = clip_reason or "no CLIP model"
    elif not references:
        unavailable["style_similarity"] = "no reference (style) images"
    else:
        masks: dict[str, Image.Image | None] = {}
        if mask_face_for_style and face_mask_fn is not None:
            masks = {k: face_mask_fn(generated[k]) for k in per_image}
        elif mask_face_for_style:
            info["style_mask_note"] = "no face masker: generated images scored unmasked"
        style = style_similarity(
            clip_model,
            generated,
            references,
            masks,
            reference_masks if mask_face_for_style else None,
        )
        for key, value in style.per_image.items():
            per_image[key]["style_similarity"] = value
            per_image[key]["style_face_masked"] = style.masked.get(key, False)
        if style.mean is not None:
            metrics["style_similarity"] = style.mean

    head, head_reason = aesthetic
    if clip_model is None:
        unavailable["aesthetic_score"] = f"needs CLIP ViT-L/14: {clip_reason}"
    elif head is None:
        unavailable["aesthetic_score"] = head_reason or "no aesthetic head"
    else:
        try:
            scores = aesthetic_scores(head, clip_model, generated)
        except ValueError as error:
            unavailable["aesthetic_score"] = str(error)
        else:
            for key, value in scores.items():
                per_image[key]["aesthetic_score"] = value
            if scores:
                metrics["aesthetic_score"] = float(np.mean(list(scores.values())))

    for name, why in unavailable.items():
        logger.warning("Metric %s unavailable: %s", name, why)
    return Evaluation(metrics, per_image, unavailable, info)


@dataclass
class MetricModels:
    """Everything the protocol loads once and reuses across image sets (and benchmark variants)."""

    identity: tuple[Any, str | None]
    clip: tuple[ClipEmbedder | None, str | None]
    aesthetic: tuple[torch.nn.Module | None, str | None]
    faces: FaceRegions | None
    faces_reason: str | None = None

    def close(self) -> None:
        """Release mediapipe."""
        if self.faces is not None:
            self.faces.close()


def load_metric_models(config: Any) -> MetricModels:
    """Load the embedders an ``EvaluationConfig`` asks for; failures become reasons."""
    try:
        faces: FaceRegions | None = FaceRegions()
        faces_reason = None
    except Exception as error:  # noqa: BLE001
        faces, faces_reason = None, f"mediapipe face analysis unavailable: {error}"
    identity = load_identity_embedder(config.identity_backend, config.arcface_model)
    if identity[0] is not None and identity[0].backend == "arcface" and faces is not None:
        identity[0].landmark_finder = faces.landmarks5
    clip = load_clip(config.clip_model, config.local_files_only, config.device)
    aesthetic = load_aesthetic(config.aesthetic_model)
    return MetricModels(identity, clip, aesthetic, faces, faces_reason)


def evaluate_with(
    models: MetricModels,
    generated: Mapping[str, Image.Image],
    sources: Sequence[Image.Image],
    references: Sequence[Image.Image],
    *,
    reference_masks: Sequence[Image.Image | None] | None = None,
    source_landmarks: Sequence[np.ndarray | None] | None = None,
    mask_face_for_style: bool = True,
) -> Evaluation:
    """:func:`evaluate_images` with loaded ``MetricModels``."""
    faces = models.faces
    extra = {"face_detected_rate": models.faces_reason} if faces is None else {}
    return evaluate_images(
        generated,
        sources,
        references,
        identity=models.identity,
        clip=models.clip,
        aesthetic=models.aesthetic,
        face_mask_fn=faces.mask if faces is not None else None,
        face_detect_fn=faces.detected if faces is not None else None,
        reference_masks=reference_masks,
        source_landmarks=source_landmarks,
        mask_face_for_style=mask_face_for_style,
        unavailable_reasons=extra,
        landmark_fn=faces.landmarks5 if faces is not None else None,
    )


# --------------------------------------------------------------------------- Table-1-shaped report

TABLE_METRICS = ("csim", "style_similarity", "aesthetic_score", "face_detected_rate")


def _csim_value(metrics: Mapping[str, Any]) -> tuple[float | None, str | None]:
    backend = (metrics.get("info") or {}).get("csim_backend")
    for name in ("arcface", "dlib"):
        if f"csim_{name}" in metrics:
            return metrics[f"csim_{name}"], name
    return None, backend


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: our numbers, the paper's (separate columns), status and reasons.

    Each result is ``{"name", "method", "status", "metrics": {...} | None, "paper": {...}}``.
    Our CSIM column is named after the embedder that produced it; a backend never shares a
    column with another.
    """
    backends = {_csim_value(r.get("metrics") or {})[1] for r in results} - {None}
    common = next(iter(backends)) if len(backends) == 1 else None
    rows = []
    for result in results:
        metrics = result.get("metrics") or {}
        csim_value, backend = _csim_value(metrics)
        backend = backend or common
        row: dict[str, Any] = {"variant": result["name"], "method": result["method"]}
        row[f"csim_{backend}" if backend else "csim"] = csim_value
        for name in TABLE_METRICS[1:]:
            row[name] = metrics.get(name)
        paper = result.get("paper") or {}
        for name in ("csim", "style", "aesthetic"):
            row[f"paper_{name}"] = paper.get(name)
        row["status"] = result["status"]
        row["unavailable"] = ", ".join(sorted(metrics.get("unavailable") or {}))
        rows.append(row)
    return rows


def comparison_markdown(
    rows: Sequence[Mapping[str, Any]],
    note: str,
    reasons: Mapping[str, str] | None = None,
) -> str:
    """The comparison as a markdown table (empty cells where a number does not exist).

    ``reasons`` (metric -> why it is unavailable) is listed once under the table.
    """
    if not rows:
        return f"# Comparison (Table 1 shape)\n\nNo variants.\n\n{note}\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Comparison (shaped like the paper's Table 1)",
        "",
        "Columns `paper_*` are the paper's numbers (arXiv 2309.06895, Table 1), never ours; our "
        "CSIM column names the face embedder that produced it. An empty cell means the number "
        "does not exist (see `status` / `unavailable`).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    if reasons:
        lines += ["", "Why a metric is unavailable:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(reasons.items())]
    return "\n".join([*lines, "", note, ""])


def unavailable_reasons(results: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Every distinct ``metric -> reason`` over the results (first reason seen per metric)."""
    reasons: dict[str, str] = {}
    for result in results:
        for name, why in ((result.get("metrics") or {}).get("unavailable") or {}).items():
            reasons.setdefault(name, why)
    return reasons
