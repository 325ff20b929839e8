"""Faces in generated images: detected, their 5 landmarks and face masks, for scoring and restoring.

Evaluation (:mod:`core.evaluation.protocol`) and post-processing (:mod:`core.generation.steps`)
read generated images through :class:`FaceRegions`; preprocessing analyses photos with
:mod:`core.faces.analysis`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from magicapture_pipeline.core.faces.detection import FaceAnalyzer, landmarks5
from magicapture_pipeline.core.faces.masks import box_mask, ellipse_mask, face_mask


class FaceRegions:
    """Face detection, 5 landmarks and face masks of square images (mediapipe).

    The mask is the mesh's face oval; when the mesh finds nothing but the detector does, the
    ellipse in the detection box. Create once, reuse for a whole image set, ``close()`` after.
    """

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self._analyzer = FaceAnalyzer(min_detection_confidence=min_detection_confidence)

    def close(self) -> None:
        """Release mediapipe."""
        self._analyzer.close()

    def detected(self, image: Image.Image) -> bool:
        """True when at least one face is detected."""
        return bool(self._analyzer.detect(np.asarray(image.convert("RGB"))))

    def landmarks5(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """ArcFace-order 5 points from the mesh, or None."""
        points = self._analyzer.mesh(np.ascontiguousarray(image_rgb))
        return landmarks5(points) if points is not None else None

    def style_mask(self, image: Image.Image) -> Image.Image | None:
        """The face region the style metric masks out, by the rule preprocessing applies to the
        reference images (``core.faces.analysis.analyze_reference``), so generated and reference
        images are masked alike: detect first; a detected face the mesh outlines -> its oval; a
        detected face the mesh cannot outline -> every detection box; no face detected -> None
        (nothing masked: the whole image is style, as for a reference without a face)."""
        rgb = np.asarray(image.convert("RGB").resize((max(image.size),) * 2))
        size = rgb.shape[0]
        found = self._analyzer.detect(rgb)
        if not found:
            return None
        points = self._analyzer.mesh(rgb)
        if points is not None:
            array = face_mask(points, size)
        else:
            array = box_mask([d.box for d in found], size)
        return Image.fromarray(array, mode="L").resize(image.size)

    def mask(self, image: Image.Image) -> Image.Image | None:
        """Face mask (mode L, 255 = face) at the image's size, or None without a face."""
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
