"""The ``concept`` dataset: the exported concept folder (LoRA + embeddings + concept.json).

Saving takes what stage two returns (a ``core.training.TrainingResult``) and writes it with
``core.concept.export``; loading returns ``concept.json`` plus ``"path"``, the folder, which is
what generation and the registry need to load it with stock diffusers loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from magicapture_pipeline.core.generation import export as concept_io


class ConceptDataset(AbstractDataset[Any, dict[str, Any]]):
    """A local concept folder in the diffusers formats of ``core.concept``.

    Args:
        path: the folder (e.g. ``data/06_models/concept``).
        metadata: free-form metadata (ignored by Kedro).
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

    def load(self) -> dict[str, Any]:
        """``concept.json`` with ``"path"`` (the folder) added."""
        if not self._exists():
            raise DatasetError(f"no concept at {self._path} (concept.json missing)")
        return {**concept_io.read_concept(self._path), "path": str(self._path)}

    def save(self, data: Any) -> None:
        """Export a ``TrainingResult`` (embeddings, LoRA state dicts, metadata)."""
        if data.unet_lora is None:
            raise DatasetError("the concept needs stage two's LoRA weights (unet_lora is None)")
        concept_io.export(
            self._path,
            embeddings=data.embeddings,
            unet_lora=data.unet_lora,
            text_encoder_lora=data.text_encoder_lora,
            metadata=data.metadata,
            text_encoder_2_lora=getattr(data, "text_encoder_2_lora", None),
        )

    def _exists(self) -> bool:
        return (self._path / concept_io.CONCEPT_JSON).is_file()
