"""The ``export`` pipeline's datasets: its local source and the export folder it writes.

``ExportSourceDataset`` (load only) is the project's concept folder with its ``metrics.json``,
the generate step's grid and the settings it drew it with, as an
:class:`~core.generation.bundle.ExportSource`; a missing metrics file, grid or record is left out
of the card, and a missing concept folder is refused only when the export actually reads it (an
export of a registered version needs none of these files).

``ConceptExportDataset`` saves an :class:`~core.generation.bundle.ExportRequest` to its folder
``path`` (``data/06_models/<concept>/export``), or, when the request's source is a registered
version, to the sibling ``make export`` uses (``export-<alias>``, ``export-v<N>``): written whole,
staged and swapped in (``core.atomic.staged_dir``). Loading returns the folder's model-card
front matter with ``"path"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from magicapture_pipeline.config.export import ExportConfig
from magicapture_pipeline.core.generation.bundle import (
    CARD,
    ExportRequest,
    ExportSource,
    local_source,
)


class ExportSourceDataset(AbstractDataset[None, ExportSource]):
    """The concept folder as an export source (read only).

    Args:
        concept_path: the concept folder (the ``concept`` dataset's ``path``).
        metrics_path: ``metrics.json`` (the ``metrics`` dataset's ``filepath``).
        grid_path: the generate step's grid (the ``generation_grid`` dataset's ``filepath``).
        records_path: the generate step's records (``generation_records``' ``filepath``): the
            sampling settings the grid was drawn with.
        metadata: free-form metadata (ignored by Kedro).
    """

    def __init__(
        self,
        concept_path: str,
        metrics_path: str | None = None,
        grid_path: str | None = None,
        records_path: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._concept = Path(concept_path)
        self._metrics = Path(metrics_path) if metrics_path else None
        self._grid = Path(grid_path) if grid_path else None
        self._records = Path(records_path) if records_path else None
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"concept_path": str(self._concept), "metrics_path": str(self._metrics)}

    def load(self) -> ExportSource:
        return local_source(self._concept, self._metrics, self._grid, records_file=self._records)

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._concept}: the export source is read only")

    def _exists(self) -> bool:
        return self._concept.is_dir()


class ConceptExportDataset(AbstractDataset[ExportRequest, dict[str, Any]]):
    """An export folder, written whole from an :class:`ExportRequest`.

    Args:
        path: the export folder of the concept folder (``data/06_models/<concept>/export``);
            a registered version's export goes to its sibling named by
            :meth:`ExportConfig.folder_name`.
        metadata: free-form metadata (ignored by Kedro).
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata
        self.last_written: dict[str, Any] | None = None

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

    def target(self, request: ExportRequest) -> Path:
        """Where ``request`` is written: ``path``, or its sibling for a registered version."""
        default = ExportConfig().folder_name()
        name = request.folder or default
        if name == default:
            return self._path
        if not name.startswith(f"{default}-") or "/" in name or ".." in name:
            raise DatasetError(f"export folder name {name!r}: expected {default}-<alias|vN>")
        return self._path.with_name(self._path.name + name.removeprefix(default))

    def save(self, data: ExportRequest) -> None:
        if not isinstance(data, ExportRequest):
            raise DatasetError(f"{self._path}: expected an ExportRequest, got {type(data)}")
        self.last_written = data.write(self.target(data))

    def tracked_files(self) -> list[Path]:
        """What a tracked run keeps of the last save: the model card and its sample grid, not
        the weights (ours: the registered version already holds them; an export repeats them
        in other formats). Empty before a save."""
        written = self.last_written or {}
        files = [Path(written["card"])] if written.get("card") else []
        if written.get("grid"):  # a name inside the export folder
            files.append(Path(written["out"]) / written["grid"])
        return files

    def load(self) -> dict[str, Any]:
        from magicapture_pipeline.core.generation.kohya_check import card_front_matter

        if not self._exists():
            raise DatasetError(f"no export at {self._path} ({CARD} missing)")
        return {**card_front_matter(self._path), "path": str(self._path)}

    def _exists(self) -> bool:
        return (self._path / CARD).is_file()
