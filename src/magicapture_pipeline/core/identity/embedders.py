"""Face embeddings for identity checks (not differentiable; the identity *loss* lives in losses.py).

Two backends share one small interface, ``embed(image_rgb, landmarks5=None) -> vector | None`` and
a ``backend`` name:

* :class:`DlibFaceEmbedder` ("dlib"): dlib's ResNet face descriptor (128-d) with the model files of
  ``face_recognition_models``; fully offline. HOG detection with ``upsample=0`` (upsampling found
  false faces on the astronaut's mission patch). dlib calls two faces the same person below an L2
  distance of 0.6.
* :class:`ArcFaceOnnxEmbedder` ("arcface"): an ArcFace ONNX file the user provides (e.g. the
  recognition model of insightface's ``buffalo_l`` pack), run through insightface, on the face
  aligned with its 5 landmarks by ``face_align.norm_crop`` (512-d, L2-normalised).

dlib's models are loaded once per process and shared by its embedders (:func:`_dlib_models`);
an ArcFace model once per embedder object: reuse it for a whole image set.
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold for its 128-d descriptor


def _landmarks_or_found(finder, image_rgb: np.ndarray, landmarks5):
    """The given 5 points, else what ``finder`` finds on the image (None: no face / no finder)."""
    if landmarks5 is None and finder is not None:
        return finder(image_rgb)
    return landmarks5


def _unit(feature: np.ndarray) -> np.ndarray:
    """``feature`` scaled to unit L2 norm (a zero vector stays zero)."""
    norm = float(np.linalg.norm(feature))
    return feature / norm if norm > 0 else feature


class FaceEmbedder(Protocol):
    """What CSIM and the same-person validation rule need from a face embedding model."""

    backend: str

    def embed(
        self, image_rgb: np.ndarray, landmarks5: np.ndarray | None = None
    ) -> np.ndarray | None:
        """The face's embedding, or None when no face can be found."""
        ...


@functools.cache
def _dlib_models() -> tuple:
    """dlib's HOG detector, 5-point shape predictor and ResNet encoder, loaded once per process
    (about 0.6 CPU s; a customize run makes four embedders: validation, two training
    validations, evaluation), with a lock every use holds: dlib's network keeps its layer
    outputs in the object, so two threads must never run it at once should a binding release
    the GIL (dlib 20.0's holds it: eight threaded embeds without the lock were exact)."""
    import dlib
    import face_recognition_models as models

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(models.pose_predictor_five_point_model_location()),
        dlib.face_recognition_model_v1(models.face_recognition_model_location()),
        threading.Lock(),
    )


class DlibFaceEmbedder:
    """dlib 128-d face descriptor (HOG detector, 5-point aligner, ResNet), loaded once.

    Args:
        num_jitters: dlib re-samples the face this many times and averages (1 = fastest).
        fallback_to_landmarks: when HOG finds no face but ``landmarks5`` is given, use the box
            around those landmarks as the face rectangle (small crops defeat HOG).
    """

    backend = "dlib"

    def __init__(self, num_jitters: int = 1, fallback_to_landmarks: bool = True) -> None:
        import dlib

        self.num_jitters = num_jitters
        self.fallback_to_landmarks = fallback_to_landmarks
        self._dlib = dlib
        self._detector, self._shape, self._encoder, self._lock = _dlib_models()

    def face_rectangle(self, image_rgb: np.ndarray, landmarks5: np.ndarray | None = None):
        """The HOG face (upsample 0) holding ``landmarks5``, else a box around them.

        Without landmarks: the largest HOG face, or None. With landmarks, a HOG face elsewhere
        (HOG sees false faces, e.g. on the astronaut's mission patch) is never chosen.
        """
        with self._lock:
            faces = list(self._detector(image_rgb, 0))
        if landmarks5 is None:
            return max(faces, key=lambda r: r.width() * r.height()) if faces else None
        points = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
        cx, cy = points.mean(axis=0)
        holding = [r for r in faces if r.left() <= cx <= r.right() and r.top() <= cy <= r.bottom()]
        if holding:
            return max(holding, key=lambda r: r.width() * r.height())
        if not self.fallback_to_landmarks:
            return None
        eyes_to_mouth = float(np.linalg.norm(points[3:].mean(0) - points[:2].mean(0)))
        eye_gap = float(np.linalg.norm(points[1] - points[0]))
        half = 1.1 * max(eyes_to_mouth, eye_gap)
        return self._dlib.rectangle(
            int(round(cx - half)), int(round(cy - half)), int(round(cx + half)),
            int(round(cy + half)),
        )

    def embed(
        self, image_rgb: np.ndarray, landmarks5: np.ndarray | None = None
    ) -> np.ndarray | None:
        """128-d descriptor of the face at ``landmarks5`` (else the largest face), or None."""
        image_rgb = np.ascontiguousarray(image_rgb, dtype=np.uint8)
        rect = self.face_rectangle(image_rgb, landmarks5)
        if rect is None:
            return None
        with self._lock:
            shape = self._shape(image_rgb, rect)
            descriptor = self._encoder.compute_face_descriptor(image_rgb, shape, self.num_jitters)
        return np.asarray(descriptor, dtype=np.float32)


class ArcFaceOnnxEmbedder:
    """ArcFace (512-d) from a user-provided ONNX file through insightface, CPU.

    Args:
        model_path: an ArcFace recognition ONNX (input 1x3x112x112), e.g. ``w600k_r50.onnx``.
        landmark_finder: called as ``landmark_finder(image_rgb)`` to get 5 points when ``embed``
            is given none (e.g. mesh landmarks from
            :mod:`magicapture_pipeline.core.faces.detection`).
    """

    backend = "arcface"

    def __init__(self, model_path: str | Path, landmark_finder=None) -> None:
        from insightface import model_zoo

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ArcFace ONNX not found: {path}")
        model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
        if model is None or not hasattr(model, "get_feat"):
            raise ValueError(f"{path}: not an ArcFace recognition model (input 1x3x112x112)")
        model.prepare(ctx_id=-1)
        self.model = model
        self.landmark_finder = landmark_finder

    def embed(
        self, image_rgb: np.ndarray, landmarks5: np.ndarray | None = None
    ) -> np.ndarray | None:
        """L2-normalised 512-d embedding of the face at ``landmarks5`` (ArcFace order)."""
        from insightface.utils import face_align

        landmarks5 = _landmarks_or_found(self.landmark_finder, image_rgb, landmarks5)
        if landmarks5 is None:
            return None
        points = np.asarray(landmarks5, dtype=np.float32).reshape(5, 2)
        # insightface works on BGR images (cv2 convention) and swaps to RGB itself.
        bgr = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8)[..., ::-1])
        with warnings.catch_warnings():  # insightface calls a deprecated scikit-image API
            warnings.simplefilter("ignore", FutureWarning)
            aligned = face_align.norm_crop(
                bgr, landmark=points, image_size=self.model.input_size[0]
            )
        feature = np.asarray(self.model.get_feat(aligned), dtype=np.float32).reshape(-1)
        return _unit(feature)


def l2_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity between two embeddings (1 = same direction)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denominator) if denominator > 0 else 0.0


def distances_to_centre(embeddings: dict[str, np.ndarray]) -> dict[str, float]:
    """Each embedding's L2 distance to the element-wise median of the set (robust to outliers).

    With one or two embeddings the median is their mean, so each photo's distance is half the
    pair's distance; a single photo has distance 0.
    """
    if not embeddings:
        return {}
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in embeddings.values()])
    centre = np.median(stacked, axis=0)
    return {key: l2_distance(vector, centre) for key, vector in embeddings.items()}


class IResNetEmbedder:
    """The identity loss's own network (an arcface_torch IResNet) as a ``FaceEmbedder``.

    Used to tell whether the CSIM recognizer is the network the identity loss (Eq. 7) trained
    against: the face is aligned with the same differentiable warp the loss uses
    (``core.arcface.align_faces``), so the two see the same 112x112 crop.

    Args:
        model: a loaded IResNet (``core.arcface.load_arcface``) or any module mapping
            ``(B, 3, 112, 112)`` in ``[-1, 1]`` to ``(B, D)``.
    """

    backend = "arcface_loss"

    def __init__(self, model, landmark_finder=None) -> None:
        self.model = model.eval()
        self.landmark_finder = landmark_finder

    def embed(
        self, image_rgb: np.ndarray, landmarks5: np.ndarray | None = None
    ) -> np.ndarray | None:
        """L2-normalised embedding of the face at ``landmarks5`` (None without landmarks)."""
        import torch

        from magicapture_pipeline.core.identity.arcface import align_faces

        landmarks5 = _landmarks_or_found(self.landmark_finder, image_rgb, landmarks5)
        if landmarks5 is None:
            return None
        pixels = torch.from_numpy(np.asarray(image_rgb, dtype=np.float32)).permute(2, 0, 1)
        images = (pixels / 127.5 - 1.0).unsqueeze(0)
        points = torch.as_tensor(np.asarray(landmarks5, np.float32).reshape(1, 5, 2))
        with torch.no_grad():
            feature = self.model(align_faces(images, points)).float().reshape(-1).numpy()
        return _unit(feature)
