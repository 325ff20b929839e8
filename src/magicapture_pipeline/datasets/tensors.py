"""A ``{name: tensor}`` dictionary in one safetensors file (kedro-datasets has no such dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset
from torch import Tensor


class SafetensorsDataset(AbstractDataset[dict[str, Tensor], dict[str, Tensor]]):
    """Load / save a dict of tensors with ``safetensors.torch`` (never pickle).

    Args:
        filepath: the ``.safetensors`` file.
        metadata: free-form metadata (ignored by Kedro).
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> dict[str, Tensor]:
        """The tensors, on CPU, in file order."""
        from safetensors.torch import load_file

        return load_file(str(self._filepath), device="cpu")

    def save(self, data: dict[str, Tensor]) -> None:
        """Write the tensors (made contiguous CPU copies)."""
        from safetensors.torch import save_file

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {key: value.detach().cpu().contiguous() for key, value in data.items()},
            str(self._filepath),
        )

    def _exists(self) -> bool:
        return self._filepath.is_file()
