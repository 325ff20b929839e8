"""The batch manifest: which concepts to train, from which photos, with which overrides.

YAML::

    concepts:
      - name: alice                       # lower-case letters, digits, '-'; at most 64
        source_dir: photos/alice          # the person's photos (relative to the project)
        reference_dir: styles/watercolour # the style's images
        params:                           # optional Kedro parameter overrides, dotted or nested
          stage_two.max_steps: 800
          generation: {images_per_prompt: 2}

CSV: a header ``name,source_dir,reference_dir`` and any further columns as dotted parameter keys
(``stage_two.max_steps``); an empty cell means "not overridden"; cells are read as YAML scalars
(``800`` is a number, ``true`` a boolean).

``source_dir``/``reference_dir`` may be left out in the ``demo`` env, whose default folders are
the public-domain sample photos. Every problem is reported with the file and the field.

Bounds (ours, issue 21: a hostile manifest is refused at once, never run): at most
``MAX_BYTES`` (1 MiB), ``MAX_CONCEPTS`` concepts (1000; split a larger batch), YAML nested at most
``MAX_DEPTH`` (20) levels with at most ``MAX_ALIASES`` (100) aliases and ``MAX_NODES`` (100,000)
values once they are expanded (a 1 KB "billion laughs" expands to gigabytes); a UTF-8 byte-order
mark is read, not taken for part of the first column.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from magicapture_pipeline.concepts import validate_concept_name

RESERVED = {"concept", "source_dir", "reference_dir"}
MAX_BYTES = 1 << 20
MAX_CONCEPTS = 1000
MAX_DEPTH = 20
MAX_ALIASES = 100
MAX_NODES = 100_000


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the field."""


class ConceptSpec(BaseModel):
    """One concept of a batch."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Concept name: lower-case letters, digits, '-' (<= 64).")
    source_dir: str | None = Field(None, description="Folder of the person's photos.")
    reference_dir: str | None = Field(None, description="Folder of the style's images.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Kedro parameter overrides (dotted keys or nested)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_concept_name(value)

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        flat = flatten_params(value)
        clash = sorted(k for k in flat if k.split(".")[0] in RESERVED)
        if clash:
            raise ValueError(f"{clash} belong in the concept's own fields, not in params")
        return value

    def runtime_params(self) -> dict[str, Any]:
        """What ``kedro run --params=concept=...,source_dir=...,<overrides>`` would pass."""
        runtime: dict[str, Any] = {}
        for key, value in flatten_params(self.params).items():
            set_nested(runtime, key, value)
        runtime["concept"] = self.name
        if self.source_dir:
            runtime["source_dir"] = self.source_dir
        if self.reference_dir:
            runtime["reference_dir"] = self.reference_dir
        return runtime


class Manifest(BaseModel):
    """A list of concepts with unique names."""

    model_config = ConfigDict(extra="forbid")

    concepts: list[ConceptSpec] = Field(..., min_length=1, description="The concepts to train.")

    @field_validator("concepts")
    @classmethod
    def _unique(cls, value: list[ConceptSpec]) -> list[ConceptSpec]:
        seen: set[str] = set()
        for spec in value:
            if spec.name in seen:
                raise ValueError(f"concept {spec.name!r} is listed twice")
            seen.add(spec.name)
        return value


def flatten_params(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = value
    return flat


def set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_nested(d, "a.b", 1)`` -> ``d["a"]["b"] = 1`` (Kedro's ``--params`` rule)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a bound on nesting depth and on aliases (``*ref``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ManifestError(f"more than {MAX_ALIASES} YAML aliases (*ref)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ManifestError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` becomes once every alias is expanded (memoised per node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(
            _expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value
        )
    sizes[id(node)] = min(size, MAX_NODES + 1)
    return sizes[id(node)]


def _read_yaml(path: Path, text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise ManifestError(f"expands to more than {MAX_NODES} values (aliases)")
        return loader.construct_document(node)
    except ManifestError as error:
        raise ManifestError(f"{path}: refused: {error}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML ({error})") from None
    finally:
        loader.dispose()


def _read_csv(path: Path, text: str) -> dict[str, Any]:
    import io

    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "name" not in reader.fieldnames:
            raise ManifestError(f"{path}: the CSV header must name a 'name' column")
        concepts = []
        for row in reader:
            if len(concepts) >= MAX_CONCEPTS:
                raise ManifestError(f"{path}: refused: more than {MAX_CONCEPTS} concepts")
            entry: dict[str, Any] = {"params": {}}
            for column, raw in row.items():
                if column is None:
                    raise ManifestError(f"{path}: line {reader.line_num}: more cells than columns")
                cell = (raw or "").strip()
                if column in ("name", "source_dir", "reference_dir"):
                    entry[column] = cell or None
                elif cell:
                    entry["params"][column.strip()] = _read_yaml(path, cell)
            concepts.append(entry)
    return {"concepts": concepts}


def _location(error: dict[str, Any], data: dict[str, Any]) -> str:
    parts: list[str] = []
    for item in error["loc"]:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    where = "".join(parts).lstrip(".")
    loc = error["loc"]
    if len(loc) >= 2 and loc[0] == "concepts" and isinstance(loc[1], int):
        try:
            name = data["concepts"][loc[1]].get("name")
            where += f" (concept {name!r})" if name else ""
        except (KeyError, IndexError, AttributeError, TypeError):
            pass
    return where


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a YAML (``.yml``/``.yaml``) or CSV (``.csv``) manifest."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".yml", ".yaml"):
        raise ManifestError(f"{path}: a manifest is .yaml, .yml or .csv, not {path.suffix!r}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ManifestError(f"{path}: refused: {size} bytes, more than {MAX_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is not data
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text ({error})") from None
    if suffix == ".csv":
        data = _read_csv(path, text)
    else:
        data = _read_yaml(path, text)
        if isinstance(data, list):
            data = {"concepts": data}
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a mapping with a 'concepts' list")
    concepts = data.get("concepts")
    if isinstance(concepts, list) and len(concepts) > MAX_CONCEPTS:
        raise ManifestError(
            f"{path}: refused: {len(concepts)} concepts, more than {MAX_CONCEPTS}; split the batch"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        lines = [
            f"{path}: {_location(item, data)}: {item['msg']}" for item in error.errors()
        ]
        raise ManifestError("\n".join(lines)) from None
