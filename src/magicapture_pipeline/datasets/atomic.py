"""Reports and metrics written new, then swapped in: kedro-datasets' JSON, CSV and text datasets.

Each class here is the kedro-datasets class of the same name with one change: on a local
filesystem, ``save`` lets the library write to a hidden sibling (``.<name>.tmp-<pid>``) which is
then ``fsync``-ed and renamed over the target (``core.atomic.atomic_path``). A reader sees the
previous report or the new one, never half a file; a failure (full disk, read-only folder)
leaves the previous file and raises an error naming its path. Other protocols (s3, gcs, ...)
save as the library does (object stores replace whole objects anyway).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.text import TextDataset as _TextDataset

from magicapture_pipeline.core import atomic


class _AtomicSave:
    _protocol: str

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            super().save(data)  # type: ignore[misc]
            return
        final = get_filepath_str(self._get_save_path(), self._protocol)  # type: ignore[attr-defined]
        with atomic.atomic_path(final) as temp:
            self._get_save_path = lambda: PurePosixPath(temp)  # the library writes here
            try:
                super().save(data)  # type: ignore[misc]
            except DatasetError as error:  # Kedro wraps the library's OSError
                cause = atomic.as_os_error(error.__cause__) if error.__cause__ else None
                if cause is None:
                    raise
                raise atomic.WriteFailed(final, cause) from error
            finally:
                del self._get_save_path


class JSONDataset(_AtomicSave, _JSONDataset):
    """``json.JSONDataset`` whose save is new-then-swap (see the module docstring)."""


class CSVDataset(_AtomicSave, _CSVDataset):
    """``pandas.CSVDataset`` whose save is new-then-swap (see the module docstring)."""


class OptionalCSVDataset(CSVDataset):
    """``CSVDataset`` whose load of a missing file is an empty frame: a report that a concept
    may lack, e.g. the validation history of a concept trained before issue 20 or elsewhere,
    which ``evaluate``'s concept card reads as "no validation" instead of failing."""

    def load(self) -> Any:
        if not self._exists():
            import pandas as pd

            return pd.DataFrame()
        return super().load()


class TextDataset(_AtomicSave, _TextDataset):
    """``text.TextDataset`` whose save is new-then-swap (see the module docstring)."""
