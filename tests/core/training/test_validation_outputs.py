"""What a training node writes from its validator (issue 20): the history with the exported step
marked and why, the image partitions keyed by step; and how the tracking hook reads them back."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from magicapture_pipeline.core.training.validation import Validator, validation_outputs
from magicapture_pipeline.pipelines.shared import validation_history_frame
from magicapture_pipeline.tracking.validation import export_tags, images_by_step

SCRIPT = {10: 0.3, 20: 0.6, 30: 0.4}


def _validator() -> Validator:
    def scorer(step):
        return {"csim_dlib_heldout": SCRIPT[step]}, {"grid": Image.new("RGB", (4, 4), (step, 0, 0))}

    validator = Validator(every_n_steps=10, scorer=scorer, stage="stage_two")
    for step in SCRIPT:
        validator.run(step)
    return validator


def test_the_exported_step_is_marked_with_its_reason():
    validator = _validator()
    step, why = validator.export_step("best", 30)
    rows, images = validation_outputs(validator, {"exported_step": step, "export_reason": why})
    frame = validation_history_frame(rows)
    assert list(frame["step"]) == [10, 20, 30]
    assert list(frame["exported"]) == [0, 1, 0]
    assert frame.loc[1, "export_reason"].startswith("export: best, best csim_*_heldout = 0.6000")
    assert list(frame.columns[:8]) == ["stage", "step", "objective", "eligible", "best_step",
                                       "reason", "exported", "export_reason"]  # fmt: skip
    assert sorted(images) == ["step_000010/grid", "step_000020/grid", "step_000030/grid"]
    assert images["step_000020/grid"].getpixel((0, 0)) == (20, 0, 0)
    tags = export_tags("stage_two_validation", frame)
    assert tags["stage_two_validation.exported_step"] == "20"
    assert tags["stage_two_validation.export_reason"] == frame.loc[1, "export_reason"]


def test_an_exported_step_off_the_schedule_gets_its_own_row():
    rows, _ = validation_outputs(
        _validator(), {"exported_step": 35, "export_reason": "export: last"}
    )
    assert [(r["step"], r["exported"]) for r in rows] == [(10, 0), (20, 0), (30, 0), (35, 1)]
    assert rows[-1]["reason"] == "not validated" and rows[-1]["export_reason"] == "export: last"


def test_without_validation_the_table_has_its_columns_and_no_rows(tmp_path):
    rows, images = validation_outputs(None, {"exported_step": 5, "export_reason": "x"})
    assert (rows, images) == ([], {})
    frame = validation_history_frame(rows)
    frame.to_csv(tmp_path / "h.csv", index=False)
    again = pd.read_csv(tmp_path / "h.csv")
    assert again.empty and "exported" in again.columns
    assert export_tags("p", again) == {}


def test_image_partitions_back_to_steps_lazy_loaders_included():
    image = Image.new("RGB", (2, 2))
    steps = images_by_step({"step_000040/grid": lambda: image, "step_000005/p00_seed0": image})
    assert steps == {5: {"p00_seed0": image}, 40: {"grid": image}}
    with pytest.raises(ValueError, match="step_<step>/<name>"):
        images_by_step({"grid": image})


def test_a_heldout_objective_without_a_heldout_photo_stops_before_training():
    from types import SimpleNamespace

    from magicapture_pipeline.config.validation import ValidationConfig
    from magicapture_pipeline.core.training.validation_scoring import validation_setup

    inputs = SimpleNamespace(heldout=[], sources=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"stage_one.validation.objective .*3 accepted source"):
        validation_setup(ValidationConfig(every_n_steps=5), None, None, inputs, "stage_one")
    other = ValidationConfig(every_n_steps=5, objective="face_detected_rate")
    assert validation_setup(other, None, None, inputs, "stage_one").factory is not None
    assert validation_setup(ValidationConfig(), None, None, None, "stage_one").factory is None
