"""One photo analysed: square crop, face mask, 5 landmarks and the metadata row.

Source photos are cropped around their largest face (:func:`analyze_source`); reference (style)
images are centre-cropped and masked where a face is (:func:`analyze_reference`). The overlay is
drawn only when it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magicapture_pipeline.core.faces.crops import (
    centre_square,
    crop_resize,
    detection_in_crop,
    square_box_around,
)
from magicapture_pipeline.core.faces.detection import Detection, FaceAnalyzer, landmarks5
from magicapture_pipeline.core.faces.masks import box_mask, ellipse_mask, face_mask, latent_mask
from magicapture_pipeline.core.faces.overlays import overlay
from magicapture_pipeline.core.faces.quality import sharpness


@dataclass
class FaceResult:
    """Everything preprocessing learns about one image (arrays + the metadata row fields)."""

    crop: np.ndarray
    mask: np.ndarray
    latent_mask: np.ndarray
    n_faces: int
    face_score: float
    bbox: list[float] | None
    face_area_fraction: float
    mask_coverage: float
    sharpness: float
    crop_box: list[int]
    landmarks5: list[list[float]] | None
    status: str
    reason: str
    mask_source: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    overlay_options: dict[str, Any] = field(default_factory=dict, repr=False)
    _overlay: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def overlay(self) -> np.ndarray:
        """The crop with mask, box and landmarks drawn (:func:`overlay`), made on first read.

        It is for people checking the set, so analysing an image does not pay for it.
        """
        if self._overlay is None:
            self._overlay = overlay(self.crop, self.mask, **self.overlay_options)
        return self._overlay

    def row(self) -> dict[str, Any]:
        """The ``face_metadata`` columns this result fills (JSON for the list-valued ones)."""
        return {
            "n_faces": self.n_faces,
            "face_score": round(self.face_score, 4),
            "bbox": json.dumps(self.bbox),
            "face_area_fraction": round(self.face_area_fraction, 5),
            "mask_coverage": round(self.mask_coverage, 5),
            "sharpness": round(self.sharpness, 2),
            "crop_box": json.dumps(self.crop_box),
            "landmarks5": json.dumps(self.landmarks5),
            "mask_source": self.mask_source,
            "status": self.status,
            "reason": self.reason,
        }



def analyze_source(
    rgb: np.ndarray,
    analyzer: FaceAnalyzer,
    resolution: int,
    *,
    crop_scale: float = 2.2,
    mask_dilation: float = 0.0,
    mask_feather: float = 0.0,
    overlay_alpha: float = 0.45,
) -> FaceResult:
    """A source photo: square crop around its largest face, face mask, 5 landmarks, metadata."""
    height, width = rgb.shape[:2]
    detections = analyzer.detect(rgb)
    if not detections:
        crop_box = centre_square(width, height)
        crop = crop_resize(rgb, crop_box, resolution)
        mask = np.zeros((resolution, resolution), dtype=np.uint8)
        return _result(crop, mask, crop_box=crop_box, detections=[], image_size=(width, height),
                       status="no_face", reason="no face found: centre crop, empty mask",
                       overlay_alpha=overlay_alpha)
    main = detections[0]
    crop_box = square_box_around(main.box, width, height, crop_scale)
    crop = crop_resize(rgb, crop_box, resolution)
    in_crop = detection_in_crop(main, crop_box, resolution)
    box_in_crop = in_crop.box
    points = analyzer.mesh_at(crop, in_crop)
    if points is None:
        mask = ellipse_mask(box_in_crop, resolution, mask_dilation, mask_feather)
        source, five = "detection_ellipse", None
    else:
        mask = face_mask(points, resolution, mask_dilation, mask_feather)
        source, five = "face_mesh", landmarks5(points)
    if len(detections) > 1:
        status = "multiple_faces"
        reason = f"{len(detections)} faces found; the largest was cropped"
    else:
        status, reason = "ok", ""
    if five is None:
        reason = (reason + "; " if reason else "") + "face mesh failed: ellipse mask from the box"
    return _result(crop, mask, crop_box=crop_box, detections=detections,
                   image_size=(width, height), status=status, reason=reason,
                   overlay_alpha=overlay_alpha, box_in_crop=box_in_crop, five=five,
                   mask_source=source)


def analyze_reference(
    rgb: np.ndarray,
    analyzer: FaceAnalyzer,
    resolution: int,
    *,
    mask_dilation: float = 0.0,
    mask_feather: float = 0.0,
    overlay_alpha: float = 0.45,
) -> FaceResult:
    """A reference (style) image: centre crop; the face mask is empty when there is no face."""
    height, width = rgb.shape[:2]
    crop_box = centre_square(width, height)
    crop = crop_resize(rgb, crop_box, resolution)
    detections = analyzer.detect(crop)
    scale = crop_box[2] / resolution
    in_image = [
        Detection(d.score, (d.box[0] * scale + crop_box[0], d.box[1] * scale + crop_box[1],
                            d.box[2] * scale, d.box[3] * scale),
                  tuple((x * scale + crop_box[0], y * scale + crop_box[1])
                        for x, y in d.keypoints))
        for d in detections
    ]
    common = {"crop_box": crop_box, "detections": in_image, "image_size": (width, height),
              "status": "ok", "overlay_alpha": overlay_alpha,
              "box_in_crop": detections[0].box if detections else None}
    points = analyzer.mesh(crop) if detections else None
    if points is not None:
        mask = face_mask(points, resolution, mask_dilation, mask_feather)
        return _result(crop, mask, reason="", five=landmarks5(points), mask_source="face_mesh",
                       **common)
    if detections:
        # The detector found a face the mesh could not outline (seen on scikit-image's cameraman,
        # a real face at score 0.90): without a mask there, [V2] would learn that face as style.
        # The detection boxes are masked instead (a false face in a stylised scene then costs a
        # small patch of style region, never a leaked face).
        mask = box_mask([d.box for d in detections], resolution, mask_dilation, mask_feather)
        reason = (f"{len(detections)} face detection(s) (best score {detections[0].score:.2f}) "
                  "the face mesh could not outline: the detection box(es) are masked out of the "
                  "style region")
        return _result(crop, mask, reason=reason, mask_source="detection_box", **common)
    mask = np.zeros((resolution, resolution), dtype=np.uint8)
    reason = "no face: the style mask covers the whole image"
    return _result(crop, mask, reason=reason, **common)


def _result(
    crop: np.ndarray,
    mask: np.ndarray,
    *,
    crop_box: list[int],
    detections: list[Detection],
    image_size: tuple[int, int],
    status: str,
    reason: str,
    overlay_alpha: float,
    box_in_crop: tuple[float, float, float, float] | None = None,
    five: np.ndarray | None = None,
    mask_source: str = "none",
) -> FaceResult:
    width, height = image_size
    main = detections[0] if detections else None
    return FaceResult(
        crop=crop,
        mask=mask,
        latent_mask=latent_mask(mask),
        overlay_options={"box": box_in_crop, "points": five, "alpha": overlay_alpha},
        n_faces=len(detections),
        face_score=main.score if main else 0.0,
        bbox=[round(v, 1) for v in main.box] if main else None,
        face_area_fraction=main.area / float(width * height) if main else 0.0,
        mask_coverage=float(np.count_nonzero(mask > 127)) / mask.size,
        sharpness=sharpness(crop),
        crop_box=crop_box,
        landmarks5=[[round(float(x), 2), round(float(y), 2)] for x, y in five]
        if five is not None
        else None,
        status=status,
        reason=reason,
        mask_source=mask_source,
    )
