"""Read-only datasets for a folder of raw photos.

``load`` returns ``{file_id: RawImage}`` (id = file stem, the bytes undecoded): decoding happens in
the preprocessing node, so every decode error names its file and the whole set can be reported at
once. ``save`` refuses: the user's photos are never modified, moved or deleted.

:class:`SampleImageFolderDataset` is the demo variant: when its folder is the project's own demo
folder (inside ``sample_root``, ``data/01_raw/demo``) and has no images it first writes the
public-domain demo set there (``core.sample_data``), then behaves the same. Any other folder (a
user's ``source_dir``) is read-only like above: missing or empty is an error naming it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from magicapture_pipeline.core.faces.images import RawImage

__all__ = ["IMAGE_SUFFIXES", "RawImageFolderDataset", "SampleImageFolderDataset", "file_id"]
from magicapture_pipeline.config.paths import IMAGE_SUFFIXES

# Image-like files this project does not decode: named in the validation report, never dropped
# silently (camera RAW, JPEG XL, Photoshop, vector).
IMAGE_LIKE_SUFFIXES = (
    ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".psd", ".svg",
    ".jfif", ".jpe", ".ico", ".jp2",
)
MAX_ID_LENGTH = 80  # longer file stems get a shortened id (output file names stay < 255 bytes)

logger = logging.getLogger(__name__)


def file_id(path: Path) -> str:
    """The id of a photo: its stem, made safe for output file names and JSON.

    A name that is not valid UTF-8 keeps its bytes as ``\\xNN`` escapes; a stem longer than
    ``MAX_ID_LENGTH`` characters is cut and suffixed with 8 hex digits of its SHA-1, so two long
    names never share an id.
    """
    raw = os.fsencode(path.stem)
    stem = raw.decode("utf-8", "backslashreplace")
    if len(stem) > MAX_ID_LENGTH:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        stem = f"{stem[: MAX_ID_LENGTH - 9]}-{digest}"
    return stem


def _shown(path: Path) -> str:
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


class RawImageFolderDataset(AbstractDataset[None, dict[str, RawImage]]):
    """A folder of photos loaded as ``{file_id: RawImage}`` without decoding; read-only.

    Files are the folder's direct children whose suffix is an image suffix (case-insensitive).
    Hidden files and other suffixes (a README, a manifest) are skipped; sub-folders are not read
    (logged). An image-like file this project cannot decode (camera RAW, JPEG XL, ...), a symlink
    that leads outside the folder (unless ``allow_outside_symlinks``), a broken symlink or a
    symlink loop is returned *refused*: preprocessing reports it by name, nothing outside the
    folder is ever read through a link. More than ``max_files`` photos is refused outright.

    Args:
        path: the folder.
        suffixes: file suffixes treated as images.
        allow_outside_symlinks: read symlinked photos whose target is outside the folder.
        max_files: most photos read from one folder (the paper uses 4-6).
        metadata: free-form metadata (Kedro-Viz etc.).
    """

    def __init__(
        self,
        *,
        path: str,
        suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
        allow_outside_symlinks: bool = False,
        max_files: int = 200,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._suffixes = tuple(s.lower() for s in suffixes)
        self._allow_outside = allow_outside_symlinks
        self._max_files = max_files
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self._path),
            "suffixes": list(self._suffixes),
            "allow_outside_symlinks": self._allow_outside,
            "max_files": self._max_files,
        }

    def _candidates(self) -> list[Path]:
        """Direct children with an image or image-like suffix (not hidden), by name."""
        if not self._path.is_dir():
            return []
        wanted = self._suffixes + IMAGE_LIKE_SUFFIXES
        return sorted(
            (p for p in self._path.iterdir()
             if not p.name.startswith(".") and p.suffix.lower() in wanted),
            key=lambda p: os.fsencode(p.name),
        )  # fmt: skip

    def _image_files(self) -> list[Path]:
        return [p for p in self._candidates() if p.suffix.lower() in self._suffixes]

    def _refusal(self, file: Path) -> str | None:
        """Why ``file`` is not read (``"<rule>: <detail>"``), or ``None`` when it is."""
        if file.suffix.lower() not in self._suffixes:
            return (
                f"unsupported_format: {file.suffix} files are not decoded here; export the "
                "photo as JPEG or PNG"
            )
        if file.is_symlink():
            refused = self._symlink_refusal(file)
            if refused:
                return refused
        if not file.is_file():
            return "not_a_file: not a regular file"
        return None

    def _symlink_refusal(self, link: Path) -> str | None:
        try:
            target = link.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way
            return "symlink_loop: the link points back to itself"
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "symlink_loop: the link points back to itself"
            return f"broken_symlink: the link target does not exist ({error.strerror})"
        folder = self._path.resolve()
        if not self._allow_outside and not target.is_relative_to(folder):
            return (
                f"symlink_outside_folder: the link leads to {_shown(target)}, outside "
                f"{_shown(folder)}; copy the photo in, or set allow_outside_symlinks"
            )
        return None

    def load(self) -> dict[str, RawImage]:
        if not self._path.is_dir():
            raise DatasetError(
                f"{self._path}: folder does not exist; put the photos there or pass "
                f"--params=source_dir=<folder>,reference_dir=<folder>"
            )
        files = self._candidates()
        folders = [p.name for p in self._path.iterdir() if p.is_dir() and not p.is_symlink()]
        if folders:
            logger.warning(
                "%s: sub-folders are not read (only the folder's own files): %s",
                self._path, ", ".join(sorted(_shown(Path(f)) for f in folders)),
            )
        if not self._image_files():
            raise DatasetError(
                f"{self._path}: empty_folder: no image files (looked for "
                f"{', '.join(self._suffixes)}); put 4-6 photos there"
            )
        if len(files) > self._max_files:
            raise DatasetError(
                f"{self._path}: too_many_files: {len(files)} photos, more than max_files "
                f"({self._max_files}); choose the 4-6 best (paper) or raise max_files"
            )
        images: dict[str, RawImage] = {}
        for file in files:
            ident = file_id(file)
            if ident in images:
                raise DatasetError(
                    f"{_shown(file)}: duplicate_id: same name as {images[ident].path}; rename one"
                )
            refused = self._refusal(file)
            if refused:
                logger.warning("%s: not read: %s", _shown(file), refused)
                images[ident] = RawImage(ident, _shown(file), b"", refused=refused)
                continue
            images[ident] = RawImage(ident, _shown(file), file.read_bytes())
        return images

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"{self._path}: raw photo folders are read-only; this pipeline never writes to them"
        )

    def _exists(self) -> bool:
        return bool(self._image_files())


class SampleImageFolderDataset(RawImageFolderDataset):
    """The demo folder: writes the public-domain demo set into its own empty folder, then loads it.

    Args:
        path: the folder (created when missing, only when it lies inside ``sample_root``).
        role: "source" (astronaut variants) or "reference" (stylised public-domain images).
        count: how many demo images to write (4-6 like the paper).
        sample_root: the only folder the demo set is ever written into (relative to the working
            directory, the project when run by Kedro). A ``path`` elsewhere is a user folder:
            never created or filled.
    """

    def __init__(
        self,
        *,
        path: str,
        role: str,
        count: int = 5,
        sample_root: str = "data/01_raw/demo",
        suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(path=path, suffixes=suffixes, metadata=metadata)
        self._sample_root = sample_root
        if role not in ("source", "reference"):
            raise DatasetError(f"{path}: role must be 'source' or 'reference', got {role!r}")
        self._role = role
        self._count = count

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "role": self._role, "count": self._count,
                "sample_root": self._sample_root}

    def _is_demo_folder(self) -> bool:
        """Whether ``path`` lies inside ``sample_root`` (resolved; a symlink loop is not)."""
        try:
            root = Path(self._sample_root).resolve()
            return self._path.resolve().is_relative_to(root) and self._path.resolve() != root
        except (RuntimeError, OSError):
            return False

    def load(self) -> dict[str, RawImage]:
        if not self._is_demo_folder():
            return super().load()  # a user folder: read only, never filled
        import fcntl

        from magicapture_pipeline.core.faces.sample_data import write_sample_set

        # Several concepts may start at once on the same demo folder: one writes, the others
        # wait and then read the complete set. Every load takes the lock, also when the folder
        # already holds images: a folder seen without it may be one the writer is still filling
        # (a concept of a Ray batch once trained on a partial reference set so).
        guard = Path(self._path).parent / f".{Path(self._path).name}.lock"
        guard.parent.mkdir(parents=True, exist_ok=True)
        with open(guard, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if not self._image_files():
                logger.info("Writing the %s demo set into %s", self._role, self._path)
                write_sample_set(self._path, self._role, self._count)
        return super().load()

    def _exists(self) -> bool:
        return self._is_demo_folder() or super()._exists()
