"""Best-step selection during training (issue 20): a scripted metric sequence through a stand-in
scorer and the real selection code (core.training.validation)."""

from __future__ import annotations

import pytest

from magicapture_pipeline.core.training.validation import Objective, Validator

HELD = "csim_arcface_heldout"
GAP = "copy_check_arcface_gap"


def _scripted(rows: dict[int, dict[str, float]]):
    """A stand-in scorer returning the scripted metrics of each step and a fake grid."""

    def scorer(step: int):
        return dict(rows[step]), {"grid": f"image@{step}"}

    return scorer


def _m(held: float, style: float = 0.8, gap: float = 0.0, **extra: float) -> dict[str, float]:
    return {HELD: held, f"{HELD}_se": 0.01, "style_similarity": style, GAP: gap, **extra}


def _run(rows, **kwargs) -> Validator:
    validator = Validator(every_n_steps=10, scorer=_scripted(rows), **kwargs)
    for step in sorted(rows):
        assert validator.due(step)
        validator.run(step)
    return validator


def test_best_is_highest_heldout_identity_earlier_step_wins_ties():
    rows = {10: _m(0.30), 20: _m(0.50), 30: _m(0.50), 40: _m(0.45)}
    validator = _run(rows)
    assert validator.best.step == 20  # 30 ties with 20: the earlier step is kept
    assert validator.best.value == 0.50
    assert [r["best_step"] for r in validator.history] == [10, 20, 20, 20]
    assert [r["step"] for r in validator.history] == [10, 20, 30, 40]
    assert validator.images[30] == {"grid": "image@30"}
    assert validator.export_step("best", 40) == (20, validator.export_step("best", 40)[1])
    assert validator.export_step("best", 40)[1].startswith("export: best")
    assert validator.export_step("last", 40) == (40, "export: last")


def test_style_constraint_rejects_a_step_that_forgot_the_style():
    # step 30 has the best identity but its style fell below 0.9 x the best style (0.8)
    rows = {10: _m(0.30, style=0.80), 20: _m(0.40, style=0.78), 30: _m(0.60, style=0.70)}
    validator = _run(rows)
    assert validator.best.step == 20
    assert validator.history[2]["eligible"] is False
    assert "style_similarity" in validator.history[2]["reason"]
    # with a looser fraction the same step is chosen
    loose = _run(rows, objective=Objective(style_fraction=0.85))
    assert loose.best.step == 30


def test_copy_constraint_rejects_a_step_that_copies_the_training_photos():
    rows = {10: _m(0.30), 20: _m(0.70, gap=0.20), 30: _m(0.35, gap=0.01)}
    validator = _run(rows)
    assert validator.best.step == 30
    assert GAP in validator.history[1]["reason"]


def test_early_stop_after_patience_validations_without_improvement():
    rows = {10: _m(0.30), 20: _m(0.50), 30: _m(0.49), 40: _m(0.50), 50: _m(0.55)}
    validator = Validator(every_n_steps=10, scorer=_scripted(rows), patience=2)
    stopped_at = None
    for step in sorted(rows):
        validator.run(step)
        if validator.should_stop():
            stopped_at = step
            break
    assert stopped_at == 40  # 30 and 40 did not beat 20 (40 only tied it)
    assert validator.best.step == 20
    never = _run(rows, patience=0)
    assert never.should_stop() is False and never.best.step == 50


def test_missing_objective_is_never_best_and_export_falls_back_to_last():
    rows = {10: {"style_similarity": 0.8}, 20: {"style_similarity": 0.8}}
    validator = _run(rows)
    assert validator.best.step is None
    step, why = validator.export_step("best", 20)
    assert step == 20 and "last" in why and "not computed" in why


def test_state_round_trip_continues_history_and_best():
    rows = {10: _m(0.30), 20: _m(0.50), 30: _m(0.40), 40: _m(0.60)}
    first = Validator(every_n_steps=10, scorer=_scripted(rows), patience=3)
    for step in (10, 20, 30):
        first.run(step)
    resumed = Validator(every_n_steps=10, scorer=_scripted(rows), patience=3)
    resumed.load_state(first.state())
    resumed.run(40)
    whole = _run(rows, patience=3)
    assert resumed.history == whole.history
    assert resumed.best == whole.best


@pytest.mark.parametrize("every,step,due", [(0, 10, False), (5, 10, True), (5, 12, False)])
def test_due(every, step, due):
    assert Validator(every_n_steps=every, scorer=_scripted({})).due(step) is due
