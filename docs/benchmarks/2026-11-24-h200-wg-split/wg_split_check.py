"""Diagnostic: 128-row Gluon FP16 tiles with each consumer warpgroup in its own partition ("wg split").

As shipped, a 128-row tile's two consumer warpgroups form one 8-warp partition, which passes two CTA-wide
``bar.sync`` per K step around the release of a ring slot, so the warpgroups move in lockstep. The step
anatomy found these tiles paying 11-15% for their plane reads and merge, against at most 6% for 64-row tiles.
``wg_split.patch`` (beside this file, against ``kernels/gluon_fp16.py`` at 7993cf3) runs each 64-row half in
its own 4-warp partition; each waits on the slot's ready barrier and arrives on its empty barrier, which
now counts two arrivals. The second warpgroup gets 240 registers, the TMA worker 24.

Checks the variant against ``kernels.reference.nested_linear`` (NaN-poisoned output, ragged shapes, bias,
bf16, FP8 mode leaving the output alone), then times it against the same tiles as shipped, CUDA-graph
replays (``gluon_check.bench_us``), on the Llama shapes at the given M.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-wg-split/wg_split_check.py OUT.json [M,...]
"""

import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile

import torch

from kernels import gluon_fp16, nested_merge
from kernels.bench import make_weight, rel_err
from kernels.gluon_check import TOL, bench_us
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear
from kernels.triton_dispatch import nested_linear_cuda
from kernels.tuning import LLAMA_SHAPES, gluon_tile

HERE = pathlib.Path(__file__).resolve().parent
TILES = [(128, 256, 64, 4), (128, 256, 64, 3), (128, 128, 64, 6), (128, 128, 128, 3)]
RAGGED = [(1, 1000, 4096), (7, 4096, 1008), (33, 6144, 4000), (300, 1000, 2048), (257, 4160, 4096)]


def load_variant():
    """``kernels/gluon_fp16.py`` with ``wg_split.patch`` applied, as a module of its own."""
    path = pathlib.Path(tempfile.mkdtemp()) / "gluon_fp16_wgsplit.py"
    subprocess.run(["patch", "-s", "-o", str(path), str(HERE.parents[2] / "kernels" / "gluon_fp16.py"),
                    str(HERE / "wg_split.patch")], check=True)
    spec = importlib.util.spec_from_file_location("gluon_fp16_wgsplit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def checks(var) -> list[dict]:
    rows = []
    modes = {md: new_mode_tensor("cuda", md) for md in ("fp16", "fp8")}
    for (m, n, k) in RAGGED:
        for dtype, with_bias in ((torch.float16, False), (torch.float16, True), (torch.bfloat16, False)):
            nw = make_weight(n, k, amax=4.0 if with_bias else 0.25)
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
            ref = nested_linear(x, nw, "fp16", bias)
            for tile in TILES:
                out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                var.nested_fp16_gemm_rs(x, nw.upper, nw.lower, modes["fp16"], nw.scale_exp, bias, out, tile)
                err = rel_err(out, ref)
                keep = out.clone()
                var.nested_fp16_gemm_rs(x, nw.upper, nw.lower, modes["fp8"], nw.scale_exp, bias, out, tile)
                untouched = bool(torch.equal(out.nan_to_num(1.0), keep.nan_to_num(1.0)))
                ok = err < TOL * (4 if dtype == torch.bfloat16 else 1) and untouched
                rows.append(dict(m=m, n=n, k=k, dtype=str(dtype), bias=with_bias, tile=tile, rel_err=err,
                                 fp8_mode_untouched=untouched, ok=ok))
    print(f"checks: {sum(r['ok'] for r in rows)}/{len(rows)} ok", flush=True)
    return rows


def timings(var, ms: list[int]) -> list[dict]:
    mode = new_mode_tensor("cuda", "fp16")
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x @ w16.t()
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m, table_tile=gluon_tile(n, k, m))
            r["cublas_us"] = bench_us(lambda: torch.matmul(x, w16.t()), 30)
            r["shipped_op_us"] = bench_us(lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0), 30)
            for tile in TILES:
                for label, mod in (("shipped", gluon_fp16), ("wgsplit", var)):
                    def run(mod=mod, tile=tile):
                        return mod.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, None, out, tile)
                    out.fill_(float("nan"))
                    run()
                    err = rel_err(out, ref)
                    assert err < TOL, (name, m, tile, label, err)
                    r[f"{label}_{'x'.join(map(str, tile))}_us"] = bench_us(run, 30)
            rows.append(r)
            best = {lab: min(v for key, v in r.items() if key.startswith(lab + "_1")) for lab in ("shipped", "wgsplit")}
            print(f"{name:12s} M={m:5d} cuBLAS {r['cublas_us']:8.1f} op {r['shipped_op_us']:8.1f} best 128-row "
                  f"shipped {best['shipped']:8.1f} wgsplit {best['wgsplit']:8.1f}", flush=True)
        del nw, w16
        torch.cuda.empty_cache()
    return rows


def main(out_path: str, ms: list[int]) -> None:
    var = load_variant()
    res = dict(device=torch.cuda.get_device_name(), tiles=TILES, checks=checks(var))
    res["all_ok"] = all(r["ok"] for r in res["checks"])
    if res["all_ok"]:
        res["rows"] = timings(var, ms)
    json.dump(res, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [256, 512, 1024, 4096])
