"""Compile, before serving, every kernel variant the op can launch for one layer shape.

Why: Triton compiles a kernel the first time each specialization is launched (tile config by M
bucket, the Gluon tile, the quantizing or idle variant, one precision's path or both). A compile
can take about a second, and under load it stalls the engine. vLLM's own warm-up covers only the
CUDA-graph sizes in the mode the engine starts in, so eager (prefill) paths of the other mode
compile on first use, after a switch. On the H200 on 2026-11-22, apps started on a cold kernel cache
missed the SLO where restarted ones did not, and an adaptive run's burst stalled after its switch
(docs/BENCHMARKS.md, "App under bursty load, 2026-11-22": inferred, not profiled). Compiled
kernels land in Triton's on-disk cache, so this costs time only on a cold cache.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from kernels import triton_dispatch
from kernels.mode_state import set_host_mode
from kernels.ops import new_mode_tensor
from kernels.reference import quantize_per_token

logger = logging.getLogger(__name__)

# M values on both sides of every boundary where the op's variant changes: config buckets, the token
# tile cap, the Gluon table's M buckets, LARGE_M_THRESHOLD (1024).
BOUNDARY_MS = (1, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513, 1023, 1024, 1025, 2048, 2049, 4096, 4097, 8192)
_warmed: set[tuple] = set()


def warm_ms(max_m: int) -> list[int]:
    """The M values to run for a server whose steps carry at most ``max_m`` tokens."""
    return [m for m in BOUNDARY_MS if m <= max_m] + ([max_m] if max_m not in BOUNDARY_MS else [])


def warm_layer(upper: torch.Tensor, lower: torch.Tensor, scale_exp: int, bias: torch.Tensor | None,
               max_m: int, dtype: torch.dtype = torch.float16) -> bool:
    """Run both ops on zeros at every ``warm_ms(max_m)``, in both modes, as eager calls (host pick) and
    as CUDA graphs run them (device pick). Once per (N, K, dtype, pre-scaled, bias, device). Returns
    whether it ran. Uses its own mode tensor: the model's mode is untouched."""
    key = (*upper.shape, dtype, bool(scale_exp), bias is not None, upper.device, max_m)
    if key in _warmed or os.environ.get("NESTEDFP_WARMUP", "1") == "0":
        return False
    t0 = time.perf_counter()
    mode = new_mode_tensor(upper.device)
    for m in warm_ms(max_m):
        x = torch.zeros(m, upper.shape[1], dtype=dtype, device=upper.device)
        q, s = quantize_per_token(x)
        for name in ("fp16", "fp8"):
            set_host_mode(mode, name)
            for host_pick in (True, False):
                for quant in (None, (q, s.reshape(-1))):  # nestedfp::linear, then linear_prequantized
                    triton_dispatch.nested_linear_picked(x, upper, lower, mode, scale_exp, bias, host_pick, quant)
    if upper.is_cuda:
        torch.cuda.synchronize(upper.device)
    _warmed.add(key)
    logger.info("nestedfp: kernels for %dx%d warmed at %d M values in %.1f s", *upper.shape,
                len(warm_ms(max_m)), time.perf_counter() - t0)
    return True
