"""Render every configuration model as a markdown reference.

Run ``python -m magicapture_pipeline.config.docs > docs/parameters.md``.

The typed models in this package are the single source of truth for each knob's type, default and
help line; ``docs/parameters.md`` is generated from them so the two never drift apart.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator

from pydantic import BaseModel

import magicapture_pipeline.config as config_package
from magicapture_pipeline.config.ranges import field_range


def config_models() -> Iterator[type[BaseModel]]:
    """Yield every pydantic model defined in a module of this package, module by module."""
    for info in sorted(pkgutil.iter_modules(config_package.__path__), key=lambda m: m.name):
        if info.name in ("docs", "ranges", "sections"):
            continue
        module = importlib.import_module(f"{config_package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            public = not obj.__name__.startswith("_")
            if public and issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                yield obj


def _default_text(field) -> str:
    if field.is_required():
        return "*required*"
    if field.default_factory is not None:
        value = field.default_factory()
        return f"`{value!r}`" if not isinstance(value, BaseModel) else "(nested defaults)"
    return f"`{field.default!r}`"


def render_markdown() -> str:
    """The parameter reference as markdown, one table per model."""
    lines = [
        "# Parameter reference",
        "",
        "Generated from `src/magicapture_pipeline/config/` by "
        "`python -m magicapture_pipeline.config.docs`; do not edit by hand.",
        "",
        "*allowed* is checked for every section a run reads before its first node runs "
        "(`make check-config ENV=... PARAMS=...` checks without running); rules that tie "
        "several fields together are in each model's description.",
        "",
    ]
    for model in config_models():
        lines += [f"## `{model.__module__.rsplit('.', 1)[-1]}.{model.__name__}`", ""]
        doc = inspect.getdoc(model)
        if doc:
            lines += [doc.splitlines()[0], ""]
        lines += [
            "| field | type | default | allowed | help |",
            "|---|---|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            annotation = getattr(field.annotation, "__name__", str(field.annotation))
            annotation = annotation.replace("typing.", "").replace("|", "\\|")
            help_text = (field.description or "").replace("|", "\\|")
            allowed = field_range(field).replace("|", "\\|")
            lines.append(
                f"| `{name}` | {annotation} | {_default_text(field)} | {allowed} | {help_text} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
