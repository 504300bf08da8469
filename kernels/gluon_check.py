"""Check, then time, every tile of the Gluon NestedFP16 GEMM (``kernels.gluon_fp16``) on the H200.

    python -m kernels.gluon_check --out $OUT/gluon.json [--ms 1,16,64,...] [--configs "128,128,64,4;..."]
    python -m kernels.tuning --gluon-table $OUT/gluon.json      # the fastest tile per shape -> table

Checks (output poisoned with NaN, against ``kernels.reference.nested_linear``): ragged M/N/K, bias +
pre-scale + bf16, mode = 1 leaves ``out`` untouched. Timing: CUDA-graph replays under
``triton.testing.do_bench`` (median, L2 flushed before each replay) of cuBLAS FP16, the shipped op
(``nested_linear_cuda`` in FP16 mode), from M = 512 merge + cuBLAS (the op's eager alternative; the
table's ``merge_from`` comes from it) and every config (with split-K and stream-K variants where the
grid is small: ``configs_for``); each config is checked on the case before it is timed.
``kernels.gluon_fp8``'s sweep times its configs with the same helpers (``bench_us``, ``time_configs``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import triton

from kernels import gluon_fp16 as G
from kernels.bench import graphed, make_weight, rel_err
from kernels.fast_launch import cdiv
from kernels.split_k import sm_count
from kernels.tuning import LLAMA_SHAPES, STREAM_K, token_cap

Config = tuple[int, ...]  # block_w, block_t, block_k, stages[, split_k]
MERGE_MIN_M = 512  # from here up the sweep also times merge + cuBLAS, the op's eager FP16 path at large M
DEEP_STAGES = 12  # the deepest ring the sweep tries (the FP8 table runs 10-stage rings at decode)
TOL = 5e-3  # relative Frobenius error, fp16 GEMM level (kernels.bench uses the same); x4 for bf16


def bench_us(fn, rep_ms: int) -> float:
    """do_bench median of ``fn`` replayed from a CUDA graph (L2 flushed before each replay): eager
    timings of these GEMMs measure the host (the launch takes longer than the GPU work at small M)."""
    return triton.testing.do_bench(graphed(fn), warmup=5, rep=rep_ms, return_mode="median") * 1e3


def time_configs(row: dict, configs: list[tuple], run: Callable[[tuple], object], out: torch.Tensor,
                 ref: torch.Tensor, tol: float, rep_ms: int) -> int:
    """Checks each config on this sweep row's case and times those that pass (``run(cfg)`` writes
    ``out``, poisoned with NaN first, so an unwritten tile fails); stores them in ``row["configs"]``
    (cfg, rel_err, us or error) and the fastest as best_us, best_cfg and ``ratio`` (``row["cublas_us"]``
    over best_us). Returns how many passed."""
    timed = []
    for c in configs:
        e = dict(cfg=c)
        try:
            out.fill_(float("nan"))
            run(c)
            e["rel_err"] = rel_err(out, ref)
            if e["rel_err"] < tol:
                e["us"] = bench_us(functools.partial(run, c), rep_ms)
        except Exception as ex:  # noqa: BLE001 - recorded, so that the other configs still run
            e["error"] = f"{type(ex).__name__}: {str(ex)[:300]}"
        timed.append(e)
    row["configs"] = timed
    ok = [e for e in timed if "us" in e]
    if ok:
        best = min(ok, key=lambda e: e["us"])
        row.update(best_us=best["us"], best_cfg=best["cfg"], ratio=row["cublas_us"] / best["us"])
    return len(ok)


def default_configs() -> list[Config]:
    """Per (block_w, block_t, block_k) the deepest ring of up to 5 stages that fits, and also 3 stages
    where the tile is large (fewer stages, more room for a second CTA), and the deepest ring of up to
    ``DEEP_STAGES`` where more than 5 fit (the small token tiles of decode: more bytes in flight)."""
    out: list[Config] = []
    for w, t, k in itertools.product((64, 128), (16, 32, 64, 128, 256), (64, 128)):
        fits = [st for st in range(DEEP_STAGES, 2, -1) if G.config_problem(w, t, k, st) is None]  # deepest first
        shallow = [st for st in fits if st <= 5]
        if shallow:
            out.append((w, t, k, shallow[0]))
        if t * k >= 128 * 128 and 3 in shallow and shallow[0] != 3:
            out.append((w, t, k, 3))
        if fits and fits[0] > 5:
            out.append((w, t, k, fits[0]))
    return out


SPLITS = (2, 4)  # split-K for 64-row tiles of up to 128 tokens (compiled for sm_90 without spills)
STREAM_K_MAX_FILL = 0.9  # stream-K variants where the unsplit grid fills its waves less than this


def with_splits(configs: list[Config]) -> list[Config]:
    """The configs plus their split-K variants (``SPLITS``, where those compiled without spills) and their
    stream-K variants (fifth element ``STREAM_K``)."""
    four = [c for c in configs if len(c) == 4]
    return (list(configs) + [(*c, s) for c in four if c[0] == 64 and c[1] <= 128 for s in SPLITS]
            + [(*c, STREAM_K) for c in four])


def wave_fill(tiles: int, sms: int) -> float:
    """How full a grid of one program per tile keeps the SMs over its waves (1.0: every wave full)."""
    return tiles / (cdiv(tiles, sms) * sms)


def configs_for(m: int, configs: list[Config], n: int | None = None, sms: int = 132,
                named: bool = False) -> list[Config]:
    """Token tiles no wider than the power of two that covers M (a 256-wide tile at M = 16 is waste);
    given ``n``, split-K variants only where the unsplit grid leaves at least half the SMs idle, stream-K
    variants only where its waves are less than ``STREAM_K_MAX_FILL`` full. ``named``: configs the user
    listed (``--configs``), whose splits are all timed."""
    def wanted(c: Config) -> bool:
        if c[1] > token_cap(m):
            return False
        if len(c) == 4 or named:
            return True
        if n is None:
            return False
        tiles = cdiv(n, c[0]) * cdiv(m, c[1])
        return wave_fill(tiles, sms) < STREAM_K_MAX_FILL if c[4] == STREAM_K else tiles * c[4] <= sms

    return [c for c in configs if wanted(c)]


def run(x, nw, mode, c: Config, bias=None, out=None, kernel=G):
    """``kernel.nested_fp16_gemm_rs`` (the shipped module, or a variant of it a diagnostic loaded) with tile ``c``."""
    return kernel.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, bias, out, c)


def checks(configs: list[Config], kernel=G) -> list[dict]:
    """Each config of ``kernel`` (as ``run``) on ragged shapes, bias, a pre-scale and bf16, against the reference
    into a NaN-poisoned output; FP8 mode must leave that output as it was."""
    from kernels.ops import new_mode_tensor
    from kernels.reference import nested_linear

    rows = []
    m16, m8 = new_mode_tensor("cuda", "fp16"), new_mode_tensor("cuda", "fp8")
    for (m, n, k), dtype, with_bias, scale in (((100, 384, 2048), torch.float16, False, False),
                                               ((33, 200, 512), torch.float16, True, False),
                                               ((333, 3000, 2048), torch.bfloat16, True, True),
                                               ((7, 4096, 4096), torch.float16, False, False)):
        nw = make_weight(n, k, amax=4.0 if scale else 0.25)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
        ref = nested_linear(x, nw, "fp16", bias=b)
        for c in configs:
            out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
            row = dict(m=m, n=n, k=k, dtype=str(dtype), bias=with_bias, scale_exp=nw.scale_exp, cfg=c)
            try:
                run(x, nw, m16, c, b, out, kernel)
                torch.cuda.synchronize()
                row["rel_err"] = rel_err(out, ref)
                row["ok"] = row["rel_err"] < TOL * (4 if dtype == torch.bfloat16 else 1)
                keep = out.clone()
                run(x, nw, m8, c, b, out, kernel)
                torch.cuda.synchronize()
                row["fp8_mode_untouched"] = bool(torch.equal(out.nan_to_num(1.0), keep.nan_to_num(1.0)))
                row["ok"] = row["ok"] and row["fp8_mode_untouched"]
            except Exception as e:  # noqa: BLE001
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
            rows.append(row)
        print(f"check M={m} N={n} K={k} {dtype} bias={with_bias} scale_exp={nw.scale_exp}: "
              f"{sum(r['ok'] for r in rows[-len(configs):])}/{len(configs)} ok", flush=True)
    return rows


def sweep(shapes: dict, ms: tuple[int, ...], configs: list[Config], rep_ms: int, budget_s: float, t0: float,
          write, named: bool = False) -> list[dict]:
    from kernels import nested_merge
    from kernels.ops import new_mode_tensor
    from kernels.reference import nested_linear
    from kernels.triton_dispatch import nested_linear_cuda, use_gluon
    from kernels.triton_merge import merge_weight

    mode = new_mode_tensor("cuda", "fp16")
    rows = []
    for name, (n, k) in shapes.items():
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        for m in ms:
            if time.time() - t0 > budget_s:
                print(f"budget spent before {name} M={m}", flush=True)
                return rows
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = nested_linear(x, nw, "fp16")
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m)
            r["cublas_us"] = bench_us(lambda: torch.matmul(x, w16.t()), rep_ms)
            r["shipped_us"] = bench_us(lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0), rep_ms)
            r["shipped_ratio"] = r["cublas_us"] / r["shipped_us"]
            if m >= MERGE_MIN_M:  # the eager large-M alternative: merge pass + cuBLAS (kernels.tuning.merge_from)
                r["merge_cublas_us"] = bench_us(lambda: F.linear(x, merge_weight(nw.upper, nw.lower, 0, x.dtype)),
                                                rep_ms)
            shipped = use_gluon(x, nw.upper, nw.lower)  # the kernel shipped_us timed (Gluon tile or None)
            r["shipped_gluon"] = list(shipped) if shipped else None
            timed = configs_for(m, configs, n, sm_count(x.device), named)
            ok = time_configs(r, timed, functools.partial(run, x, nw, mode, out=out), out, ref, TOL, rep_ms)
            rows.append(r)
            print(f"{time.time() - t0:5.0f}s {name:12s} M={m:5d} cuBLAS {r['cublas_us']:8.1f} shipped "
                  f"{r['shipped_us']:8.1f} rs {r.get('best_us', float('nan')):8.1f} x{r.get('ratio', 0):.3f} "
                  f"(shipped x{r['shipped_ratio']:.3f}) {r.get('best_cfg')} "
                  f"[{ok}/{len(r['configs'])} ok]", flush=True)
            write()
        del nw, w16
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="rs.json")
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES))
    ap.add_argument("--ms", default="1,16,64,128,256,512,1024,4096")
    ap.add_argument("--configs", default=None)
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=400)
    args = ap.parse_args()
    t0 = time.time()
    configs = ([tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")] if args.configs
               else with_splits(default_configs()))
    shapes = {s: LLAMA_SHAPES[s] for s in args.shapes.split(",")}
    ms = tuple(int(v) for v in args.ms.split(","))
    res: dict = dict(meta=dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                               date=time.strftime("%Y-%m-%d %H:%M:%S"), configs=configs))

    def write():
        res["meta"]["elapsed_s"] = round(time.time() - t0, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))

    res["checks"] = checks(configs)
    write()
    good = sorted({r["cfg"] for r in res["checks"]} - {r["cfg"] for r in res["checks"] if not r["ok"]})
    bad = [r for r in res["checks"] if not r["ok"]]
    for r in bad[:5]:
        print("FAILED:", r, flush=True)
    print(f"{len(good)} of {len(configs)} configs pass every check ({time.time() - t0:.0f} s)", flush=True)
    res["rows"] = sweep(shapes, ms, good, args.rep_ms, args.budget_s, t0, write, named=args.configs is not None)
    write()


if __name__ == "__main__":
    main()
