"""A target for Nsight Compute: the op's Gluon FP16 kernel and cuBLAS FP16 on one shape, three times each.

Why: ``kernels.bench`` says how far a shape is from cuBLAS; ncu says why (grid size, waves, DRAM and SM
throughput, stalls). Run on the H200, e.g. for the Gluon kernel's third launch:

    ncu --kernel-name regex:nested_fp16_rs_kernel --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section LaunchStats python -m kernels.ncu_target 6144 4096 256

(``--kernel-name regex:"gemm|sm90|cutlass|Kernel"`` picks cuBLAS's kernel instead.) ncu locks the clocks,
so its durations are not comparable with ``kernels.bench``'s.
"""

from __future__ import annotations

import argparse

import torch


def launch_target(n: int, k: int, m: int, tile: tuple[int, ...], kernel=None) -> None:
    """Three launches of ``kernel.nested_fp16_gemm_rs`` (``kernels.gluon_fp16``, or a variant of it a diagnostic
    loaded) with ``tile`` on an [m, k] x [n, k] problem, then three of cuBLAS FP16 on the same shape."""
    from kernels import gluon_fp16, split_k
    from kernels.bench import make_weight
    from kernels.ops import new_mode_tensor

    kernel = kernel or gluon_fp16
    nw = make_weight(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    mode = new_mode_tensor("cuda", "fp16")
    out = torch.empty(m, n, device="cuda", dtype=torch.float16)
    split_k.reserve(x.device)  # stream-K and split-K tiles need its buffers
    print("tile", tile, flush=True)
    for _ in range(3):
        kernel.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, None, out, tile, True, None)
    w16 = torch.empty(n, k, device="cuda", dtype=torch.float16)
    for _ in range(3):
        torch.matmul(x, w16.t())
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    from kernels.tuning import gluon_tile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("m", type=int)
    ap.add_argument("--tile", help="the Gluon tile to run instead of the table's, e.g. 64,256,64,5,0 (stream-K)")
    a = ap.parse_args(argv)
    tile = tuple(int(v) for v in a.tile.split(",")) if a.tile else gluon_tile(a.n, a.k, a.m)
    launch_target(a.n, a.k, a.m, tile)


if __name__ == "__main__":
    main()
