"""Allowed values of each knob, as text, and configuration errors that name field, value and range.

The ranges live on the typed models themselves (``Field(ge=..., gt=..., le=..., multiple_of=...)``
and ``Literal`` choices); this module only reads them back, for ``docs/parameters.md`` and for the
errors :mod:`magicapture_pipeline.config.sections` raises before a run starts.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

_BOUNDS = (
    (at.Gt, "gt", "> {}"),
    (at.Ge, "ge", ">= {}"),
    (at.Lt, "lt", "< {}"),
    (at.Le, "le", "<= {}"),
    (at.MultipleOf, "multiple_of", "multiple of {}"),
    (at.MinLen, "min_length", "length >= {}"),
    (at.MaxLen, "max_length", "length <= {}"),
)


def _literal_choices(annotation: Any) -> list[Any] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            choices = _literal_choices(arg)
            if choices is not None:
                return choices
    return None


def field_range(field: FieldInfo) -> str:
    """The allowed values of one field, e.g. ``>= 1``, ``> 0, <= 1``, ``one of 'a', 'b'``.

    An empty string when the type alone is the rule (free text, booleans, nested models).
    """
    parts = []
    for constraint in field.metadata:
        for kind, attribute, template in _BOUNDS:
            if isinstance(constraint, kind):
                parts.append(template.format(getattr(constraint, attribute)))
    choices = _literal_choices(field.annotation)
    if choices is not None:
        parts.append("one of " + ", ".join(repr(choice) for choice in choices))
    if parts and _allows_none(field.annotation):
        parts.append("or null")
    return ", ".join(parts)


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        inner = typing.get_args(candidate)
        for arg in inner:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _field_at(model: type[BaseModel], location: tuple[Any, ...]) -> FieldInfo | None:
    """The field a pydantic error location points at (``("lora", "rank")``), if any."""
    current: type[BaseModel] | None = model
    field = None
    for part in location:
        if isinstance(part, int):  # list index: the field stays the list's own
            continue
        if current is None or part not in current.model_fields:
            return None
        field = current.model_fields[part]
        current = _nested_model(field.annotation)
    return field


def describe_errors(section: str, model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per problem: ``params:<section>.<field> = <value>: <rule> (allowed: <range>)``."""
    lines = []
    for item in error.errors():
        location = tuple(item.get("loc", ()))
        dotted = ".".join(str(part) for part in location)
        name = f"params:{section}" + (f".{dotted}" if dotted else "")
        message = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            lines.append(f"{name}: unknown key (not a field of {model.__name__})")
            continue
        field = _field_at(model, location) if location else None
        allowed = field_range(field) if field is not None else ""
        value = item.get("input")
        shown = f" = {value!r}" if location and not isinstance(value, dict) else ""
        suffix = f" (allowed: {allowed})" if allowed else ""
        lines.append(f"{name}{shown}: {message}{suffix}")
    return lines
