"""A whole image set preprocessed: every file decoded, analysed and keyed for the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from magicapture_pipeline.core.faces.analysis import FaceResult, analyze_reference, analyze_source
from magicapture_pipeline.core.faces.detection import FaceAnalyzer
from magicapture_pipeline.core.faces.images import to_pil
from magicapture_pipeline.core.faces.quality import phash

if TYPE_CHECKING:
    from magicapture_pipeline.config.preprocess import PreprocessConfig

# The columns of the ``face_metadata`` table, in the order it is written.
METADATA_COLUMNS = [
    "id", "role", "path", "width", "height", "n_faces", "face_score", "bbox",
    "face_area_fraction", "mask_coverage", "sharpness", "phash", "status", "reason", "crop_box",
    "landmarks5", "mask_source", "identity_distance",
]


@dataclass
class ProcessedSet:
    """A preprocessed image set: one metadata row per file and the pictures, keyed for the catalog.

    ``crops`` / ``overlays`` keys are ``<role>/<id>``; ``masks`` keys are ``image/<role>/<id>``
    (crop resolution) and ``latent/<role>/<id>`` (resolution / 8).
    """

    rows: list[dict[str, Any]]
    crops: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    overlays: dict[str, np.ndarray]


def analyze_image_set(raw_sets: dict[str, dict[str, Any]], config: Any) -> ProcessedSet:
    """Decode, detect, crop and mask every image of every role (``"source"``, ``"reference"``).

    Args:
        raw_sets: ``{role: {file_id: RawImage}}``, undecoded files.
        config: a :class:`magicapture_pipeline.config.preprocess.PreprocessConfig`.

    A file that fails to decode becomes a row with ``status="decode_error"`` and the reason
    (``"<rule>: <detail>"``), so validation can name every bad file at once.
    """
    from magicapture_pipeline.core.identity.embedders import DlibFaceEmbedder, distances_to_centre

    out = ProcessedSet(rows=[], crops={}, masks={}, overlays={})
    embeddings: dict[str, np.ndarray] = {}
    files = [
        (role, file_id, raw, config)
        for role in ("source", "reference")
        for file_id, raw in sorted(raw_sets.get(role, {}).items())
    ]
    analyzer_args = (config.detection_model, config.min_detection_confidence,
                     config.min_mesh_confidence, config.max_mesh_faces)  # fmt: skip
    embed = config.identity_backend == "dlib"
    workers = min(getattr(config, "workers", 1), len(files))
    if workers >= 2:  # issue 19 §5: the same function in a process pool, results in order
        from magicapture_pipeline.core.faces.pool import FacePool

        with FacePool(workers, analyzer_args, embed) as pool:
            results = list(pool.map(process_file, files))
    else:
        embedder = DlibFaceEmbedder() if embed else None
        with FaceAnalyzer(*analyzer_args) as analyzer:
            results = [process_file(*args, analyzer, embedder) for args in files]
    for row, arrays, vector in results:
        out.rows.append(row)
        key = f"{row['role']}/{row['id']}"
        if arrays is not None:
            out.crops[key], out.masks[f"image/{key}"] = arrays[0], arrays[1]
            out.masks[f"latent/{key}"], out.overlays[key] = arrays[2], arrays[3]
        if vector is not None:
            embeddings[row["id"]] = vector
    distances = distances_to_centre(embeddings)
    for row in out.rows:
        value = distances.get(row["id"]) if row["role"] == "source" else None
        row["identity_distance"] = round(value, 4) if value is not None else None
    return out


def process_file(  # noqa: PLR0913, PLR0917 (one file, its settings and the worker's models)
    role: str, file_id: str, raw: Any, config: Any, analyzer: FaceAnalyzer, embedder: Any
) -> tuple[dict[str, Any], tuple[np.ndarray, ...] | None, np.ndarray | None]:
    """One file decoded and analysed: its metadata row, its ``(crop, image mask, latent mask,
    overlay)`` (``None`` when it does not decode) and its identity embedding (sources, or
    ``None``). Module-level so a process pool can run it."""
    from magicapture_pipeline.core.faces.images import ImageDecodeError, decode_image

    row: dict[str, Any] = {"id": file_id, "role": role, "path": raw.path}
    try:
        rgb = decode_image(raw, min_side=config.min_image_side,
                           max_pixels=config.max_image_pixels,
                           max_side=config.max_decode_side)  # fmt: skip
    except ImageDecodeError as err:
        row.update(_failed_row(f"{err.rule}: {err.detail}"))
        return row, None, None
    result = _analyze_one(rgb, role, analyzer, config)
    row.update({"width": rgb.shape[1], "height": rgb.shape[0], "phash": phash(rgb)})
    row.update(result.row())
    arrays = (result.crop, result.mask, result.latent_mask, result.overlay)
    vector = None
    if embedder is not None and role == "source" and result.n_faces > 0:
        vector = embedder.embed(rgb, _to_image_frame(result, config.resolution))
    return row, arrays, vector


def _analyze_one(rgb: np.ndarray, role: str, analyzer: FaceAnalyzer, config: Any) -> FaceResult:
    if role == "source":
        return analyze_source(rgb, analyzer, config.resolution, crop_scale=config.crop_scale,
                              mask_dilation=config.mask_dilation,
                              mask_feather=config.mask_feather,
                              overlay_alpha=config.overlay_alpha)
    return analyze_reference(rgb, analyzer, config.resolution,
                             mask_dilation=config.mask_dilation, mask_feather=config.mask_feather,
                             overlay_alpha=config.overlay_alpha)


def _to_image_frame(result: FaceResult, resolution: int) -> np.ndarray | None:
    """The 5 landmarks mapped from crop pixels back to the decoded photo."""
    if result.landmarks5 is None:
        return None
    x0, y0, side = result.crop_box
    return np.asarray(result.landmarks5, np.float64) * (side / resolution) + np.array([x0, y0])


def _failed_row(reason: str) -> dict[str, Any]:
    return {
        "width": None, "height": None, "n_faces": None, "face_score": None, "bbox": None,
        "face_area_fraction": None, "mask_coverage": None, "sharpness": None, "phash": None,
        "crop_box": None, "landmarks5": None, "mask_source": None,
        "status": "decode_error", "reason": reason,
    }


def preprocess(
    source_images: dict[str, Any], reference_images: dict[str, Any], config: PreprocessConfig
) -> tuple[pd.DataFrame, dict[str, Image.Image], dict[str, Image.Image], dict[str, Image.Image]]:
    """The preprocessing step: every photo decoded, its face found, cropped, masked and drawn.

    Args:
        source_images: raw source photos ``{id: RawImage}``.
        reference_images: raw reference (style) images ``{id: RawImage}``.
        config: the ``preprocess`` settings.

    Returns:
        ``face_metadata`` (one row per file, :data:`METADATA_COLUMNS`), and the crops, masks and
        overlays as PIL images keyed for the catalog (see :class:`ProcessedSet`).
    """
    result = analyze_image_set({"source": source_images, "reference": reference_images}, config)
    metadata = pd.DataFrame(result.rows).reindex(columns=METADATA_COLUMNS)
    return metadata, _pil(result.crops), _pil(result.masks), _pil(result.overlays)


def _pil(arrays: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    return {key: to_pil(array) for key, array in arrays.items()}
