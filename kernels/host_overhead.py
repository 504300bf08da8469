"""Host time to enqueue one ``nestedfp::linear`` call, and where it goes (run on the GPU).

    python -m kernels.host_overhead [--profile] [--out PATH]

Why: eager ``do_bench`` at small M times the host when the op's Python outlasts the GPU work it
enqueues (docs/BENCHMARKS.md, "Kernels v3"). This times enqueueing without a sync (the GPU runs
behind), against ``torch.matmul`` on the same shapes, for the direct call and for the registered
custom op (how vLLM calls it), in both modes; ``--profile`` adds cProfile's top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import torch

from kernels.bench import make_weight
from kernels.ops import new_mode_tensor
from kernels.triton_dispatch import nested_linear_cuda

CASES = (("8B.o", 4096, 4096, 1), ("8B.o", 4096, 4096, 64), ("8B.qkv", 6144, 4096, 256), ("8B.o", 4096, 4096, 1024))


def enqueue_us(fn, calls: int = 2000) -> float:
    """Median over 5 batches of the host time per call, without synchronizing inside a batch."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        times.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
        torch.cuda.synchronize()
    return sorted(times)[2]


def profile(fn, calls: int = 2000, top: int = 18) -> str:
    fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    for name, n, k, m in CASES:
        nw = make_weight(n, k)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        row = dict(shape=name, n=n, k=k, m=m, matmul_us=enqueue_us(lambda: torch.matmul(x, w16.t())))
        for mode_name in ("fp16", "fp8"):
            mode = new_mode_tensor("cuda", mode_name)
            row[f"direct_{mode_name}_us"] = enqueue_us(lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0))
            row[f"custom_op_{mode_name}_us"] = enqueue_us(
                lambda: torch.ops.nestedfp.linear(x, nw.upper, nw.lower, mode, 0))
            if args.profile:
                print(f"--- {name} M={m} {mode_name} (direct call, {2000} calls)")
                print(profile(lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)))
        rows.append(row)
        print({a: round(b, 2) if isinstance(b, float) else b for a, b in row.items()}, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
