"""The segment cache of ``make bench-flops``: a tape that counts each distinct segment once.

The step variants of :mod:`.flops` share most of their work (the same UNet pass with and without
Eq. 7, the same VAE decode in three variants), and the meta device runs every op through Python,
so counting each distinct segment once makes the count several times faster with the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from magicapture_pipeline.speed_bench import meta_step as ms

if TYPE_CHECKING:
    from magicapture_pipeline.speed_bench.flops import FlopRecorder


@dataclass
class _Counted:
    """One segment's work, kept to be replayed wherever the same segment runs again."""

    forward: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool
    backward: int | None = None
    grads: tuple[bool, ...] = ()

    @property
    def complete(self) -> bool:
        return self.backward is not None or not self.requires_grad


class CachingTape(ms.Tape):
    """A tape that counts each distinct keyed segment once: a segment seen before (same key,
    grad mode, input shapes, dtypes and grad flags) adds its recorded forward and backward FLOPs
    and hands on uninitialised meta tensors of the recorded shapes instead of running. The
    counts are the same as without the cache (tests/speed_bench/test_flops.py); the steps share
    most segments, so ``make bench-flops`` runs each UNet, VAE and ArcFace pass once."""

    def __init__(self, recorder: FlopRecorder, cache: dict[Any, _Counted]) -> None:
        super().__init__(recorder)
        self.counter = recorder
        self.cache = cache

    def run(
        self, component: str, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor,
        key: Any = None,
    ) -> torch.Tensor:  # fmt: skip
        if key is None:
            return super().run(component, fn, *inputs)
        full = (key, torch.is_grad_enabled(), *((tuple(x.shape), x.dtype, x.requires_grad)
                                                 for x in inputs))  # fmt: skip
        entry = self.cache.get(full)
        if entry is not None and entry.complete:
            self.counter.add(component, "forward", entry.forward)
            output = torch.empty(entry.shape, dtype=entry.dtype, device=ms.META)
            output.requires_grad_(entry.requires_grad)
            self.segments.append(
                ms._Segment(component, [], list(inputs), output, full, replayed=True)
            )
            return output
        before = self.counter.flops.get((component, "forward"), 0)
        output = super().run(component, fn, *inputs, key=full)
        self.cache[full] = _Counted(
            self.counter.flops.get((component, "forward"), 0) - before,
            tuple(output.shape), output.dtype, output.requires_grad,
        )  # fmt: skip
        return output

    def _segment_backward(
        self, seg: ms._Segment, grad: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        entry = self.cache.get(seg.key) if seg.key is not None else None
        if entry is None:
            return super()._segment_backward(seg, grad)
        if seg.replayed:
            self.counter.add(seg.component, "backward", entry.backward or 0)
            return [(s, torch.empty_like(s)) for s, got in zip(seg.sources, entry.grads) if got]
        before = self.counter.flops.get((seg.component, "backward"), 0)
        found = super()._segment_backward(seg, grad)
        entry.backward = self.counter.flops.get((seg.component, "backward"), 0) - before
        got = {id(source) for source, _ in found}
        entry.grads = tuple(id(source) in got for source in seg.sources)
        return found
