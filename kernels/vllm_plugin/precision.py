"""Per-process precision state: the one mode tensor every NestedFP layer of a model reads."""

from __future__ import annotations

import torch

from kernels.ops import MODE_CODES, MODE_NAMES, new_mode_tensor, set_host_mode

_mode_tensors: dict[str, torch.Tensor] = {}


def mode_tensor(device: torch.device | str) -> torch.Tensor:
    """The shared mode tensor for ``device``, made on first use (fp16)."""
    key = str(torch.device(device))
    if key not in _mode_tensors:
        _mode_tensors[key] = new_mode_tensor(device)
    return _mode_tensors[key]


def set_mode(mode: str) -> None:
    """Flip every mode tensor in place: graphs and compiled code see it on their next run.

    Goes through ``kernels.ops.set_host_mode`` so the host mirror that eager (uncaptured, e.g.
    prefill) calls read stays in step with the device tensor.
    """
    if mode not in MODE_CODES:
        raise ValueError(f"mode must be one of {sorted(MODE_CODES)}, got {mode!r}")
    for t in _mode_tensors.values():
        set_host_mode(t, mode)


def get_mode() -> str:
    """The mode the layers will use; 'fp16' before any layer exists."""
    if not _mode_tensors:
        return "fp16"
    return MODE_NAMES[int(next(iter(_mode_tensors.values())).item())]
