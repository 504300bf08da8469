"""Diagnostic: 128-row Gluon FP16 tiles with each consumer warpgroup in its own partition ("wg split").

As shipped, a 128-row tile's two consumer warpgroups form one 8-warp partition, which passes two CTA-wide
``bar.sync`` per K step around the release of a ring slot, so the warpgroups move in lockstep. The step
anatomy found these tiles paying 11-15% for their plane reads and merge, against at most 6% for 64-row tiles.
``wg_split.patch`` (beside this file, against ``kernels/gluon_fp16.py`` at 7993cf3) runs each 64-row half in
its own 4-warp partition; each waits on the slot's ready barrier and arrives on its empty barrier, which
now counts two arrivals. The second warpgroup gets 240 registers, the TMA worker 24.

Checks the variant's tiles as the tile sweep does (``gluon_check.checks``: ragged shapes, bias, a pre-scale,
bf16, FP8 mode leaving the output alone), then times them against the same tiles as shipped, CUDA-graph replays
(``gluon_check.time_configs``), on the Llama shapes at the given M.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-wg-split/wg_split_check.py OUT.json [M,...]
"""

import functools
import json
import pathlib
import subprocess
import sys
import tempfile

import torch

from kernels import gluon_check, gluon_fp16, nested_merge
from kernels.bench import make_weight
from kernels.gluon_sass import load_module
from kernels.ops import new_mode_tensor
from kernels.triton_dispatch import nested_linear_cuda
from kernels.tuning import LLAMA_SHAPES, gluon_tile

HERE = pathlib.Path(__file__).resolve().parent
TILES = [(128, 256, 64, 4), (128, 256, 64, 3), (128, 128, 64, 6), (128, 128, 128, 3)]


def load_variant():
    """``kernels/gluon_fp16.py`` with ``wg_split.patch`` applied, as a module of its own."""
    path = pathlib.Path(tempfile.mkdtemp()) / "gluon_fp16_wgsplit.py"
    subprocess.run(["patch", "-s", "-o", str(path), str(HERE.parents[2] / "kernels" / "gluon_fp16.py"),
                    str(HERE / "wg_split.patch")], check=True)
    return load_module(str(path))


def timings(var, ms: list[int]) -> list[dict]:
    """Per Llama shape and M: cuBLAS FP16, the shipped op, and each tile as shipped and split
    (``gluon_check.time_configs``: checked against the merged weight, then timed)."""
    mode = new_mode_tensor("cuda", "fp16")
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m, table_tile=gluon_tile(n, k, m))
            r["cublas_us"] = gluon_check.bench_us(lambda: torch.matmul(x, w16.t()), 30)
            r["shipped_op_us"] = gluon_check.bench_us(lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0), 30)
            for label, kernel in (("shipped", gluon_fp16), ("wgsplit", var)):
                run = functools.partial(gluon_check.run, x, nw, mode, out=out, kernel=kernel)
                r[label] = {"cublas_us": r["cublas_us"]}  # time_configs' ratio is to it
                gluon_check.time_configs(r[label], TILES, run, out, x @ w16.t(), gluon_check.TOL, 30)
            rows.append(r)
            print(f"{name:12s} M={m:5d} cuBLAS {r['cublas_us']:8.1f} op {r['shipped_op_us']:8.1f} best 128-row "
                  f"shipped {r['shipped'].get('best_us', float('nan')):8.1f} "
                  f"wgsplit {r['wgsplit'].get('best_us', float('nan')):8.1f}", flush=True)
        del nw, w16
        torch.cuda.empty_cache()
    return rows


def main(out_path: str, ms: list[int]) -> None:
    var = load_variant()
    res = dict(device=torch.cuda.get_device_name(), tiles=TILES, checks=gluon_check.checks(TILES, var))
    res["all_ok"] = all(r["ok"] for r in res["checks"])
    if res["all_ok"]:
        res["rows"] = timings(var, ms)
    json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [256, 512, 1024, 4096])
