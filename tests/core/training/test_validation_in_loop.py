"""Validation inside the real training loop (issue 20): the schedule, the best step's checkpoint
survives keep-last-K, a resume continues the history and best-so-far, early stop ends the stage.

The scorer is a stand-in (scripted metrics per step) that also snapshots the trainer's real
placeholder rows at the moment it is called; the loop, checkpoints and selection are the real code.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_pair
from magicapture_pipeline.config.training import StageOneConfig
from magicapture_pipeline.core.models.loading import load_components
from magicapture_pipeline.core.training import StageOneTrainer, TrainingExample, checkpoints
from magicapture_pipeline.core.training.validation import Validator, apply_export

RES = 32
SETTINGS = {"max_steps": 6, "gradient_accumulation_steps": 1, "mixed_precision": "no",
            "lr_scheduler": "linear", "hflip": False, "checkpoint_every": 0}  # fmt: skip
# held-out identity per validated step: step 4 is the best, 6 is the last
SCRIPT = {2: 0.30, 4: 0.60, 6: 0.40}


@pytest.fixture(scope="module")
def tiny_dir(tiny_sd):
    return tiny_sd(sample_size=RES)


def _examples() -> list[TrainingExample]:
    return make_pair(RES, (1, 3), (2, 4))  # an asymmetric face box


def rows_image(rows: torch.Tensor) -> Image.Image:
    """The placeholder rows as pixels: each validated step's image differs as its weights do."""
    values = rows.flatten()[:48].float()
    scaled = (values - values.min()) / (values.max() - values.min() + 1e-12) * 255
    return Image.fromarray(scaled.round().to(torch.uint8).reshape(4, 4, 3).numpy(), "RGB")


def _trainer(tiny_dir, script=SCRIPT, patience=0, **overrides):
    trainer = StageOneTrainer(
        load_components(tiny_dir), _examples(), StageOneConfig(**{**SETTINGS, **overrides})
    )
    seen: dict[int, torch.Tensor] = {}

    def scorer(step: int):
        seen[step] = trainer.placeholder_rows.params()[0].detach().clone()
        metrics = {"csim_arcface_heldout": script[step], "style_similarity": 0.8}
        return metrics, {"grid": rows_image(seen[step]), "p00_seed0": Image.new("L", (2, 1), step)}

    trainer.validator = Validator(every_n_steps=2, scorer=scorer, patience=patience)
    return trainer, seen


def test_best_checkpoint_survives_keep_last_k_and_holds_the_validated_weights(tiny_dir, tmp_path):
    trainer, seen = _trainer(tiny_dir, checkpoint_dir=str(tmp_path), keep_checkpoints=1)
    trainer.train(progress=False)
    validator = trainer.validator
    assert [row["step"] for row in validator.history] == [2, 4, 6]
    assert validator.best.step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    saved = load_file(tmp_path / "checkpoint-4" / "trainable.safetensors")["placeholder_rows"]
    assert torch.equal(saved, seen[4])
    assert not torch.equal(seen[4], seen[6])  # the rows moved after the best step
    assert validator.export_step("best", trainer.global_step)[0] == 4


def test_resume_continues_the_history_and_the_best(tiny_dir, tmp_path):
    straight, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path / "a"))
    straight.train(progress=False)
    crashed, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path / "b"))
    crashed.train(progress=False, until=4)
    resumed, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path / "b"), resume=True)
    resumed.train(progress=False)
    assert resumed.validator.history == straight.validator.history
    assert resumed.validator.best == straight.validator.best
    # the images of the steps validated before the interruption (2, 4) come back from checkpoint
    # 4, pixel for pixel, and a resumed run's outputs hold every step's (issue 20)
    assert sorted(resumed.validator.images) == [2, 4, 6]
    for step, named in straight.validator.images.items():
        assert sorted(resumed.validator.images[step]) == sorted(named), step
        for name, image in named.items():
            got = resumed.validator.images[step][name]
            assert (got.mode, got.size, got.tobytes()) == (image.mode, image.size, image.tobytes())
    grids = [straight.validator.images[s]["grid"].tobytes() for s in (2, 4)]
    assert grids[0] != grids[1]  # the steps' images differ, so a swap would show
    assert resumed.history == straight.history
    assert torch.equal(resumed.placeholder_rows.params()[0], straight.placeholder_rows.params()[0])


def test_checkpoint_images_are_checked_and_shared_with_the_previous_checkpoint(tiny_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path), keep_checkpoints=0)
    trainer.train(progress=False)
    image = "validation_images/step_000002/grid.png"
    # step 2's image in checkpoint 4 is checkpoint 2's file (one copy on disk), listed in the
    # manifest; checkpoint 2 holds no image of a later step
    assert (tmp_path / "checkpoint-4" / image).samefile(tmp_path / "checkpoint-2" / image)
    state = json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())
    assert {f"validation_images/step_{s:06d}/grid.png" for s in (2, 4, 6)} <= set(state["files"])
    assert not (tmp_path / "checkpoint-2" / "validation_images" / "step_000004").exists()
    # a damaged image makes its checkpoint unusable: the resume falls back to the one before
    newest = tmp_path / "checkpoint-6" / "validation_images" / "step_000006" / "grid.png"
    newest.write_bytes(newest.read_bytes()[:-3])
    resumed, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path), resume=True)
    assert checkpoints.resume_newest(resumed, str(tmp_path)).name == "checkpoint-4"
    assert sorted(resumed.validator.images) == [2, 4]


def test_a_validation_image_that_is_no_image_is_refused_by_name(tiny_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, checkpoint_dir=str(tmp_path))
    trainer.validator.scorer = lambda step: ({"csim_arcface_heldout": 0.1}, {"grid": step})
    with pytest.raises(TypeError, match="validation_images/step_000002/grid.png is a int"):
        trainer.train(progress=False)


def test_early_stop_ends_the_stage_after_patience_validations(tiny_dir):
    trainer, _ = _trainer(tiny_dir, script={2: 0.5, 4: 0.4, 6: 0.9}, patience=1)
    trainer.train(progress=False)
    assert trainer.global_step == 4
    assert [row["step"] for row in trainer.validator.history] == [2, 4]


@pytest.mark.parametrize("export,step", [("best", 4), ("last", 6)])
def test_export_puts_the_chosen_steps_weights_in_the_trainer(tiny_dir, tmp_path, export, step):
    trainer, seen = _trainer(tiny_dir, checkpoint_dir=str(tmp_path), keep_checkpoints=1)
    trainer.train(progress=False)
    record = apply_export(trainer, str(tmp_path), export)
    assert record["exported_step"] == step
    assert record["export_reason"].startswith(f"export: {export}")
    assert torch.equal(trainer.placeholder_rows.params()[0], seen[step])
    saved = load_file(tmp_path / f"checkpoint-{step}" / "trainable.safetensors")
    assert torch.equal(trainer.placeholder_rows.params()[0], saved["placeholder_rows"])
    # the embedding matrix the stage's result reads holds the exported rows too
    rows = trainer.placeholder_embeddings()
    assert torch.equal(torch.stack([rows[t] for t in trainer.tokens]), seen[step])


def test_train_stage_one_exports_the_best_step_and_records_why(tiny_dir, tmp_path):
    from magicapture_pipeline.core.training import train_stage_one

    seen: dict[int, torch.Tensor] = {}

    def make_validator(trainer):
        def scorer(step):
            seen[step] = trainer.placeholder_rows.params()[0].detach().clone()
            return {"csim_arcface_heldout": SCRIPT[step]}, {}

        return Validator(every_n_steps=2, scorer=scorer)

    config = StageOneConfig(**SETTINGS, checkpoint_dir=str(tmp_path),
                            validation={"every_n_steps": 2, "export": "best"})  # fmt: skip
    result = train_stage_one(
        load_components(tiny_dir), _examples(), config, progress=False, validator=make_validator
    )
    assert result.metadata["exported_step"] == 4
    assert "csim_*_heldout = 0.6000" in result.metadata["export_reason"]
    exported = torch.stack([result.embeddings[t] for t in ("<v1>", "<v2>")])
    assert torch.equal(exported, seen[4])
