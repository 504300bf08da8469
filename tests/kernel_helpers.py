"""What the kernel tests share."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of ``y`` against ``ref``; a NaN/inf in ``y`` (an unwritten,
    poisoned tile) fails the test here."""
    assert torch.isfinite(y).all(), "NaN/inf in the output: an unwritten (poisoned) tile"
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def hopper_gluon_problem() -> str | None:
    """None if the Gluon kernels' GPU tests can run here, else why not (the skip reason)."""
    from kernels.gluon_common import IMPORT_ERROR

    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if torch.cuda.get_device_capability()[0] != 9:
        return "needs compute capability 9.x (Hopper)"
    if IMPORT_ERROR is not None:
        return f"Triton without a usable Gluon: {IMPORT_ERROR!r}"
    return None


def nested_weights(n: int, k: int, amax: float = 0.5, device: str = "cuda"):
    """Random [n, k] FP16 weights split into NestedFP planes; magnitudes >= amax / 512 so that a
    pre-scale (amax > 1.875) is exact."""
    from kernels import nested_split

    w = (torch.randn(n, k, device=device) * (amax / 4)).clamp(-amax, amax)
    w = torch.where(w.abs() < amax / 512, torch.full_like(w, amax / 512) * w.sign().add(0.5).sign(), w)
    return nested_split(w.half())


def poisoned_codes_outputs(m: int, n: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, codes, scales)`` for a mode-aware kernel to write into, filled with what none writes: NaN fp16, the
    E4M3 code 0x7F (NaN) as uint8, NaN fp32 [m, 1]; what a mode leaves unwritten stays so."""
    return (torch.full((m, n), float("nan"), device=device).half(),
            torch.full((m, n), 0x7F, dtype=torch.uint8, device=device), torch.full((m, 1), float("nan"), device=device))


def replays_follow_mode_flips(op, x: torch.Tensor, mode: torch.Tensor, check,
                              flips: tuple[str, ...] = ("fp8", "fp16", "fp8", "fp16", "fp8")) -> None:
    """Capture ``op()`` (which returns its output) in one CUDA graph, then for each mode of ``flips``: set it,
    refresh ``x`` in place, poison the output, replay, and ``check(out, name, step)``. The mode ends as fp16."""
    from kernels.ops import set_host_mode

    op()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = op()
    try:
        for step, name in enumerate(flips):
            set_host_mode(mode, name)
            x.copy_(torch.randn_like(x))
            out.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            check(out, name, step)
    finally:
        set_host_mode(mode, "fp16")


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


@triton.jit
def fp_pairs(amax_bits_ptr, x_bits_ptr, NX, BF16: tl.constexpr, BLOCK: tl.constexpr):
    """(amax, x, in range) of program (i, j) of an exhaustive division check: the i-th amax bit pattern
    against the j-th block of x bit patterns (fp16, or bf16), both decoded to fp32; in range: |x| <= amax."""
    a_bits = tl.load(amax_bits_ptr + tl.program_id(0))
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    xb = tl.load(x_bits_ptr + offs, mask=offs < NX, other=0)
    if BF16:
        amax = a_bits.to(tl.bfloat16, bitcast=True).to(tl.float32)
        x = xb.to(tl.bfloat16, bitcast=True).to(tl.float32)
    else:
        amax = a_bits.to(tl.float16, bitcast=True).to(tl.float32)
        x = xb.to(tl.float16, bitcast=True).to(tl.float32)
    return amax, x, (offs < NX) & (tl.abs(x) <= amax)
