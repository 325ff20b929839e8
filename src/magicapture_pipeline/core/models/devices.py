"""Which device and dtype to run on: ``auto`` picks CUDA (and float16 weights) when present.

The paper's setting is a GPU (SD 1.5 sampled in float16 by the authors'
``inference_magicapture.py``); a CPU-only machine falls back to CPU and float32. An explicit
device that is not there fails with a clear error instead of torch's.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given.

    Raises:
        ValueError: a CUDA device was asked for and torch sees none.
    """
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was configured but torch sees no CUDA device (a CPU build of "
            "torch, or no GPU here); set device: auto or cpu"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> ``float16`` on CUDA (the authors' sampling dtype), ``float32`` elsewhere."""
    if dtype != AUTO:
        return dtype
    return "float16" if resolve_device(device).startswith("cuda") else "float32"
