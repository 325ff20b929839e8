"""Data parallel: gradients averaged in one collective per dtype, not tensor by tensor (FINDINGS).

Two real processes run in ``test_training_ddp.py`` (slow); here a stand-in ``reduce`` counts the
collectives and checks the unpacking.
"""

from __future__ import annotations

import torch


def test_gradients_are_averaged_in_one_collective_per_dtype():
    from magicapture_pipeline.core.training.loop import average_gradients

    class TwoProcesses:  # the other process's gradients are all 2.0: the mean is (g + 2) / 2
        calls = 0

        def reduce(self, tensor, reduction):
            assert reduction == "mean"
            TwoProcesses.calls += 1
            return (tensor + 2.0) / 2

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((2, 3), (4,), (1, 1, 5))]
    for index, param in enumerate(params):
        param.grad = torch.full_like(param, float(index))
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    half.grad = torch.ones(3, dtype=torch.float64)
    untouched = torch.nn.Parameter(torch.zeros(2))  # no gradient: stays None
    assert average_gradients(TwoProcesses(), [*params, half, untouched]) == 2
    assert TwoProcesses.calls == 2  # float32 and float64, not one per tensor
    for index, param in enumerate(params):
        assert torch.equal(param.grad, torch.full_like(param, (index + 2.0) / 2))
    assert torch.equal(half.grad, torch.full((3,), 1.5, dtype=torch.float64))
    assert untouched.grad is None
