"""The export folder of a concept (issue 22): what goes into it and where it comes from.

:class:`ExportSource` is what an export is made from (a concept folder, its sampling settings,
its metrics and its sample grid); :func:`local_source` builds it from the project's files, and
``serving/export_source.py`` from a registered version. :class:`ExportRequest` is one export to
write; :func:`export_bundle` writes it whole (staged, then swapped in). ``make export`` and the
``export`` pipeline both go through these: the same code, fed from the command line or the
catalog.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicapture_pipeline.config.generation import SamplingConfig
from magicapture_pipeline.core import atomic
from magicapture_pipeline.core.generation.export import CONCEPT_JSON, LORA_FILE
from magicapture_pipeline.core.generation.kohya import EMBEDDINGS, LORAS, ExportRefused, write_kohya

FORMATS = ("diffusers", "kohya", "all")
SAMPLE_GRID = "sample_grid.png"
CARD = "README.md"


@dataclass
class ExportSource:
    """What an export is made from.

    Attributes:
        concept_dir: the diffusers concept folder (``concept.json``, LoRA, token files).
        label: where it came from, for the card (a folder, or ``models:/name@alias`` + version).
        sampling: the sampling settings the card recommends (a ``SamplingConfig``); None: the
            typed defaults.
        metrics: the evaluation figures (``metrics.json`` or the run's metrics), or None.
        grid: the sample grid to show (the generate step's contact sheet), or None.
        grid_origin: where the grid came from (written into the card), or None.
        keep: whatever must stay alive until the export is written (the temporary folder a
            registered version was downloaded into).
    """

    concept_dir: Path
    label: str
    sampling: Any = None
    metrics: Mapping[str, Any] | None = None
    grid: Path | None = None
    grid_origin: str | None = None
    keep: Any = field(default=None, repr=False)


# The generate step's record columns that are sampling settings (generation_records.csv).
RECORD_SETTINGS = (
    "scheduler",
    "num_inference_steps",
    "guidance_scale",
    "lora_scale_unet",
    "lora_scale_text_encoder",
    "resolution",
    "negative_prompt",
)


def sampling_from_records(records_file: str | Path) -> SamplingConfig | None:
    """The sampling settings the generate step drew its images (and grid) with, from the first
    row of ``generation_records.csv``; None when the file is absent or empty."""
    path = Path(records_file)
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        row = next(csv.DictReader(handle), None)
    if row is None:
        return None
    return SamplingConfig.model_validate({k: row[k] for k in RECORD_SETTINGS if k in row})


def _shown(path: Path, root: Path | None) -> Path:
    return path.relative_to(root) if root is not None and path.is_relative_to(root) else path


def local_source(  # noqa: PLR0913 (one optional file per part of the card)
    concept_dir: str | Path,
    metrics_file: str | Path | None = None,
    grid_file: str | Path | None = None,
    sampling: Any = None,
    records_file: str | Path | None = None,
    root: str | Path | None = None,
) -> ExportSource:
    """The project's own concept folder, with its ``metrics.json``, the generate step's grid and
    the settings it drew them with (``records_file``, which wins over ``sampling``) when they
    exist: a missing one is left out of the card, not an error. Paths under ``root`` are shown
    relative to it."""
    concept_dir = Path(concept_dir)
    root = Path(root) if root is not None else None
    metrics = None
    if metrics_file is not None and Path(metrics_file).is_file():
        metrics = json.loads(Path(metrics_file).read_text())
    grid = Path(grid_file) if grid_file is not None and Path(grid_file).is_file() else None
    recorded = sampling_from_records(records_file) if records_file is not None else None
    origin = None
    if grid:
        origin = f"the generate step's contact sheet ({_shown(grid, root)})"
        if recorded is not None:
            origin += ", drawn with the sampling settings above"
    return ExportSource(
        concept_dir=concept_dir,
        label=f"concept folder {_shown(concept_dir, root)}",
        sampling=recorded or sampling,
        metrics=metrics,
        grid=grid,
        grid_origin=origin,
    )


@dataclass
class ExportRequest:
    """One export to write: ``source`` as ``fmt`` under the name ``concept``; ``folder`` is
    the export folder's name beside the concept folder (``config.export.ExportConfig``)."""

    source: ExportSource
    concept: str
    fmt: str = "all"
    folder: str = "export"

    def write(self, out_dir: str | Path) -> dict[str, Any]:
        """Write the export to ``out_dir`` (whole; see :func:`export_bundle`)."""
        source = self.source
        if not (source.concept_dir / CONCEPT_JSON).is_file():
            raise ExportRefused(
                f"{source.concept_dir}: no concept folder with {CONCEPT_JSON} (train it first, "
                "or export a registered version)"
            )
        return export_bundle(
            source.concept_dir,
            out_dir,
            self.concept,
            self.fmt,
            source.sampling,
            source.metrics,
            source.grid,
            source=source.label,
            grid_origin=source.grid_origin,
        )


def export_bundle(  # noqa: PLR0913 (the card's inputs)
    concept_dir: str | Path,
    out_dir: str | Path,
    concept: str,
    fmt: str = "all",
    sampling: Any = None,
    metrics: Mapping[str, Any] | None = None,
    grid: str | Path | None = None,
    *,
    source: str | None = None,
    grid_origin: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir`` whole (staged, then swapped in: ``core.atomic.staged_dir``):
    ``diffusers/`` (the concept folder as is), ``loras/`` + ``embeddings/`` (kohya, web UIs) and
    ``README.md`` (the model card), and ``sample_grid.png`` when ``grid`` exists. ``fmt``:
    ``diffusers``, ``kohya`` or ``all``; ``source`` and ``grid_origin`` are recorded in the card.

    Returns ``{"out": path, "family", "lora", "embeddings", "format", "card"}`` (+ ``grid``).
    """
    from magicapture_pipeline.core.generation.model_card import card

    if fmt not in FORMATS:
        raise ExportRefused(f"format {fmt!r}: expected one of {FORMATS}")
    concept_dir = Path(concept_dir)
    out = Path(out_dir)
    with atomic.staged_dir(out) as folder:
        written = write_kohya(concept_dir, folder, concept)  # checks the concept in either case
        info = json.loads((concept_dir / CONCEPT_JSON).read_text())
        if fmt == "diffusers":  # the diffusers folder only: its own file names, tokens as words
            shutil.rmtree(folder / LORAS, ignore_errors=True)
            shutil.rmtree(folder / EMBEDDINGS, ignore_errors=True)
            written = {
                "family": written["family"],
                "lora": f"diffusers/{lora}" if (lora := info.get("lora", LORA_FILE)) else None,
                "embeddings": [
                    {"token": t["token"], "trigger": t["token"], "file": f"diffusers/{t['file']}"}
                    for t in info["tokens"]
                ],
            }
        written["format"] = fmt
        if source:
            written["source"] = source
        if grid is not None and Path(grid).is_file():
            shutil.copyfile(grid, folder / SAMPLE_GRID)
            written["grid"] = SAMPLE_GRID
            written["grid_origin"] = grid_origin or str(grid)
        if fmt in ("diffusers", "all"):
            shutil.copytree(concept_dir, folder / "diffusers")
        (folder / CARD).write_text(card(concept, info, written, sampling, metrics))
    return {"out": str(out), **written, "card": str(out / CARD)}
