"""Diagnostic: 64-row Gluon FP16 tiles with two consumer warpgroups on the same rows, over even and odd K steps.

As shipped, a 64-row tile has one consumer warpgroup: per K step it reads the planes, merges them and issues
the MMA, with one MMA in flight. The step anatomy put a 12-program grid at 30.4 us with the merge and 25.8
without it, against about 17 us of MMAs, so one warpgroup cannot hide its own merge. ``k_interleave.patch``
(beside this file, against ``kernels/gluon_fp16.py`` at cb7fe89) gives 64-row tiles a second consumer
warpgroup over the same 64 weight rows: the first takes K steps 0, 2, 4, ..., the second 1, 3, 5, ...; each
retires its MMA before it releases the slot, while the other's MMA keeps the tensor cores busy. At the end
the second hands its fp32 sum over through the (then idle) ring's x buffers, and the first adds it and runs
the epilogue. The weight tile, the grid and the ring stay as shipped.

Checks the variant's tiles as the tile sweep does (``gluon_check.checks``), then times every tile as shipped
and as the variant (where 128-row tiles run unchanged: their two timings measure the run's noise), CUDA-graph
replays (``gluon_check.time_configs``), on the Llama shapes at the given M.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-k-interleave/k_interleave_check.py OUT.json [M,...] [SHAPE,...]
"""

import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import torch

from kernels import gluon_check, gluon_fp16, nested_merge
from kernels.bench import make_weight
from kernels.gluon_sass import load_module
from kernels.ops import new_mode_tensor
from kernels.tuning import LLAMA_SHAPES, gluon_tile

HERE = pathlib.Path(__file__).resolve().parent
ROWS64 = [(64, 16, 128, 5), (64, 64, 128, 5), (64, 64, 128, 7), (64, 128, 64, 9), (64, 128, 128, 4),
          (64, 256, 64, 5), (64, 16, 128, 5, 2), (64, 64, 128, 5, 2), (64, 128, 128, 4, 2)]
SHAPES = {**LLAMA_SHAPES, "n768": (768, 4096)}  # n768: K = 4096 on 12 64-row tiles, no contention
ROWS128 = [(128, 16, 128, 5), (128, 64, 128, 4), (128, 128, 64, 5), (128, 256, 64, 4), (128, 256, 64, 3)]
# To narrow a failure down: KI_TILES="64,16,128,5;...", KI_LABELS=ki (skip the shipped timings), KI_NO_CHECKS=1.
TILES = ([tuple(int(v) for v in t.split(",")) for t in os.environ["KI_TILES"].split(";")]
         if os.environ.get("KI_TILES") else ROWS64 + ROWS128)
LABELS = os.environ.get("KI_LABELS", "shipped,ki").split(",")


def load_variant():
    """``kernels/gluon_fp16.py`` with ``k_interleave.patch`` applied, as a module of its own."""
    path = pathlib.Path(tempfile.mkdtemp()) / "gluon_fp16_ki.py"
    subprocess.run(["patch", "-s", "-o", str(path), str(HERE.parents[2] / "kernels" / "gluon_fp16.py"),
                    str(HERE / "k_interleave.patch")], check=True)
    return load_module(str(path))


def timings(var, ms: list[int], shapes: list[str], rows: list[dict], write) -> None:
    """Per shape and M: cuBLAS FP16, then every tile that fits M as shipped and as the variant; ``write``
    after each row, so that a crash keeps the rows before it."""
    mode = new_mode_tensor("cuda", "fp16")
    for name in shapes:
        n, k = SHAPES[name]
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m, table_tile=gluon_tile(n, k, m))
            r["cublas_us"] = gluon_check.bench_us(lambda: torch.matmul(x, w16.t()), 30)
            tiles = gluon_check.configs_for(m, TILES, named=True)
            for label, kernel in (("shipped", gluon_fp16), ("ki", var)):
                if label not in LABELS:
                    continue
                run = functools.partial(gluon_check.run, x, nw, mode, out=out, kernel=kernel)
                r[label] = {"cublas_us": r["cublas_us"]}
                gluon_check.time_configs(r[label], tiles, run, out, x @ w16.t(), gluon_check.TOL, 30)
                for e in r[label]["configs"]:
                    print(f"  {label:7s} {str(e['cfg']):22s} {e.get('us', float('nan')):8.1f} {e.get('error', '')}",
                          flush=True)
            us = {lab: {tuple(e["cfg"]): e.get("us") for e in r[lab]["configs"]} for lab in LABELS}
            best64 = {lab: min((v for c, v in us[lab].items() if c[0] == 64 and v), default=float("nan"))
                      for lab in us}
            r["best64_us"] = best64
            rows.append(r)
            write()
            best = {lab: r.get(lab, {}).get("best_us") or float("nan") for lab in ("shipped", "ki")}
            print(f"{name:12s} M={m:5d} cuBLAS {r['cublas_us']:8.1f} | best shipped {best['shipped']:8.1f}"
                  f" {r.get('shipped', {}).get('best_cfg')} | best with KI {best['ki']:8.1f}"
                  f" {r.get('ki', {}).get('best_cfg')} | 64-row {best64}", flush=True)
        del nw, w16
        torch.cuda.empty_cache()


def main(out_path: str, ms: list[int], shapes: list[str]) -> None:
    var = load_variant()
    res = dict(device=torch.cuda.get_device_name(), tiles=ROWS64 + ROWS128,
               checks=[] if os.environ.get("KI_NO_CHECKS") else gluon_check.checks(ROWS64, var), rows=[])
    res["all_ok"] = all(r["ok"] for r in res["checks"])
    print("checks", sum(r["ok"] for r in res["checks"]), "/", len(res["checks"]), flush=True)
    write = lambda: json.dump(res, open(out_path, "w"), indent=1)  # noqa: E731
    write()
    if res["all_ok"]:
        timings(var, ms, shapes, res["rows"], write)


if __name__ == "__main__":
    main(sys.argv[1], [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 128, 256, 1024],
         sys.argv[3].split(",") if len(sys.argv) > 3 else list(SHAPES))
