"""Every default's provenance and the authors' recipe, read from the fields' metadata.

Each field records where its default comes from in its metadata (PEFT's
``field(metadata={"help": ...})`` pattern, here pydantic's ``json_schema_extra``):
``Field(json_schema_extra=paper("Experiments: Training Details: ..."))`` (where the paper states
it: :data:`PAPER_PLACES`), ``code("train_magicapture.sh --lora_rank=4")`` (the authors' code,
file and flag), ``library("mediapipe: ...")`` or
``ours("reason")``. A field whose default is not the authors' also records their value:
``ours("...", authors="linear")``, or ``authors_by_stage={"stage_one": ..., "stage_two": ...}``
where the two stages of the authors' code differ (:func:`authors` alone records only the value).
``recipe: official`` fills every such knob the user did not set (``official_recipe``);
``docs/defaults.md`` and ``make check-config`` read the provenance (:func:`provenance`). The
authors' code is junhahyung/MagiCapture (``lora_diffusion_/magicapture_train.py``,
``lora_diffusion_/dataset.py``, ``train_magicapture.sh``, ``inference_magicapture.py``).
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# --scale_lr in train_magicapture.sh multiplies every rate flag by gradient_accumulation_steps (4)
# x train_batch_size (1) (magicapture_train.py, train(): unet_lr, text_encoder_lr, ti_lr); the
# authors never accumulate, so each optimiser step sees one image at 4x the flag's rate.
AUTHORS_SCALE_LR = 4
_AUTHORS = "authors"
_BY_STAGE = "authors_by_stage"
_SOURCE = "source"
_CITE = "cite"
_UNSET: Any = object()

PAPER = "paper"
AUTHORS_CODE = "authors' code"
LIBRARY = "library default"
OURS = "ours"
SOURCES = (PAPER, AUTHORS_CODE, LIBRARY, OURS)
# Where arXiv 2309.06895 v2 (main text and supplement) states something. Its sections carry no
# numbers (AAAI style), so a paper citation starts with the section heading and the run-in
# paragraph title as printed, or with an equation, table or figure number that exists.
PAPER_PLACES = (
    "Method: Two-phase Optimization",
    "Method: Masked Reconstruction",
    "Method: Composed Prompt Learning",
    "Method: Attention Refocusing",
    "Method: Postprocessing",
    "Experiments: Training Details",
    "Experiments: Comparisons",
    "Experiments: Ablation Study",
    "Supplement: Training Details",
    "Supplement: General Object",
    "Supplement: Ablation Study",
)
PAPER_NUMBERED = {"Eq.": 11, "Table": 3, "Fig.": 17}
_NUMBERED = re.compile(r"(Eq\.|Table|Fig\.) (\d+)")
# Derived, never written on a field: a nested section (each key has its own) or no default at all.
NESTED = "nested"
REQUIRED = "required"


class Provenance(NamedTuple):
    """Where a field's default comes from: one of :data:`SOURCES` (or derived) and the citation
    (paper section/table, authors' file + flag, the library, or our reason)."""

    source: str
    cite: str

    def __str__(self) -> str:
        return f"{self.source}: {self.cite}"


def authors(value: Any = None, **by_stage: Any) -> dict[str, Any]:
    """Field metadata: the authors' value, one for both stages or one per stage by name."""
    if by_stage:
        return {_BY_STAGE: by_stage}
    return {_AUTHORS: value}


def _source(
    source: str, cite: str, authors_value: Any, authors_by_stage: dict[str, Any] | None
) -> dict[str, Any]:
    if not cite.strip():
        raise ValueError(f"a {source!r} default needs its citation or reason")
    extra: dict[str, Any] = {_SOURCE: source, _CITE: cite}
    if authors_by_stage is not None:
        extra[_BY_STAGE] = dict(authors_by_stage)
    elif authors_value is not _UNSET:
        extra[_AUTHORS] = authors_value
    return extra


def paper(
    cite: str, *, authors: Any = _UNSET, authors_by_stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Field metadata: the default is the paper's (arXiv 2309.06895 v2; ``cite``: where)."""
    return _source(PAPER, cite, authors, authors_by_stage)


def code(
    cite: str, *, authors: Any = _UNSET, authors_by_stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Field metadata: the default is the authors' code's (``cite``: file and flag). Give
    ``authors=`` too when ``recipe: official`` should fill the knob (the training sections)."""
    return _source(AUTHORS_CODE, cite, authors, authors_by_stage)


def library(
    cite: str, *, authors: Any = _UNSET, authors_by_stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Field metadata: the default is a library's own (``cite``: which library and setting)."""
    return _source(LIBRARY, cite, authors, authors_by_stage)


def ours(
    reason: str, *, authors: Any = _UNSET, authors_by_stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Field metadata: the default is the project's own choice (``reason``: why)."""
    return _source(OURS, reason, authors, authors_by_stage)


def paper_place(cite: str) -> str | None:
    """The place in the paper that a paper citation starts with (one of :data:`PAPER_PLACES`,
    or ``Eq. N`` / ``Table N`` / ``Fig. N`` within :data:`PAPER_NUMBERED`); ``None`` when it
    names none, e.g. a section number the paper does not have."""
    for place in PAPER_PLACES:
        if cite.startswith(place):
            return place
    numbered = _NUMBERED.match(cite)
    if numbered and 1 <= int(numbered.group(2)) <= PAPER_NUMBERED[numbered.group(1)]:
        return numbered.group(0)
    return None


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def provenance(field: FieldInfo) -> Provenance | None:
    """The provenance of ``field``'s default; ``None`` when the field records none.

    Derived without metadata: a field with no default (:data:`REQUIRED`) and a nested section
    whose default is the section's own defaults (:data:`NESTED`: each of its keys has one)."""
    extra = _extra(field)
    if _SOURCE in extra:
        return Provenance(extra[_SOURCE], extra[_CITE])
    if field.is_required():
        return Provenance(REQUIRED, "no default: the user sets it")
    if isinstance(_default(field), BaseModel):
        return Provenance(NESTED, "a section: each of its keys has its own source")
    return None


def authors_value(field: FieldInfo, stage: str | None) -> tuple[bool, Any]:
    """``(True, value)`` when the field records the authors' value for ``stage``."""
    extra = _extra(field)
    if _BY_STAGE in extra:
        per_stage = extra[_BY_STAGE]
        return (stage in per_stage, copy.deepcopy(per_stage.get(stage)))
    if _AUTHORS in extra:
        return True, copy.deepcopy(extra[_AUTHORS])
    return False, None


def field_at(model: type[BaseModel], dotted: str) -> FieldInfo | None:
    """The deepest field of ``model`` along ``dotted`` (``lora.rank``; a key inside a mapping
    field such as ``gates.min_metrics.csim_arcface`` gives the mapping's field)."""
    found = None
    current: type[BaseModel] | None = model
    for part in dotted.split("."):
        if current is None or part not in current.model_fields:
            break
        found = current.model_fields[part]
        current = _nested(found)
    return found


def _nested(field: FieldInfo) -> type[BaseModel] | None:
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def official_recipe(model: type[BaseModel], stage: str | None = None) -> dict[str, Any]:
    """Every authors' value of ``model`` (nested models included) as a parameters mapping."""
    stage = stage or getattr(model, "STAGE", None)
    recipe: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        known, value = authors_value(field, stage)
        if known:
            recipe[name] = value
            continue
        nested = _nested(field)
        if nested is not None:
            inner = official_recipe(nested, stage)
            if inner:
                recipe[name] = inner
    return recipe
