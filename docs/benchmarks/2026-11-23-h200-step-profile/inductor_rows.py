"""Diagnostic (not adopted): one-pass row reductions in torch.compile's kernels that quantize per token.

Why it was tried: ``nestedfp_method`` quantizes x per token in plain torch ops so that torch.compile fuses the
quantization into the RMSNorm and SiLU-and-mul kernels that write x. Inductor makes such a kernel a *looped*
reduction when the row is longer than 1024 values (4096 and 14336 in Llama-8B): one pass over the row for its
absolute maximum, then a second that reads the input again to write x and its codes. In the engine profile the
fused SiLU-and-mul kernel took 1.7x the plain one's time (docs/BENCHMARKS.md, "Where the engine's GPU time goes").
A *persistent* reduction holds the row in registers and reads it once. ``install`` raises Inductor's threshold
for that (1024 values) to ``ROW_LIMIT`` through its hook for heuristics (``V.set_choices_handler``, and
``config.inductor_choices_class`` where it exists). ``bench`` compiles both patterns both ways on the H200:
the persistent form was not faster at the large M of prefill (0.93x at M = 8192), so nothing ships.

    PYTHONPATH=. python3 docs/benchmarks/2026-11-23-h200-step-profile/inductor_rows.py --out rows.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

logger = logging.getLogger(__name__)

ROW_LIMIT = int(os.environ.get("NESTEDFP_PERSISTENT_ROWS", "16384"))  # 0: leave Inductor's heuristic alone
_installed = False


class PersistentRows(InductorChoices):
    """Inductor's choices, but inner reductions of up to ``ROW_LIMIT`` values are persistent."""

    @staticmethod
    def should_use_persistent_reduction(features, cooperative_reduction: bool) -> bool:
        if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
            return True
        return bool(inductor_config.triton.persistent_reductions and not cooperative_reduction
                    and features.get_reduction_hint() == ReductionHint.INNER
                    and V.graph.sizevars.statically_known_leq(features.reduction_numel, ROW_LIMIT))

    def uuid(self) -> str:  # Inductor's cache key (config.inductor_choices_class)
        return f"nestedfp-persistent-rows-{ROW_LIMIT}"


def install() -> bool:
    """Makes Inductor compile inner reductions of up to ``ROW_LIMIT`` values as persistent ones, in this
    process, unless ``ROW_LIMIT`` is 0 or someone else's heuristics are installed. Idempotent."""
    global _installed
    if _installed or ROW_LIMIT <= 0:
        return _installed
    factory = getattr(inductor_config, "inductor_choices_class", None)
    if type(V.choices) is not InductorChoices or factory is not None:
        logger.info("nestedfp: Inductor heuristics %s already installed; rows left as they are",
                    factory or type(V.choices).__name__)
        return False
    if hasattr(inductor_config, "inductor_choices_class"):  # every thread's default, and the cache key's
        inductor_config.inductor_choices_class = PersistentRows
    V.set_choices_handler(PersistentRows())  # this thread's, which may already hold the default
    _installed = True
    logger.info("nestedfp: Inductor reductions of up to %d values per row are persistent", ROW_LIMIT)
    return True


def uninstall() -> None:
    """Back to Inductor's default heuristics (tests, the benchmark's A/B)."""
    global _installed
    if hasattr(inductor_config, "inductor_choices_class"):
        inductor_config.inductor_choices_class = None
    V.set_choices_handler(InductorChoices())
    _installed = False


def silu_and_mul_quantized(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the engine compiles before down_proj: vLLM's native SiLU-and-mul, then the per-token codes."""
    from kernels.reference import quantize_per_token

    d = x.shape[-1] // 2
    y = torch.nn.functional.silu(x[..., :d]) * x[..., d:]
    return (y, *quantize_per_token(y))


def add_rms_norm_quantized(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the engine compiles before qkv_proj and gate_up_proj: vLLM's native fused add + RMSNorm, then
    the per-token codes."""
    from kernels.reference import quantize_per_token

    r = x + residual
    rf = r.float()
    y = (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * weight
    return (y, r, *quantize_per_token(y))


def bench(ms: list[int], rep_ms: int = 100) -> list[dict]:
    """Each pattern compiled with Inductor's heuristic and with ``install``'s, checked equal, then timed."""
    import triton.testing

    from kernels.reference import quantize_per_token

    cases = [("silu_and_mul_quantized", silu_and_mul_quantized, 14336), ("add_rms_norm_quantized",
                                                                        add_rms_norm_quantized, 4096)]
    inductor_config.fx_graph_cache = False  # both forms compile; the cache key may not see the handler
    rows = []
    for name, fn, k in cases:
        for m in ms:
            if name.startswith("silu"):
                args = (torch.randn(m, 2 * k, device="cuda", dtype=torch.float16),)
            else:
                args = (torch.randn(m, k, device="cuda", dtype=torch.float16),
                        torch.randn(m, k, device="cuda", dtype=torch.float16),
                        torch.rand(k, device="cuda", dtype=torch.float16) + 0.5)
            row = {"pattern": name, "m": m, "k": k}
            outs = {}
            for form in ("looped", "persistent"):
                torch._dynamo.reset()
                uninstall() if form == "looped" else install()
                f = torch.compile(fn, dynamic=False)
                outs[form] = f(*args)
                row[f"{form}_us"] = 1e3 * triton.testing.do_bench(lambda: f(*args), rep=rep_ms)
            uninstall()
            y = outs["persistent"][0]
            row["same_y"] = bool(torch.equal(outs["looped"][0], y))
            row["same_codes"] = bool(torch.equal(outs["looped"][-2].view(torch.uint8),
                                                 outs["persistent"][-2].view(torch.uint8)))
            ref_codes, _ = quantize_per_token(y)
            row["code_mismatch_vs_eager_of_y"] = int((ref_codes.view(torch.uint8)
                                                      != outs["persistent"][-2].view(torch.uint8)).sum())
            row["speedup"] = row["looped_us"] / row["persistent_us"]
            print(f"{name:24s} M={m:5d} K={k:5d}  looped {row['looped_us']:8.1f} us  persistent "
                  f"{row['persistent_us']:8.1f} us  x{row['speedup']:.2f}  same y {row['same_y']} codes "
                  f"{row['same_codes']}", flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="inductor_rows.json")
    ap.add_argument("--ms", default="1,16,64,256,1024,2048,8192")
    a = ap.parse_args(argv)
    rows = bench([int(m) for m in a.ms.split(",")])
    with open(a.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "row_limit": ROW_LIMIT,
                   "choices_class_config": hasattr(torch._inductor.config, "inductor_choices_class"),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
