"""Face detection and the 478-point face mesh (mediapipe), and the 5 ArcFace landmarks.

Everything runs offline on the models bundled in mediapipe 0.10.21. One :class:`FaceAnalyzer`
holds the mediapipe graphs and is reused for a whole image set (building them per image would
cost more than running them).

Speed (issue 6): a source photo runs the full-range detector once; the 478-point mesh then runs
on the crop from the region that detection gives (mediapipe's own detection-to-ROI rule), so the
mesh does not detect the face a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

# Mesh indices of the 5 points ArcFace aligns on, in ArcFace order (image left to right as in
# insightface's template): eye on the image left, eye on the image right, nose tip, mouth corner on
# the image left, mouth corner on the image right. 468 / 473: iris centres (refine_landmarks).
LANDMARKS5_MESH_INDEX = (468, 473, 1, 61, 291)
DETECTION_MAX_SIDE = 1024  # detection runs on a copy this large at most (the model sees 192 px)


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



def landmarks5(points: np.ndarray) -> np.ndarray:
    """The 5 ArcFace points ``(5, 2)`` from 478 mesh points, in the same pixel frame."""
    return points[list(LANDMARKS5_MESH_INDEX)].astype(np.float32)
