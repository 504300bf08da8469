"""Host mirror of the NestedFP mode tensors, for eager calls that pick one path on the host.

A module of its own (no kernel imports) so that ``kernels.ops`` and ``kernels.triton_dispatch``
both read it without importing each other: ``ops`` registers the dispatcher when it is imported.

Invariant: code that flips a mode tensor goes through ``set_host_mode`` (vLLM's
``precision.set_mode`` does), never ``mode_tensor.fill_`` directly. The device tensor stays the
source of truth: CUDA-graph replays and captured launches read only it. The mirror is read only
by eager, uncaptured calls (``triton_dispatch.HOST_PICK``).
"""

from __future__ import annotations

import weakref

import torch

MODE_CODES = {"fp16": 0, "fp8": 1}

# (device, data_ptr) -> (mode name, weak reference to the registered tensor)
_host_modes: dict[tuple[str, int], tuple[str, weakref.ref]] = {}


def _key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.data_ptr()


def register_host_mode(mode_tensor: torch.Tensor, mode: str) -> None:
    """Record that ``mode_tensor`` holds ``mode`` (for a tensor just made with that code)."""
    _host_modes[_key(mode_tensor)] = (mode, weakref.ref(mode_tensor))


def set_host_mode(mode_tensor: torch.Tensor, mode: str) -> torch.Tensor:
    """Flip ``mode_tensor`` to ``mode`` on the device and in the host mirror; returns the tensor.

    The one way to flip a mode tensor (module docstring): a direct ``fill_`` would leave eager
    calls on the old mode while CUDA graphs use the new one.
    """
    if mode not in MODE_CODES:
        raise ValueError(f"mode must be one of {sorted(MODE_CODES)}, got {mode!r}")
    mode_tensor.fill_(MODE_CODES[mode])
    register_host_mode(mode_tensor, mode)
    return mode_tensor


def host_mode(mode_tensor: torch.Tensor) -> str | None:
    """The mirrored mode name of ``mode_tensor``, or None when it has no live mirror.

    None (the caller then keeps the device-side pick) when the tensor was never registered through
    ``new_mode_tensor`` / ``set_host_mode``, or when the registered tensor is gone (its address may
    now hold an unrelated tensor). A live registered tensor owns its address, so a hit describes
    the very storage passed in (views and torch.compile's re-wrapped tensors included).
    """
    hit = _host_modes.get(_key(mode_tensor))
    if hit is None:
        return None
    name, ref = hit
    alive = ref()
    return name if alive is not None and alive.data_ptr() == mode_tensor.data_ptr() else None
