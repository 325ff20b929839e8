"""Read-only datasets for a folder of raw photos.

``load`` returns ``{file_id: RawImage}`` (id = file stem, the bytes undecoded): decoding happens in
the preprocessing node, so every decode error names its file and the whole set can be reported at
once. ``save`` refuses: the user's photos are never modified, moved or deleted.

:class:`SampleImageFolderDataset` is the demo variant: when its folder has no images it first
writes the public-domain demo set there (``core.sample_data``), then behaves the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from magicapture_pipeline.core.images import RawImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

logger = logging.getLogger(__name__)


class RawImageFolderDataset(AbstractDataset[None, dict[str, RawImage]]):
    """A folder of photos loaded as ``{file_id: RawImage}`` without decoding; read-only.

    Files are the folder's direct children whose suffix is an image suffix (case-insensitive);
    hidden files and other suffixes (a README, a manifest) are skipped.

    Args:
        path: the folder.
        suffixes: file suffixes treated as images.
        metadata: free-form metadata (Kedro-Viz etc.).
    """

    def __init__(
        self,
        *,
        path: str,
        suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._suffixes = tuple(s.lower() for s in suffixes)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "suffixes": list(self._suffixes)}

    def _image_files(self) -> list[Path]:
        if not self._path.is_dir():
            return []
        return sorted(
            p for p in self._path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in self._suffixes
        )

    def load(self) -> dict[str, RawImage]:
        if not self._path.is_dir():
            raise DatasetError(
                f"{self._path}: folder does not exist; put the photos there or pass "
                f"--params=source_dir=<folder>,reference_dir=<folder>"
            )
        files = self._image_files()
        if not files:
            raise DatasetError(
                f"{self._path}: empty_folder: no image files (looked for "
                f"{', '.join(self._suffixes)}); put 4-6 photos there"
            )
        images: dict[str, RawImage] = {}
        for file in files:
            if file.stem in images:
                raise DatasetError(
                    f"{file}: duplicate_id: same name as {images[file.stem].path}; rename one"
                )
            images[file.stem] = RawImage(file.stem, str(file), file.read_bytes())
        return images

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"{self._path}: raw photo folders are read-only; this pipeline never writes to them"
        )

    def _exists(self) -> bool:
        return bool(self._image_files())


class SampleImageFolderDataset(RawImageFolderDataset):
    """The demo folder: writes the public-domain demo set into an empty folder, then loads it.

    Args:
        path: the folder (created when missing).
        role: "source" (astronaut variants) or "reference" (stylised public-domain images).
        count: how many demo images to write (4-6 like the paper).
    """

    def __init__(
        self,
        *,
        path: str,
        role: str,
        count: int = 5,
        suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(path=path, suffixes=suffixes, metadata=metadata)
        if role not in ("source", "reference"):
            raise DatasetError(f"{path}: role must be 'source' or 'reference', got {role!r}")
        self._role = role
        self._count = count

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "role": self._role, "count": self._count}

    def load(self) -> dict[str, RawImage]:
        if not self._image_files():
            import fcntl

            from magicapture_pipeline.core.sample_data import write_sample_set

            # Several concepts may start at once on the same demo folder: one writes, the
            # others wait and then read the complete set (never a half-written one).
            guard = Path(self._path).parent / f".{Path(self._path).name}.lock"
            guard.parent.mkdir(parents=True, exist_ok=True)
            with open(guard, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                if not self._image_files():
                    logger.info("Writing the %s demo set into %s", self._role, self._path)
                    write_sample_set(self._path, self._role, self._count)
        return super().load()

    def _exists(self) -> bool:
        return True
