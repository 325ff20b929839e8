"""The export of a concept (``params:export``; ``kedro run --pipelines=export``, ``make export``).

Which source (the concept folder, a registered version by alias, or by number) and which formats.
None of it is the paper's: the paper ships no export; the defaults are ours, with the reason in
each field's help.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from magicapture_pipeline.config.recipes import ours

# Formats an export writes: the diffusers folder, the web UIs' single files, or both.
EXPORT_FORMATS = ("diffusers", "kohya", "all")
# An alias becomes part of a folder name (export-<alias>): letters, digits, '_' and '-' only, so
# no alias can name a path outside the concept's folder (MLflow's own alias rule is looser).
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class ExportConfig(BaseModel):
    """What ``kedro run --pipelines=export`` writes, and from which source (``params:export``)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["diffusers", "kohya", "all"] = Field(
        "all",
        description="diffusers (the folder as trained), kohya (ComfyUI / A1111 / Forge single "
        "files) or all (ours: both, so one export serves every tool; issue 22).",
        json_schema_extra=ours("both formats, so one export serves every tool (issue 22)"),
    )
    alias: str | None = Field(
        None,
        pattern=ALIAS_PATTERN,
        description="Export the registered version models:/<registry.model_name>@<alias> "
        "(e.g. champion; letters, digits, '_' and '-', at most 64, as it names the folder "
        "export-<alias>); None: the concept folder this project trained (ours: no registry "
        "needed by default).",
        json_schema_extra=ours("the concept folder this project trained: no registry needed"),
    )
    model_version: int | None = Field(
        None,
        ge=1,
        description="Export registered version N of registry.model_name instead of an alias; "
        "None: use alias or the concept folder.",
        json_schema_extra=ours("None: the alias or the concept folder names the source"),
    )

    @model_validator(mode="after")
    def _one_source(self) -> ExportConfig:
        if self.alias is not None and re.fullmatch(r"[vV]\d+|latest", self.alias):
            raise ValueError(
                f"alias {self.alias!r}: 'latest' and v<number> are MLflow version references, "
                "not aliases (set model_version for a version number)"
            )
        if self.alias is not None and self.model_version is not None:
            raise ValueError(
                f"alias {self.alias!r} and model_version {self.model_version} both set: "
                "name one registered version"
            )
        return self

    @property
    def registered(self) -> bool:
        """Whether the source is a registered version (not the concept folder)."""
        return self.alias is not None or self.model_version is not None

    def model_reference(self, model_name: str) -> str:
        """The registry URI of the source version (``models:/name@alias`` or ``models:/name/N``)."""
        if self.alias is not None:
            return f"models:/{model_name}@{self.alias}"
        if self.model_version is not None:
            return f"models:/{model_name}/{self.model_version}"
        raise ValueError("the source is the concept folder, not a registered version")

    def folder_name(self) -> str:
        """The export's folder beside the concept folder: ``export`` (the concept folder),
        ``export-<alias>`` or ``export-v<N>`` (a registered version)."""
        if self.alias is not None:
            return f"export-{self.alias}"
        if self.model_version is not None:
            return f"export-v{self.model_version}"
        return "export"
