"""Faces: mediapipe detection + 478-point mesh, square crops, face masks, pHash, overlays.

The face mask stands in for the face parser of the paper (MagiCapture, Sec. 3.2 / Eq. 4-6): the
region inside the mesh's face oval (skin, brows, eyes, nose, mouth, lips), which leaves hair above
the hairline and the neck below the jaw outside. Source images use the mask as is; reference
(style) images use its complement, so a reference image without a face has an all-ones style mask;
one whose face the detector finds but the mesh cannot outline has its detection box masked.

Everything runs offline on the models bundled in mediapipe 0.10.21. One :class:`FaceAnalyzer`
holds the mediapipe graphs and is reused for a whole image set (building them per image would
cost more than running them).

Speed (issue 6): a source photo runs the full-range detector once; the 478-point mesh then runs
on the crop from the region that detection gives (mediapipe's own detection-to-ROI rule), so the
mesh does not detect the face a second time. The overlay is drawn only when it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

# Mesh indices of the 5 points ArcFace aligns on, in ArcFace order (image left to right as in
# insightface's template): eye on the image left, eye on the image right, nose tip, mouth corner on
# the image left, mouth corner on the image right. 468 / 473: iris centres (refine_landmarks).
LANDMARKS5_MESH_INDEX = (468, 473, 1, 61, 291)
DETECTION_MAX_SIDE = 1024  # detection runs on a copy this large at most (the model sees 192 px)
LATENT_FACTOR = 8  # SD's VAE downsamples by 8


@dataclass(frozen=True)
class Detection:
    """One detected face: confidence, box ``(x, y, w, h)`` and keypoints in image pixels.

    ``keypoints`` are mediapipe's six, in its order (eye on the image left, other eye, nose tip,
    mouth centre, ear tragions); the mesh uses the two eyes to rotate its region of interest.
    """

    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


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


# The mesh without its own face detector: mediapipe's landmark subgraph fed the region of interest
# that mediapipe's face-mesh graph derives from a detection (box scaled 1.5x, squared, rotated so
# the eyes are level), here from the full-range detection the caller already has.
_MESH_FROM_DETECTION_GRAPH = """
input_stream: "image"
input_stream: "detection"
input_side_packet: "with_attention"
output_stream: "face_landmarks"
node {
  calculator: "ImagePropertiesCalculator"
  input_stream: "IMAGE:image"
  output_stream: "SIZE:image_size"
}
node {
  calculator: "FaceDetectionFrontDetectionToRoi"
  input_stream: "DETECTION:detection"
  input_stream: "IMAGE_SIZE:image_size"
  output_stream: "ROI:roi"
}
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:face_landmarks"
}
"""


class FaceAnalyzer:
    """mediapipe face detection + face mesh, created once and reused for many images.

    Args:
        model_selection: 0 = short-range detector (faces within ~2 m), 1 = full-range.
        min_detection_confidence: detections below this score are not counted as faces.
        min_mesh_confidence: for :meth:`mesh`, the score the mesh's own detector needs; for
            :meth:`mesh_at`, the face-presence score the landmark model needs (mediapipe's
            tracking threshold). Both default to mediapipe's 0.5.
        max_mesh_faces: faces :meth:`mesh` may return (the one nearest the centre is used).

    The mesh graphs are built on first use: source photos only need the detector and
    :meth:`mesh_at`, reference images the detector and :meth:`mesh`.
    """

    def __init__(
        self,
        model_selection: int = 1,
        min_detection_confidence: float = 0.5,
        min_mesh_confidence: float = 0.5,
        max_mesh_faces: int = 4,
    ) -> None:
        import mediapipe as mp

        self.min_detection_confidence = min_detection_confidence
        self.min_mesh_confidence = min_mesh_confidence
        self.max_mesh_faces = max_mesh_faces
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_detection_confidence
        )
        self._static_mesh: Any = None
        self._roi_mesh: Any = None

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graphs."""
        self._detector.close()
        for graph in (self._static_mesh, self._roi_mesh):
            if graph is not None:
                graph.close()
        self._static_mesh = self._roi_mesh = None

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """All faces above the confidence threshold, largest first (boxes in ``rgb`` pixels)."""
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECTION_MAX_SIDE / max(height, width))
        small = rgb
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        result = self._detector.process(np.ascontiguousarray(small))
        found = []
        for det in result.detections or []:
            location = det.location_data
            box = location.relative_bounding_box
            x0, y0 = max(0.0, box.xmin * width), max(0.0, box.ymin * height)
            x1 = min(float(width), (box.xmin + box.width) * width)
            y1 = min(float(height), (box.ymin + box.height) * height)
            if x1 <= x0 or y1 <= y0:
                continue
            keypoints = tuple((k.x * width, k.y * height) for k in location.relative_keypoints)
            found.append(Detection(float(det.score[0]), (x0, y0, x1 - x0, y1 - y0), keypoints))
        return sorted(found, key=lambda d: d.area, reverse=True)

    def mesh(self, rgb: np.ndarray) -> np.ndarray | None:
        """478 mesh points ``(x, y)`` in pixels of the face nearest the image centre, or None.

        The mesh finds the faces itself (its short-range detector): for images without a
        detection, or to have the mesh confirm one (reference images).
        """
        if self._static_mesh is None:
            import mediapipe as mp

            self._static_mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=self.max_mesh_faces,
                refine_landmarks=True,
                min_detection_confidence=self.min_mesh_confidence,
            )
        height, width = rgb.shape[:2]
        result = self._static_mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        faces = [_pixels(face, width, height) for face in result.multi_face_landmarks]
        if len(faces) == 1:
            return faces[0]
        centre = np.array([width / 2.0, height / 2.0], dtype=np.float32)
        return min(faces, key=lambda pts: float(np.linalg.norm(pts.mean(axis=0) - centre)))

    def mesh_at(self, rgb: np.ndarray, detection: Detection) -> np.ndarray | None:
        """478 mesh points ``(x, y)`` in ``rgb`` pixels of the face ``detection`` found, or None.

        ``detection`` is in ``rgb`` pixels. The landmark model runs once on the region mediapipe
        derives from the detection (no second detector pass); None when its face-presence score
        is below ``min_mesh_confidence``. A detection without keypoints falls back to :meth:`mesh`.
        """
        if len(detection.keypoints) < 2:
            return self.mesh(rgb)
        if self._roi_mesh is None:
            from mediapipe.python.solution_base import SolutionBase

            self._roi_mesh = SolutionBase(
                graph_config=_MESH_FROM_DETECTION_GRAPH,
                calculator_params={
                    "facelandmarkcpu__ThresholdingCalculator.threshold": self.min_mesh_confidence
                },
                side_inputs={"with_attention": True},
                outputs=["face_landmarks"],
            )
        height, width = rgb.shape[:2]
        proto = _detection_proto(detection, width, height)
        result = self._roi_mesh.process({"image": np.ascontiguousarray(rgb), "detection": proto})
        if result.face_landmarks is None:
            return None
        return _pixels(result.face_landmarks, width, height)


def _pixels(landmarks: Any, width: int, height: int) -> np.ndarray:
    """A mediapipe ``NormalizedLandmarkList`` as ``(n, 2)`` float32 pixel coordinates."""
    points = np.array([(p.x, p.y) for p in landmarks.landmark], dtype=np.float32)
    points *= np.array([width, height], dtype=np.float32)
    return points


def _detection_proto(detection: Detection, width: int, height: int) -> Any:
    """``detection`` (pixels) as the relative mediapipe ``Detection`` proto the mesh graph reads."""
    from mediapipe.framework.formats import detection_pb2, location_data_pb2

    proto = detection_pb2.Detection()
    proto.score.append(detection.score)
    location = proto.location_data
    location.format = location_data_pb2.LocationData.RELATIVE_BOUNDING_BOX
    x, y, w, h = detection.box
    box = location.relative_bounding_box
    box.xmin, box.ymin, box.width, box.height = x / width, y / height, w / width, h / height
    for kx, ky in detection.keypoints:
        point = location.relative_keypoints.add()
        point.x, point.y = kx / width, ky / height
    return proto


@lru_cache(maxsize=1)
def face_oval_index() -> tuple[int, ...]:
    """The mesh's face-oval edges chained into one closed polygon (vertex order)."""
    import mediapipe as mp

    neighbours: dict[int, list[int]] = {}
    for a, b in mp.solutions.face_mesh.FACEMESH_FACE_OVAL:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    start = min(neighbours)
    order, previous, current = [start], None, start
    while True:
        nxt = next(n for n in neighbours[current] if n != previous)
        if nxt == start:
            break
        order.append(nxt)
        previous, current = current, nxt
    return tuple(order)


def square_box_around(
    box: tuple[float, float, float, float], width: int, height: int, scale: float
) -> list[int]:
    """Square ``[x0, y0, side]`` centred on ``box``, ``scale`` x its larger side, kept in the image.

    The square is shifted (not shrunk) to stay inside the image, and shrunk only when the image
    itself is smaller than the wanted side.
    """
    x, y, w, h = box
    side = int(round(min(max(w, h) * scale, width, height)))
    side = max(side, 1)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0.0), width - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0.0), height - side)))
    return [x0, y0, side]


def centre_square(width: int, height: int) -> list[int]:
    """The largest centred square ``[x0, y0, side]``."""
    side = min(width, height)
    return [(width - side) // 2, (height - side) // 2, side]


def crop_resize(rgb: np.ndarray, crop_box: list[int], resolution: int) -> np.ndarray:
    """Cut ``crop_box`` out of ``rgb`` and resize it to ``resolution`` x ``resolution``."""
    x0, y0, side = crop_box
    patch = rgb[y0 : y0 + side, x0 : x0 + side]
    interpolation = cv2.INTER_AREA if side >= resolution else cv2.INTER_CUBIC
    resized = cv2.resize(patch, (resolution, resolution), interpolation=interpolation)
    return np.ascontiguousarray(resized)


def face_mask(
    points: np.ndarray, size: int, dilation: float = 0.0, feather: float = 0.0
) -> np.ndarray:
    """Face-region mask (uint8, 255 = face) from 478 mesh points in a ``size`` x ``size`` image.

    Args:
        points: mesh points in pixels of the image the mask is for.
        size: side of the (square) mask.
        dilation: grow (> 0) or shrink (< 0) the region by this fraction of the face size.
        feather: Gaussian blur sigma as a fraction of the face size (0 = hard edge).
    """
    polygon = points[list(face_oval_index())]
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return _grow_and_soften(mask, dilation, feather)


def ellipse_mask(
    box: tuple[float, float, float, float], size: int, dilation: float = 0.0, feather: float = 0.0
) -> np.ndarray:
    """Fallback face mask when the mesh finds nothing: the ellipse inscribed in a detection box."""
    x, y, w, h = box
    mask = np.zeros((size, size), dtype=np.uint8)
    centre = (int(round(x + w / 2.0)), int(round(y + h / 2.0)))
    axes = (max(1, int(round(w / 2.0))), max(1, int(round(h / 2.0))))
    cv2.ellipse(mask, centre, axes, 0.0, 0.0, 360.0, 255, -1, cv2.LINE_AA)
    return _grow_and_soften(mask, dilation, feather)


def box_mask(
    boxes: list[tuple[float, float, float, float]],
    size: int,
    dilation: float = 0.0,
    feather: float = 0.0,
) -> np.ndarray:
    """Mask of whole detection boxes (255 inside), for a face the mesh could not outline.

    The box, not the inscribed ellipse: on a reference image the face must stay out of the style
    region, so the cruder shape errs on the side of masking too much.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(size, int(np.ceil(x + w))), min(size, int(np.ceil(y + h)))
        mask[y0:y1, x0:x1] = 255
    return _grow_and_soften(mask, dilation, feather)


def _grow_and_soften(mask: np.ndarray, dilation: float, feather: float) -> np.ndarray:
    if dilation == 0.0 and feather <= 0.0:
        return mask
    face_size = float(np.sqrt(max(np.count_nonzero(mask > 127), 1)))
    radius = int(round(abs(dilation) * face_size))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel) if dilation > 0 else cv2.erode(mask, kernel)
    sigma = feather * face_size
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return mask


def latent_mask(mask: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """The mask at latent resolution (area-averaged, so soft at the edges)."""
    size = max(1, mask.shape[0] // factor)
    return np.ascontiguousarray(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA))


def landmarks5(points: np.ndarray) -> np.ndarray:
    """The 5 ArcFace points ``(5, 2)`` from 478 mesh points, in the same pixel frame."""
    return points[list(LANDMARKS5_MESH_INDEX)].astype(np.float32)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grayscale image (higher = sharper).

    The 3x3 Laplacian of 8-bit grey fits int16 exactly, and its sum and sum of squares are
    exact in float64, so this equals the float64 Laplacian's ``.var()`` at ~1/8 of the cost.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    laplacian = cv2.Laplacian(gray, cv2.CV_16S)
    count = float(laplacian.size)
    mean = cv2.sumElems(laplacian)[0] / count
    return max(0.0, cv2.norm(laplacian, cv2.NORM_L2SQR) / count - mean * mean)


def phash(rgb: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> str:
    """Perceptual hash (DCT pHash) as a hex string of ``hash_size**2`` bits.

    Grayscale, area-resize to 32x32, 2-D DCT, keep the lowest 8x8 frequencies, one bit per
    coefficient: above the median of those coefficients (DC term excluded from the median).
    """
    side = hash_size * highfreq_factor
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:hash_size, :hash_size]
    median = float(np.median(low.flatten()[1:]))
    bits = (low > median).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{hash_size * hash_size // 4}x}"


def hamming(hash_a: str, hash_b: str) -> int:
    """Number of differing bits between two hex hashes of equal length."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()


def overlay(
    crop: np.ndarray,
    mask: np.ndarray,
    *,
    box: tuple[float, float, float, float] | None = None,
    points: np.ndarray | None = None,
    alpha: float = 0.45,
    colour: tuple[int, int, int] = (0, 200, 80),
) -> np.ndarray:
    """The crop with the mask tinted, its outline drawn, the face box and the 5 landmarks."""
    tint_weight = mask.astype(np.float32) * (alpha / 255.0)
    tint = np.empty_like(crop)
    tint[:] = colour
    out = cv2.blendLinear(crop, tint, 1.0 - tint_weight, tint_weight)
    thickness = max(1, crop.shape[0] // 256)
    contours, _ = cv2.findContours(
        (mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(out, contours, -1, colour, thickness, cv2.LINE_AA)
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 200, 0), thickness, cv2.LINE_AA)
    if points is not None:
        radius = max(2, crop.shape[0] // 128)
        for (px, py), dot in zip(points, _LANDMARK_COLOURS, strict=False):
            cv2.circle(out, (int(round(px)), int(round(py))), radius, dot, -1, cv2.LINE_AA)
    return out


# left eye red, right eye blue, nose yellow, mouth corners magenta / cyan
_LANDMARK_COLOURS = ((230, 40, 40), (40, 90, 230), (250, 230, 40), (230, 40, 230), (40, 230, 230))


def _box_in_crop(
    box: tuple[float, float, float, float], crop_box: list[int], resolution: int
) -> tuple[float, float, float, float]:
    x0, y0, side = crop_box
    s = resolution / side
    return ((box[0] - x0) * s, (box[1] - y0) * s, box[2] * s, box[3] * s)


def _detection_in_crop(detection: Detection, crop_box: list[int], resolution: int) -> Detection:
    """``detection`` moved from image pixels to the pixels of the resized crop."""
    x0, y0, side = crop_box
    s = resolution / side
    return Detection(
        detection.score,
        _box_in_crop(detection.box, crop_box, resolution),
        tuple(((x - x0) * s, (y - y0) * s) for x, y in detection.keypoints),
    )


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
    in_crop = _detection_in_crop(main, crop_box, resolution)
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
    from magicapture_pipeline.core.faces.images import ImageDecodeError, decode_image
    from magicapture_pipeline.core.identity.embedders import DlibFaceEmbedder, distances_to_centre

    out = ProcessedSet(rows=[], crops={}, masks={}, overlays={})
    embedder = DlibFaceEmbedder() if config.identity_backend == "dlib" else None
    embeddings: dict[str, np.ndarray] = {}
    with FaceAnalyzer(config.detection_model, config.min_detection_confidence,
                      config.min_mesh_confidence, config.max_mesh_faces) as analyzer:
        for role in ("source", "reference"):
            for file_id, raw in sorted(raw_sets.get(role, {}).items()):
                row: dict[str, Any] = {"id": file_id, "role": role, "path": raw.path}
                try:
                    rgb = decode_image(raw, min_side=config.min_image_side,
                                       max_pixels=config.max_image_pixels,
                                       max_side=config.max_decode_side)
                except ImageDecodeError as err:
                    row.update(_failed_row(f"{err.rule}: {err.detail}"))
                    out.rows.append(row)
                    continue
                result = _analyze_one(rgb, role, analyzer, config)
                key = f"{role}/{file_id}"
                row.update({"width": rgb.shape[1], "height": rgb.shape[0], "phash": phash(rgb)})
                row.update(result.row())
                out.crops[key] = result.crop
                out.masks[f"image/{key}"] = result.mask
                out.masks[f"latent/{key}"] = result.latent_mask
                out.overlays[key] = result.overlay
                if embedder is not None and role == "source" and result.n_faces > 0:
                    vector = embedder.embed(rgb, _to_image_frame(result, config.resolution))
                    if vector is not None:
                        embeddings[file_id] = vector
                out.rows.append(row)
    distances = distances_to_centre(embeddings)
    for row in out.rows:
        value = distances.get(row["id"]) if row["role"] == "source" else None
        row["identity_distance"] = round(value, 4) if value is not None else None
    return out


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


def measure_throughput(
    images: list[np.ndarray], resolution: int = 512, repeats: int = 5
) -> dict[str, float]:
    """Images per second of the face stage on decoded images (decoding excluded).

    ``detect_mesh_mask``: detection, square crop, mesh and image + latent masks (the path of
    :func:`analyze_source`); ``full``: everything :func:`analyze_source` does, plus the overlay
    and the pHash preprocessing adds per image. Both reuse one :class:`FaceAnalyzer`, as
    preprocessing does; a first pass warms it up, then each rate is the median over ``repeats``
    timed passes (robust to other work on the machine).
    """
    import statistics
    import time

    def core(rgb: np.ndarray, analyzer: FaceAnalyzer) -> None:
        found = analyzer.detect(rgb)
        if not found:
            return
        crop_box = square_box_around(found[0].box, rgb.shape[1], rgb.shape[0], 2.2)
        crop = crop_resize(rgb, crop_box, resolution)
        points = analyzer.mesh_at(crop, _detection_in_crop(found[0], crop_box, resolution))
        if points is not None:
            latent_mask(face_mask(points, resolution))

    def full(rgb: np.ndarray, analyzer: FaceAnalyzer) -> None:
        _ = analyze_source(rgb, analyzer, resolution).overlay
        phash(rgb)

    rates = {}
    with FaceAnalyzer() as analyzer:
        for name, step in (("detect_mesh_mask", core), ("full", full)):
            for rgb in images:
                step(rgb, analyzer)
            passes = []
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                for rgb in images:
                    step(rgb, analyzer)
                passes.append(time.perf_counter() - start)
            rates[name] = len(images) / statistics.median(passes)
    return rates


def measure_stages(
    rgb: np.ndarray, resolution: int = 512, repeats: int = 30
) -> dict[str, float]:
    """Median milliseconds of each part of :func:`analyze_source` on one decoded image.

    Keys: ``detect``, ``crop``, ``mesh`` (on the crop, from the detection), ``mask`` (image +
    latent mask), ``sharpness``, ``analyze_source`` (all of it), and the reporting extras
    ``overlay`` and ``phash``. For finding where the time goes; the image needs a face.
    """
    import statistics
    import time

    def median_ms(step: Any) -> float:
        step()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    height, width = rgb.shape[:2]
    with FaceAnalyzer() as analyzer:
        found = analyzer.detect(rgb)
        if not found:
            raise ValueError("measure_stages needs an image with a face")
        crop_box = square_box_around(found[0].box, width, height, 2.2)
        crop = crop_resize(rgb, crop_box, resolution)
        in_crop = _detection_in_crop(found[0], crop_box, resolution)
        points = analyzer.mesh_at(crop, in_crop)
        if points is None:
            raise ValueError("measure_stages needs an image the mesh finds a face in")
        mask = face_mask(points, resolution)
        result = analyze_source(rgb, analyzer, resolution)
        options = result.overlay_options
        return {
            "detect": median_ms(lambda: analyzer.detect(rgb)),
            "crop": median_ms(lambda: crop_resize(rgb, crop_box, resolution)),
            "mesh": median_ms(lambda: analyzer.mesh_at(crop, in_crop)),
            "mask": median_ms(lambda: latent_mask(face_mask(points, resolution))),
            "sharpness": median_ms(lambda: sharpness(crop)),
            "analyze_source": median_ms(lambda: analyze_source(rgb, analyzer, resolution)),
            "overlay": median_ms(lambda: overlay(crop, mask, **options)),
            "phash": median_ms(lambda: phash(rgb)),
        }
