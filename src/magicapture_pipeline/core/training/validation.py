"""Validation during training: when to validate, the history, and the best step to export.

The scorer (sampling + the evaluation protocol) is passed in by the caller, so this module holds
only the rule: every ``every_n_steps`` optimiser steps the trainer calls :meth:`Validator.run`,
which scores the current weights, appends a history row and updates the best-so-far.

The default objective is held-out identity (``csim_*_heldout``: generated faces against a source
photo training never saw), because identity on the training photos rewards copying them. Two
constraints keep it from choosing a step that bought identity with the concept's other goals:
style similarity must stay at or above ``style_fraction`` of its best so far (MagiCapture's
output is the person *in the style*; identity alone climbs as the style is forgotten), and the
copy check's gap must stay at or under ``copy_limit`` (a positive gap means generated faces sit
nearer to the training photos than to new photos of the person: copying).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from magicapture_pipeline.core.training.validation_images import STEP_PREFIX

HISTORY_COLUMNS = ("stage", "step", "objective", "eligible", "best_step", "reason")
EXPORT_COLUMNS = ("exported", "export_reason")


def resolve(pattern: str, metrics: Mapping[str, Any]) -> str | None:
    """The metric name matching ``pattern`` (``*`` wildcards, e.g. ``csim_*_heldout``); the
    shortest match wins (``csim_arcface_heldout`` before ``csim_arcface_heldout_se``)."""
    if pattern in metrics:
        return pattern
    matches = sorted(
        (k for k in metrics if fnmatch.fnmatchcase(k, pattern)), key=lambda k: (len(k), k)
    )
    return matches[0] if matches else None


def _number(metrics: Mapping[str, Any], pattern: str | None) -> float | None:
    if not pattern:
        return None
    name = resolve(pattern, metrics)
    if name is None:
        return None
    value = metrics[name]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


@dataclass
class Objective:
    """What "best" means: maximise ``metric`` subject to the style and copy constraints.

    A step is eligible when its objective metric was computed, its style similarity is at least
    ``style_fraction`` x the best style seen so far (skipped when ``style_metric`` is empty or
    was not computed), and its copy-check gap is at most ``copy_limit`` (skipped when
    ``copy_metric`` is empty or was not computed). Ties keep the earlier step (fewer steps
    trained, and a later equal score is no evidence of progress).
    """

    metric: str = "csim_*_heldout"
    style_metric: str = "style_similarity"
    style_fraction: float = 0.9
    copy_metric: str = "copy_check_*_gap"
    copy_limit: float = 0.05
    min_delta: float = 0.0

    def judge(
        self, metrics: Mapping[str, Any], best_style: float | None
    ) -> tuple[float | None, str]:
        """``(objective value or None, why)``; None = not eligible."""
        value = _number(metrics, self.metric)
        if value is None:
            return None, f"objective {self.metric} not computed"
        style = _number(metrics, self.style_metric)
        if style is not None and best_style is not None and best_style > 0:
            floor = self.style_fraction * best_style
            if style < floor:
                return None, (
                    f"{self.style_metric} {style:.4f} < {self.style_fraction} x best "
                    f"{best_style:.4f}"
                )
        copy = _number(metrics, self.copy_metric)
        if copy is not None and copy > self.copy_limit:
            name = resolve(self.copy_metric, metrics)
            return None, f"{name} {copy:.4f} > limit {self.copy_limit}"
        return value, "eligible"


@dataclass
class BestSoFar:
    """The best validation so far and the early-stop counter; a plain dict in checkpoints."""

    step: int | None = None
    value: float | None = None
    best_style: float | None = None
    since_improvement: int = 0
    reason: str = "no validation yet"

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "value": self.value,
            "best_style": self.best_style,
            "since_improvement": self.since_improvement,
            "reason": self.reason,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> BestSoFar:
        return cls(**dict(state)) if state else cls()


@dataclass
class Validator:
    """Runs the scorer on schedule, keeps the history and the best step.

    Args:
        every_n_steps: validate after every such optimiser step (0 = never).
        scorer: ``scorer(step) -> (metrics, images)``; metrics is the evaluation protocol's
            dict, images whatever the tracking side logs (a grid per prompt).
        objective: the selection rule.
        patience: stop after this many validations without improvement (0 = never).
        stage: written into each history row.
    """

    every_n_steps: int
    scorer: Callable[[int], tuple[dict[str, Any], dict[str, Any]]]
    objective: Objective = field(default_factory=Objective)
    patience: int = 0
    stage: str = "base"
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestSoFar = field(default_factory=BestSoFar)
    images: dict[int, dict[str, Any]] = field(default_factory=dict)

    def due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step % self.every_n_steps == 0

    def run(self, step: int) -> dict[str, Any]:
        """Score the weights at ``step``; returns the history row."""
        metrics, images = self.scorer(step)
        self.images[step] = images
        return self.record(step, metrics)

    def record(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``metrics`` of ``step`` to the history and update the best (the rule alone)."""
        best = self.best
        style = _number(metrics, self.objective.style_metric)
        if style is not None and (best.best_style is None or style > best.best_style):
            best.best_style = style
        value, why = self.objective.judge(metrics, best.best_style)
        improved = value is not None and (
            best.value is None or value > best.value + self.objective.min_delta
        )
        if improved:
            best.step, best.value, best.since_improvement = step, value, 0
            best.reason = f"best {self.objective.metric} = {value:.4f} ({why})"
        else:
            best.since_improvement += 1
            if best.step is None:
                best.reason = f"no eligible step: {why}"
        row = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        row.update(
            stage=self.stage,
            step=step,
            objective=value,
            eligible=value is not None,
            best_step=best.step,
            reason=why,
        )
        self.history.append(row)
        return row

    def should_stop(self) -> bool:
        """Early stop: ``patience`` validations in a row without improvement."""
        return self.patience > 0 and self.best.since_improvement >= self.patience

    def export_step(self, export: str, last_step: int) -> tuple[int, str]:
        """``(step, why)`` of the weights to export: ``best`` or ``last``."""
        if export == "last" or self.best.step is None:
            why = "export: last" if export == "last" else f"export: last ({self.best.reason})"
            return last_step, why
        return self.best.step, f"export: best, {self.best.reason}"

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores so a resume continues the history and the best."""
        return {"history": [dict(r) for r in self.history], "best": self.best.state()}

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        self.history = [dict(r) for r in state.get("history", [])]
        self.best = BestSoFar.from_state(state.get("best"))


def apply_export(trainer: Any, checkpoint_dir: str | None, export: str) -> dict[str, Any]:
    """Put the weights to export into ``trainer`` and say which step they are and why.

    ``export == "best"`` with a best step before the last: that step's checkpoint (written at
    every validated step, kept by keep-last-K) is loaded into the trainable tensors, so what the
    stage returns equals that checkpoint. Returns ``{"exported_step", "export_reason", "best"}``
    for concept.json and the run (without a validator: the last step, ``best`` absent).
    """
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from magicapture_pipeline.core.training.checkpoints import CHECKPOINT_PREFIX, TRAINABLE_FILE

    validator = getattr(trainer, "validator", None)
    if validator is None:
        return {
            "exported_step": trainer.global_step,
            "export_reason": "export: last (not validated)",
        }
    step, why = validator.export_step(export, trainer.global_step)
    if step != trainer.global_step:
        folder = Path(checkpoint_dir or "") / f"{CHECKPOINT_PREFIX}{step}"
        path = folder / TRAINABLE_FILE
        if not checkpoint_dir or not path.is_file():
            step, why = trainer.global_step, f"export: last (no checkpoint of step {step}: {path})"
        else:
            current = trainer._trainable()
            with torch.no_grad():
                for name, value in load_file(path).items():
                    current[name].copy_(value.to(current[name].device, current[name].dtype))
            trainer.placeholder_rows.sync()
    return {"exported_step": step, "export_reason": why, "best": validator.best.state()}


def validation_outputs(
    validator: Validator | None, export: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``validation_history`` rows and the ``validation_images`` partitions of a stage.

    Every row gets ``exported`` (1 on the exported step, else 0) and ``export_reason`` (on that
    row); an exported step that was never validated (the last step off the schedule) gets a row of
    its own. Images are keyed ``step_<step, 6 digits>/<name>``. ``([], {})`` without a validator.
    """
    if validator is None:
        return [], {}
    step = export.get("exported_step")
    rows = [
        dict(row, exported=int(row["step"] == step), export_reason="") for row in validator.history
    ]
    if step is not None and all(row["step"] != step for row in rows):
        rows.append({"stage": validator.stage, "step": step, "eligible": False,
                     "reason": "not validated", "exported": 1, "export_reason": ""})  # fmt: skip
    for row in rows:
        if row["exported"]:
            row["export_reason"] = str(export.get("export_reason", ""))
    images = {
        f"{STEP_PREFIX}{int(at):06d}/{name}": image
        for at, named in sorted(validator.images.items())
        for name, image in named.items()
    }
    return rows, images


def images_by_step(partitions: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``{"step_000040/grid": image or lazy loader}`` -> ``{40: {"grid": image}}``.

    Raises:
        ValueError: a partition key that is not ``step_<n>/<name>``.
    """
    out: dict[int, dict[str, Any]] = {}
    for key, value in sorted(partitions.items()):
        head, _, name = str(key).partition("/")
        number = head.removeprefix(STEP_PREFIX)
        if not name or not head.startswith(STEP_PREFIX) or not number.isdigit():
            raise ValueError(f"validation image {key!r}: expected {STEP_PREFIX}<step>/<name>")
        out.setdefault(int(number), {})[name] = value() if callable(value) else value
    return out
