"""What the kernel tests share."""

from __future__ import annotations

import torch


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of ``y`` against ``ref``; a NaN/inf in ``y`` (an unwritten,
    poisoned tile) fails the test here."""
    assert torch.isfinite(y).all(), "NaN/inf in the output: an unwritten (poisoned) tile"
    return float((y.double() - ref.double()).norm() / ref.double().norm())
