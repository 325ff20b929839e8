"""The style metric as evaluation uses it (issue 18 §5): from the catalog's face set through
``scoring.evaluate`` to the CLIP input, with real mediapipe face masks of a real photo and a real
(tiny, random) CLIP tower. Only the metric function had tests; these pin its wiring.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
from skimage import data

from magicapture_pipeline.core.evaluation import style
from magicapture_pipeline.core.evaluation.protocol import MetricModels
from magicapture_pipeline.core.evaluation.scoring import evaluate
from magicapture_pipeline.core.faces.face_set import EvaluationInputs, FaceSet
from magicapture_pipeline.core.faces.regions import FaceRegions
from tiny_concept import tiny_clip_vision

SIDE = 256


class RecordingClip(style.ClipEmbedder):
    """The real tiny CLIP embedder, keeping a copy of every image it is given."""

    def embed(self, images):
        self.seen = [*getattr(self, "seen", []), *(np.asarray(i.convert("RGB")) for i in images)]
        return super().embed(images)


def _reference_mask() -> Image.Image:
    """An off-centre, asymmetric face mask for the reference (the top-left region)."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[20:120, 30:100] = 255
    return Image.fromarray(mask, mode="L")


@pytest.fixture(scope="module")
def faces():
    regions = FaceRegions()
    yield regions
    regions.close()


def test_evaluation_scores_style_on_face_masked_generated_and_reference_images(faces):
    """Both sides of the style score reach CLIP with their face masked: the generated image with
    the mask mediapipe finds on it, the reference with its face mask from the catalog
    (``face_masks`` ``image/reference/<id>``). Breaks caught: the generated masks dropped in
    ``protocol.evaluate_images`` (``masks = {}``) and the reference masks dropped in
    ``scoring.score_images`` (``reference_masks=None``)."""
    generated = Image.fromarray(data.astronaut()).resize((SIDE, SIDE))
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        reference = Image.open(handle).convert("RGB").resize((SIDE, SIDE))
    training_set = {
        "items": [
            {"id": "s0", "role": "source", "landmarks5": None},
            {"id": "r0", "role": "reference", "landmarks5": None},
        ],
        "resolution": SIDE,
    }
    crops = {"source/s0": generated.copy(), "reference/r0": reference}
    masks = {"image/reference/r0": _reference_mask()}
    inputs = EvaluationInputs.from_face_set(FaceSet.from_catalog(training_set, crops, masks))
    clip = RecordingClip(*tiny_clip_vision())
    models = MetricModels(
        identity=(None, "not under test"),
        clip=(clip, None),
        aesthetic=(None, "not under test"),
        faces=faces,
    )
    metrics, rows = evaluate(
        {"generated": {"g0": generated}}, inputs, models,
        mask_face_for_style=True, loss_record={},
    )  # fmt: skip

    generated_mask = faces.mask(generated)
    assert generated_mask is not None  # the astronaut's face is found
    want_reference = np.asarray(style.mask_out(reference, _reference_mask()))
    want_generated = np.asarray(style.mask_out(generated, generated_mask))
    for want, plain in ((want_reference, reference), (want_generated, generated)):
        assert (want != np.asarray(plain)).any(axis=-1).mean() > 0.02  # the mask hides pixels
        assert any(np.array_equal(want, seen) for seen in clip.seen), "CLIP saw it unmasked"
    assert not any(np.array_equal(np.asarray(generated), seen) for seen in clip.seen)
    assert not any(np.array_equal(np.asarray(reference), seen) for seen in clip.seen)
    assert rows[0]["style_face_masked"] is True
    assert isinstance(metrics["style_similarity"], float)
