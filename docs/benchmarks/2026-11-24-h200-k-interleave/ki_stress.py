"""Repeats one K-interleaved tile (``k_interleave.patch``) eagerly and in CUDA-graph replays, checking every
output: finds which tile and shape make the variant fail.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-k-interleave/ki_stress.py N K M TILE[;TILE...] [REPS] [--shipped]
"""

import functools
import sys

import torch

from kernels import gluon_check, nested_merge
from kernels.bench import make_weight, rel_err

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from k_interleave_check import load_variant  # noqa: E402

variant = functools.cache(load_variant)  # one module for every tile, as in k_interleave_check


def main(n: int, k: int, m: int, tile: tuple[int, ...], reps: int, shipped: bool) -> None:
    if shipped:
        from kernels import gluon_fp16 as var
    else:
        var = variant()
    from kernels.ops import new_mode_tensor
    mode = new_mode_tensor("cuda", "fp16")
    nw = make_weight(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    ref = x @ nested_merge(nw).t()
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    worst = 0.0
    for _ in range(reps):
        out.fill_(float("nan"))
        gluon_check.run(x, nw, mode, tile, out=out, kernel=var)
        worst = max(worst, rel_err(out, ref))
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gluon_check.run(x, nw, mode, tile, out=out, kernel=var)
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    worst = max(worst, rel_err(out, ref))
    print(f"{'shipped' if shipped else 'K-interleaved'} N={n} K={k} M={m} tile={tile}: {reps} eager + {reps} replays, worst rel err {worst:.2e}", flush=True)


if __name__ == "__main__":
    a = sys.argv
    import os

    from kernels import fast_launch
    if os.environ.get("KI_SLOW"):  # every launch through Triton's own path
        fast_launch._hooks_set = lambda: True
    for t in a[4].split(";"):  # tiles in sequence, in one process; "S" before a tile: the shipped kernel
        if os.environ.get("KI_CLEAR"):
            fast_launch._DIRECT.clear()
            fast_launch._TMA.clear()
        main(int(a[1]), int(a[2]), int(a[3]), tuple(int(v) for v in t.lstrip("S").split(",")),
             int(a[5]) if len(a) > 5 else 200, "--shipped" in a or t.startswith("S"))
