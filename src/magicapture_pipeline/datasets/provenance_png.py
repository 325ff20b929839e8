"""A PNG dataset whose files carry a per-image ``magicapture`` provenance text chunk.

kedro-datasets' ``pillow.ImageDataset`` passes the same ``save_args`` to every file, so it cannot
write a different text chunk per image. This dataset writes ``image.info["magicapture"]`` (a dict
or a JSON string, set by the node that made the image) as an iTXt chunk, and loading gives the
image back with the chunk in ``image.info`` / ``image.text``. Use it as the ``dataset`` of a
``partitions.PartitionedDataset`` for folders of images.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractDataset
from kedro.io.core import get_filepath_str, get_protocol_and_path
from PIL import Image

from magicapture_pipeline.core.generation.postprocess import PROVENANCE_KEY, png_bytes


class ProvenancePNGDataset(AbstractDataset[Image.Image, Image.Image]):
    """Load / save one PNG with its ``magicapture`` provenance chunk.

    Args:
        filepath: where the PNG lives (any fsspec protocol).
        require_provenance: refuse to save an image without ``info["magicapture"]`` (default
            True: every image this project writes is marked as AI-generated).
        fs_args: extra arguments of the fsspec filesystem.
        metadata: free-form metadata (ignored by Kedro).
    """

    def __init__(
        self,
        filepath: str,
        require_provenance: bool = True,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath)
        fs_args = dict(fs_args or {})
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **fs_args)
        self._filepath = PurePosixPath(path)
        self._require = require_provenance
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}

    def load(self) -> Image.Image:
        """The image (fully read), with the provenance chunk in ``info``."""
        with self._fs.open(get_filepath_str(self._filepath, self._protocol), "rb") as handle:
            image = Image.open(handle)
            image.load()
        return image

    def save(self, data: Image.Image) -> None:
        """Write ``data`` as PNG with ``data.info["magicapture"]`` as an iTXt chunk."""
        record = data.info.get(PROVENANCE_KEY)
        if record is None and self._require:
            raise ValueError(
                f"{self._filepath}: image has no info[{PROVENANCE_KEY!r}] provenance record"
            )
        if isinstance(record, str):
            record = json.loads(record)
        with self._fs.open(get_filepath_str(self._filepath, self._protocol), "wb") as handle:
            handle.write(png_bytes(data, record))
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))
