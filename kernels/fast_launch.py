"""Launching the compiled NestedFP kernels with as little host work as possible.

Why: at decode the op's kernels run for 5-60 us, and on the H200 box Triton's generic launch
path (argument binding, ``TensorDescriptor`` validation, the launcher's Python wrapper) took
about as long to enqueue them, so eager calls timed the host (docs/BENCHMARKS.md, "Kernels v4").
The first launch per specialization goes through Triton (compiling if needed); later ones call
the compiled kernel's C launcher directly, with TMA descriptors encoded once per content.
Everything falls back to Triton's own path under the interpreter, while a launch hook
(profiler) is set, or where the compiled kernel's internals are not the expected ones (another
Triton version).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import triton

try:  # Triton 3.6's encoder of host TMA descriptors, as its launcher calls it
    from triton.backends.nvidia.driver import make_tensordesc_arg
except ImportError:  # pragma: no cover - other Triton versions: descriptors take Triton's path
    make_tensordesc_arg = None


@functools.cache
def _capability_major(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def has_gdc(t: torch.Tensor) -> bool:
    """``t`` lives on a GPU with grid dependency control (``griddepcontrol``, sm_90+): kernels there may
    let PDL-launched successors start early. Older GPUs' PTX has no such instruction."""
    return t.is_cuda and _capability_major(t.device.index or 0) >= 9


def cdiv(a: int, b: int) -> int:
    """Ceiling division (``triton.cdiv`` is a constexpr function in Triton 3.6: slow on the host)."""
    return -(-a // b)


class TmaArg(NamedTuple):
    """A host TMA descriptor argument, described by value (what the descriptor encodes)."""

    base: torch.Tensor
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    block_shape: tuple[int, ...]
    layout: Any  # a Gluon NVMMASharedLayout
    view: torch.dtype | None = None  # the element type the kernel reads base as (same size), if not base's
    padding: str = "zero"

    def descriptor(self):
        """The Gluon ``TensorDescriptor`` for Triton's own launch path (which specializes on its dtype)."""
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        base = self.base if self.view is None else self.base.view(self.view)
        return TensorDescriptor(base, list(self.shape), list(self.strides), list(self.block_shape), self.layout)


class _Direct(NamedTuple):
    """What a direct launch needs, taken from a compiled kernel once."""

    raw: Any  # the C launcher
    function: int
    packed_metadata: Any
    cooperative: bool
    pdl: bool
    device: int
    tail: tuple  # the constexpr values, which the launcher takes after the run-time arguments
    desc_meta: tuple  # per leading TmaArg: its metadata for make_tensordesc_arg


_DIRECT: dict[tuple, _Direct] = {}
_TMA: dict[tuple, list] = {}  # encoded descriptors by content; bounded (cleared past _TMA_MAX)
_TMA_MAX = 4096
_stream = torch._C._cuda_getCurrentRawStream if torch.cuda.is_available() else None


def current_raw_stream(device_index: int) -> int:
    """The current CUDA stream of a device, as the launcher takes it (0 without CUDA)."""
    return _stream(device_index) if _stream is not None else 0


_RUNTIME = triton.knobs.runtime


def _hooks_set() -> bool:
    """A launch hook (a profiler) is set: hooks are None, or (Triton 3.6) HookChains, empty unless profiling."""
    enter, exit_ = _RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook
    return bool(getattr(enter, "calls", enter) or getattr(exit_, "calls", exit_))


def _direct(kernel, ck, args: tuple, consts: dict, device: int) -> _Direct | None:
    """The direct-launch record for a compiled kernel, or None where its internals differ."""
    run = getattr(ck, "run", None)
    names = getattr(kernel, "arg_names", None)
    if run is None or not names or not hasattr(ck, "function") or not hasattr(ck, "packed_metadata"):
        return None
    if getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None  # the launcher would allocate scratch per launch
    # Our kernels declare every run-time argument before the constexprs, as the launcher takes them.
    if sorted(consts) != sorted(names[len(args):]):
        return None
    n_desc = next((i for i, a in enumerate(args) if not isinstance(a, TmaArg)), len(args))
    if any(isinstance(a, TmaArg) for a in args[n_desc:]):
        return None  # descriptors must lead
    raw, desc_meta = run.launch, ()
    if n_desc:
        # Triton wraps the C launcher in a closure that encodes descriptors on every launch.
        cells = dict(zip(getattr(raw, "__code__", None) and raw.__code__.co_freevars or (), raw.__closure__ or ()))
        meta = getattr(ck.metadata, "tensordesc_meta", None)
        if make_tensordesc_arg is None or "launcher" not in cells or not meta or len(meta) != n_desc:
            return None
        raw, desc_meta = cells["launcher"].cell_contents, tuple(meta)
    return _Direct(raw, ck.function, ck.packed_metadata, bool(getattr(run, "launch_cooperative_grid", False)),
                   bool(getattr(run, "launch_pdl", False)), device, tuple(consts[n] for n in names[len(args):]),
                   desc_meta)


def _encode(d: TmaArg, meta: dict) -> list:
    key = (d.base.data_ptr(), d.shape, d.strides, d.block_shape, id(meta))
    enc = _TMA.get(key)
    if enc is None:
        if len(_TMA) >= _TMA_MAX:
            _TMA.clear()
        enc = _TMA[key] = make_tensordesc_arg(d, meta)
    return enc


def launch(kernel, grid: int, args: tuple, consts: dict, num_warps: int, num_stages: int, spec: tuple,
           pdl: bool = False) -> None:
    """``kernel[(grid,)](*args, **consts)``, directly through the C launcher after the first call.

    ``spec``: what Triton specializes on that ``consts`` do not say (dtypes, 16-byte alignment of
    pointers, divisibility of ints), computed cheaply by the caller. ``args`` may start with
    ``TmaArg`` descriptors (the Gluon kernel). ``pdl``: a programmatic dependent launch (Triton's
    ``launch_pdl``), which may start before the kernel before it ends.
    """
    key = _record_key(kernel, consts, num_warps, num_stages, spec, pdl)
    hit = _DIRECT.get(key)
    if hit is not None and run_direct(hit, grid, args):
        return
    call_args = tuple(a.descriptor() if isinstance(a, TmaArg) else a for a in args)
    opts = dict(launch_pdl=True) if pdl else {}
    ck = kernel[(grid,)](*call_args, **consts, num_warps=num_warps, num_stages=num_stages, **opts)
    first = args[0].base if isinstance(args[0], TmaArg) else args[0]
    if first.is_cuda and _stream is not None:
        direct = _direct(kernel, ck, args, consts, first.device.index)
        if direct is not None:
            _DIRECT[key] = direct


def direct_record(kernel, consts: dict, num_warps: int, num_stages: int, spec: tuple,
                  pdl: bool = False) -> _Direct | None:
    """The direct-launch record that ``launch`` made for these arguments (None before its first call, or
    where the compiled kernel's internals differ): for callers that prepare a launch once and then only
    ``run_direct`` it (``kernels.eager_fp8``)."""
    return _DIRECT.get(_record_key(kernel, consts, num_warps, num_stages, spec, pdl))


def _record_key(kernel, consts: dict, num_warps: int, num_stages: int, spec: tuple, pdl: bool) -> tuple:
    """What a direct-launch record is kept under (id: a JITFunction hashes slowly)."""
    return (id(kernel), num_warps, num_stages, pdl, spec, *consts.values())


def run_direct(hit: _Direct, grid: int, args: tuple) -> bool:
    """Launches through the C launcher with a record of ``direct_record``; False (nothing launched) while a
    launch hook (a profiler) is set, whose calls only Triton's own path makes."""
    if _hooks_set():
        return False
    if hit.desc_meta:
        n = len(hit.desc_meta)
        flat = [v for d, meta in zip(args, hit.desc_meta) for v in _encode(d, meta)]
        flat.extend(args[n:])
    else:
        flat = args
    hit.raw(grid, 1, 1, _stream(hit.device), hit.function, hit.cooperative, hit.pdl, None, None,
            hit.packed_metadata, None, None, None, *flat, *hit.tail)
    return True
