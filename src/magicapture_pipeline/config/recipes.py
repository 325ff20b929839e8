"""The authors' recipe, read from the fields that know it.

A field whose default is not the authors' records their value in its metadata
(``Field(json_schema_extra=authors(value))``, or ``authors(stage_one=..., stage_two=...)`` where
the two stages of the authors' code differ). ``recipe: official`` fills every such knob the user
did not set (``official_recipe``); ``docs/defaults.md`` lists them (``config/docs.py``). The
authors' code is junhahyung/MagiCapture (``lora_diffusion_/magicapture_train.py``,
``lora_diffusion_/dataset.py``, ``train_magicapture.sh``); each field's help names file and flag.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_AUTHORS = "authors"
_BY_STAGE = "authors_by_stage"


def authors(value: Any = None, **by_stage: Any) -> dict[str, Any]:
    """Field metadata: the authors' value, one for both stages or one per stage by name."""
    if by_stage:
        return {_BY_STAGE: by_stage}
    return {_AUTHORS: value}


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def authors_value(field: FieldInfo, stage: str | None) -> tuple[bool, Any]:
    """``(True, value)`` when the field records the authors' value for ``stage``."""
    extra = _extra(field)
    if _BY_STAGE in extra:
        per_stage = extra[_BY_STAGE]
        return (stage in per_stage, copy.deepcopy(per_stage.get(stage)))
    if _AUTHORS in extra:
        return True, copy.deepcopy(extra[_AUTHORS])
    return False, None


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
