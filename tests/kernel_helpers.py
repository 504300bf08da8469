"""What the kernel tests share."""

from __future__ import annotations

import torch


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of ``y`` against ``ref``; a NaN/inf in ``y`` (an unwritten,
    poisoned tile) fails the test here."""
    assert torch.isfinite(y).all(), "NaN/inf in the output: an unwritten (poisoned) tile"
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def poison_split_k_workspace(device: torch.device) -> None:
    """Fill the device's split-K workspace with NaN, so that ``split_k_partials_written`` can tell."""
    from kernels import split_k

    split_k.buffers(device, 1, 1)[0].fill_(float("nan"))


def split_k_partials_written(device: torch.device, m: int, n: int, cfg) -> bool:
    """Whether the last split-K launch of ``cfg`` for an [m, n] output wrote every partial tile
    since ``poison_split_k_workspace`` (False: split-K did not run)."""
    from kernels import split_k

    tiles = -(-n // cfg.block_n) * -(-m // cfg.block_m)
    used = split_k.buffers(device, 1, 1)[0][: tiles * cfg.split_k * cfg.block_n * cfg.block_m]
    return bool(torch.isfinite(used).all())
