"""Image partitions that may be empty: a stage that did not validate saves none (issue 20).

kedro-datasets' ``PartitionedDataset`` refuses to load a folder without partitions ("No
partitions found"); the concept card reads the validation images whether or not the run validated,
so this subclass loads ``{}`` for an empty or missing folder and is otherwise the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro_datasets.partitions import PartitionedDataset


class OptionalPartitionedDataset(PartitionedDataset):
    """``PartitionedDataset`` whose load of an empty or missing folder is ``{}``."""

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return super().load()
