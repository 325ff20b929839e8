"""Issue 19 §5: the face stage in a process pool gives the serial path's output byte for byte."""

from __future__ import annotations

import hashlib
import json

import pytest

from magicapture_pipeline.config.preprocess import PreprocessConfig
from magicapture_pipeline.core.faces.image_set import analyze_image_set
from magicapture_pipeline.core.faces.images import RawImage, encode_png
from magicapture_pipeline.core.faces.pool import FacePool
from magicapture_pipeline.core.faces.sample_data import build_sample_set


def _demo_raw_sets() -> dict[str, dict[str, RawImage]]:
    """The shipped demo photos (6 sources, 6 references) as undecoded PNG files, plus one file
    that does not decode (its row must come back in its place too)."""
    sets: dict[str, dict[str, RawImage]] = {}
    for role in ("source", "reference"):
        images = build_sample_set(role, 6)
        sets[role] = {
            image.file_name.rsplit(".", 1)[0]: RawImage(
                image.file_name.rsplit(".", 1)[0], f"{role}/{image.file_name}",
                encode_png(image.pixels),
            )
            for image in images
        }  # fmt: skip
    sets["source"]["broken"] = RawImage("broken", "source/broken.png", b"not a png")
    return sets


def outputs_digest(found) -> str:
    """SHA-256 of everything preprocessing's face stage produces for a set: every metadata row
    (pHash and identity distance included) and every crop, mask and overlay's key, dtype, shape
    and bytes, in order."""
    digest = hashlib.sha256(json.dumps(found.rows, sort_keys=True, default=str).encode())
    for name in ("crops", "masks", "overlays"):
        for key, array in getattr(found, name).items():
            digest.update(f"{name}/{key}/{array.dtype.str}/{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


# The serial path's outputs on the demo set at 512 px, recorded with the code before issue 19's
# speed work on the pool transport and the overlay (commit b5a093a), mediapipe 0.10.21, OpenCV
# 4.11.0.86, numpy 1.26.4, dlib 20.0.1. A change of any output byte changes it; so can an
# upgrade of those libraries (then check the pictures and re-record it, saying so).
DEMO_SERIAL_DIGEST_512 = "e7e062cb3d816d8ac2eb631eb61d79f562b29a027cf93c916d434430548dc39a"


def test_serial_and_pool_outputs_equal_the_recorded_ones_byte_for_byte():
    """Issue 19 §5: speed work must not move a byte. The serial path and a pool of 2 at the
    default 512 px give the digest recorded before that work, and equal each other field by
    field and array by array (one run of each serves both checks; a 256 px pair used to repeat
    the second)."""
    raw = _demo_raw_sets()
    serial = analyze_image_set(raw, PreprocessConfig())
    parallel = analyze_image_set(raw, PreprocessConfig(workers=2))
    assert outputs_digest(serial) == DEMO_SERIAL_DIGEST_512
    assert outputs_digest(parallel) == DEMO_SERIAL_DIGEST_512
    assert [row["id"] for row in parallel.rows] == [row["id"] for row in serial.rows]
    assert parallel.rows == serial.rows  # every field, identity distances included
    assert sum(row["status"] == "decode_error" for row in serial.rows) == 1
    assert sum(row["n_faces"] or 0 for row in serial.rows) >= 6  # faces were really found
    for name in ("crops", "masks", "overlays"):
        ours, theirs = getattr(parallel, name), getattr(serial, name)
        assert list(ours) == list(theirs), name
        for key, array in theirs.items():
            assert ours[key].dtype == array.dtype and ours[key].shape == array.shape, key
            assert ours[key].tobytes() == array.tobytes(), key


def test_pool_refuses_one_worker_and_the_config_refuses_zero():
    with pytest.raises(ValueError, match="workers >= 2"):
        FacePool(1)
    with pytest.raises(ValueError, match="workers"):
        PreprocessConfig(workers=0)


def test_large_result_arrays_travel_through_shared_memory_byte_for_byte():
    """The worker-side packing and parent-side copy of a chunk: every large array comes back
    with its dtype, shape and bytes (a non-contiguous view included), small ones and other
    values travel as they are (breaks caught: a wrong offset, the dtype or shape lost)."""
    from multiprocessing import shared_memory

    import numpy as np

    from magicapture_pipeline.core.faces import pool

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    wide = rng.standard_normal((300, 200)).astype(np.float32)[:, ::2]  # a strided view
    small = np.arange(10, dtype=np.int16)
    results = [({"id": "a", "n": 1}, (crop, mask, small), wide), ({"id": "b"}, None, [mask])]
    name, packed = pool._pack(results)
    assert name is not None
    assert isinstance(packed[0][1][0], pool._Slot) and packed[0][1][2] is small
    block = shared_memory.SharedMemory(name=name)
    try:
        back = pool._copy_out(block, packed)
    finally:
        block.close()
        block.unlink()
    assert back[0][0] == {"id": "a", "n": 1} and back[1][0] == {"id": "b"} and back[1][1] is None
    for ours, theirs in ((back[0][1][0], crop), (back[0][1][1], mask), (back[0][2], wide),
                         (back[1][2][0], mask), (back[0][1][2], small)):  # fmt: skip
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert ours.tobytes() == theirs.tobytes()


def _echo(side, seed, analyzer, embedder):
    """A worker function: a ``side`` x ``side`` RGB array and its mask, from ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (side, side, 3), np.uint8)
    return seed, rgb, rng.integers(0, 256, (side, side), np.uint8)


def test_the_pool_reuses_its_blocks_and_leaves_none_behind(monkeypatch):
    """FacePool's block rotation, run in-process (a thread executor standing in for the
    processes): results in order and byte for byte; over 3 maps of 8 chunks, no more blocks
    created than ``in_flight`` per size (reuse: a new block costs its page faults every time);
    a larger result replaces a too-small block; nothing left in /dev/shm after close (breaks caught:
    blocks never freed for reuse, a block handed to two chunks at once, blocks leaked)."""
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing import shared_memory

    from magicapture_pipeline.core.faces import pool

    created = []
    real = shared_memory.SharedMemory

    def counting(*args, **kwargs):
        block = real(*args, **kwargs)
        if kwargs.get("create"):
            created.append(block.name)
        return block

    def in_process(max_workers, mp_context, initializer, initargs):
        executor = ThreadPoolExecutor(max_workers=max_workers)
        pool._STATE.update(analyzer=None, preload=initargs[2])
        return executor

    monkeypatch.setattr(pool.shared_memory, "SharedMemory", counting)
    monkeypatch.setattr(pool, "ProcessPoolExecutor", in_process)
    try:
        with pool.FacePool(2) as faces:
            for side in (160, 160, 240):  # 240: larger than the blocks made for 160
                found = list(faces.map(_echo, [(side, seed) for seed in range(320)]))
                assert [seed for seed, *_ in found] == list(range(320))
                for seed, rgb, mask in found:
                    want = _echo(side, seed, None, None)
                    assert rgb.tobytes() == want[1].tobytes()
                    assert mask.tobytes() == want[2].tobytes()
                assert len(faces.blocks()) <= faces.in_flight
            kept = faces.blocks()
            assert len(created) <= 2 * faces.in_flight  # 24 chunks, two sizes of block
    finally:
        for block in pool._STATE.pop("blocks", {}).values():
            block.close()
        pool._STATE.pop("analyzer", None)
    for name in set(created):
        with pytest.raises(FileNotFoundError):
            real(name=name)
    assert kept


def test_results_travel_pickled_when_shared_memory_cannot_be_made(monkeypatch):
    import numpy as np

    from magicapture_pipeline.core.faces import pool

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pool.shared_memory, "SharedMemory", no_room)
    big = np.zeros((512, 512), np.uint8)
    name, packed = pool._pack([(big,)])
    assert name is None and packed[0][0] is big
