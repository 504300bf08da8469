"""Diagnostic: the Gluon FP8 GEMM quantizing x itself (``nested_fp8_gemm_rs(x, None, ...)``), against
``act_quant`` + the same GEMM on codes, at M = 1, 16, 64 on the Llama shapes (an H200).

Checks first: on ragged cases every fused tile must write exactly what ``act_quant`` + the same tile writes
(same codes, same MMA order: ``torch.equal``), leave ``out`` alone in FP16 mode, and match the reference.
Then per shape and M, CUDA-graph replays (do_bench median, L2 flushed) of
  given: the GEMM on given codes (the table's config), the lower bound;
  sep:   act_quant + the GEMM as a PDL launch (the table's config), what the op runs now;
  fused: the GEMM on x, each candidate tile (split-K for 64-row tiles);
and eager calls (host enqueue included) of sep and the best fused config.

    git apply docs/benchmarks/2026-11-24-h200-fused-quant/fused_quant.patch   # the kernel with QUANT (3c250f8)
    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-fused-quant/fused_quant_check.py $OUT/fused_quant.json

Not adopted (docs/BENCHMARKS.md, "The quantization inside the Gluon FP8 GEMM"): without the patch, the shipped
``nested_fp8_gemm_rs`` refuses x in place of codes.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch

from kernels import gluon_fp8 as G
from kernels.bench import bench, graphed, make_weight, rel_err
from kernels.gluon_check import bench_us
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear
from kernels.triton_fp8 import act_quant
from kernels.tuning import LLAMA_SHAPES, gluon_fp8_config

QUANT_TILES = {  # per token tile: the candidates (block_w, block_t, block_k, stages)
    16: [(64, 16, 256, 8), (64, 16, 128, 10), (128, 16, 256, 5), (128, 16, 128, 10)],
    64: [(64, 64, 128, 6), (128, 64, 128, 6), (64, 32, 256, 6)],
}


def candidates(m: int, n: int, sms: int) -> list[tuple]:
    out = []
    for t in QUANT_TILES[16 if m <= 16 else 64]:
        out.append((*t, 1))
        if t[0] == 64:
            grid = -(-n // 64) * -(-m // t[1])
            out.extend((*t, s) for s in (2, 4) if grid * s <= 5 * sms)
    return out


def run(x, nw, mode, cfg, out, quant=None, pdl=False):
    xq, xs = quant if quant is not None else (x, None)
    return G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, None, out, cfg[:4], split_k=cfg[4], pdl=pdl)


def checks() -> list[dict]:
    m8, m16 = new_mode_tensor("cuda", "fp8"), new_mode_tensor("cuda", "fp16")
    rows = []
    cases = [((1, 4096, 4096), torch.float16, False, False), ((7, 208, 512), torch.float16, True, False),
             ((16, 3024, 2048), torch.bfloat16, True, True), ((33, 1008, 1056), torch.float16, False, False),
             ((64, 4096, 1024), torch.float16, True, False), ((5, 1024, 14336), torch.bfloat16, False, False)]
    cfgs = sorted({(*t, s) for ts in QUANT_TILES.values() for t in ts for s in (1, 2)})
    for (m, n, k), dtype, with_bias, prescale in cases:
        nw = make_weight(n, k, amax=4.0 if prescale else 0.25)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        x[:, ::97] *= 40
        b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
        xq, xs = act_quant(x, m8)
        ref = nested_linear(x, nw, "fp8", bias=b)
        for c in cfgs:
            row = dict(m=m, n=n, k=k, dtype=str(dtype), bias=with_bias, cfg=c)
            try:
                sep = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                G.nested_fp8_gemm_rs(xq, xs, nw.upper, m8, nw.scale_exp, b, sep, c[:4], split_k=c[4])
                fused = torch.full_like(sep, float("nan"))
                G.nested_fp8_gemm_rs(x, None, nw.upper, m8, nw.scale_exp, b, fused, c[:4], split_k=c[4])
                again = torch.full_like(sep, float("nan"))
                G.nested_fp8_gemm_rs(x, None, nw.upper, m8, nw.scale_exp, b, again, c[:4], split_k=c[4])
                keep = torch.full_like(sep, float("nan"))
                G.nested_fp8_gemm_rs(x, None, nw.upper, m16, nw.scale_exp, b, keep, c[:4], split_k=c[4])
                torch.cuda.synchronize()
                row.update(equal_sep=bool(torch.equal(fused, sep)), direct_equal=bool(torch.equal(fused, again)),
                           fp16_untouched=bool(torch.isnan(keep).all()), rel_err=rel_err(fused, ref),
                           max_abs_diff_sep=float((fused.float() - sep.float()).abs().max()))
                row["ok"] = row["equal_sep"] and row["direct_equal"] and row["fp16_untouched"]
            except Exception as ex:  # noqa: BLE001 - recorded
                row.update(ok=False, error=f"{type(ex).__name__}: {str(ex)[:300]}")
            rows.append(row)
        got = rows[-len(cfgs):]
        print(f"check M={m} N={n} K={k} {dtype} bias={with_bias}: {sum(r['ok'] for r in got)}/{len(cfgs)} ok",
              [r.get("error", "")[:120] or r["cfg"] for r in got if not r["ok"]], flush=True)
    return rows


def main(out_path: str) -> None:
    t0 = time.time()
    res: dict = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     command=" ".join(sys.argv))
    res["checks"] = checks()
    bad = {tuple(r["cfg"]) for r in res["checks"] if not r["ok"]}
    mode = new_mode_tensor("cuda", "fp8")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        nw = make_weight(n, k)
        for m in (1, 16, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xq, xs = act_quant(x, mode)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            g8 = gluon_fp8_config(n, k, m)
            r = dict(shape=name, n=n, k=k, m=m, table_cfg=g8)
            r["given_us"] = bench_us(lambda: run(x, nw, mode, g8, out, (xq, xs)), 20)
            r["sep_us"] = bench_us(lambda: (act_quant(x, mode, (xq, xs)), run(x, nw, mode, g8, out, (xq, xs), True)),
                                   20)
            ref = out.clone()
            timed = []
            for c in candidates(m, n, sms):
                if c in bad:
                    continue
                try:
                    out.fill_(float("nan"))
                    run(x, nw, mode, c, out)
                    torch.cuda.synchronize()
                    err = rel_err(out, ref)
                    us = bench_us(lambda c=c: run(x, nw, mode, c, out), 20) if err < 5e-3 else None
                    timed.append(dict(cfg=c, rel_err_vs_sep=err, us=us))
                except Exception as ex:  # noqa: BLE001
                    timed.append(dict(cfg=c, error=f"{type(ex).__name__}: {str(ex)[:200]}"))
            r["fused"] = timed
            ok = [t for t in timed if t.get("us")]
            if ok:
                best = min(ok, key=lambda t: t["us"])
                r["fused_best_us"], r["fused_best_cfg"] = best["us"], best["cfg"]
                c = best["cfg"]
                r["eager_sep_us"] = bench(lambda: (lambda q: G.nested_fp8_gemm_rs(
                    q[0], q[1], nw.upper, mode, nw.scale_exp, None, None, g8[:4], split_k=g8[4], pdl=True))(
                    act_quant(x, mode)))
                r["eager_fused_us"] = bench(lambda: G.nested_fp8_gemm_rs(x, None, nw.upper, mode, nw.scale_exp,
                                                                         None, None, c[:4], split_k=c[4]))
            rows.append(r)
            print(f"{time.time() - t0:5.0f}s {name:12s} M={m:3d} given {r['given_us']:6.1f} sep {r['sep_us']:6.1f} "
                  f"fused {r.get('fused_best_us', float('nan')):6.1f} {r.get('fused_best_cfg')} | eager sep "
                  f"{r.get('eager_sep_us', float('nan')):6.1f} fused {r.get('eager_fused_us', float('nan')):6.1f}",
                  flush=True)
            res["rows"] = rows
            with open(out_path, "w") as f:
                json.dump(res, f, indent=1)
    for m in (1, 16, 64):
        sel = [r for r in rows if r["m"] == m and "fused_best_us" in r]
        if sel:
            g = lambda key: math.exp(sum(math.log(r[key]) for r in sel) / len(sel))  # noqa: E731
            print(f"M={m}: geomean sep/fused {g('sep_us') / g('fused_best_us'):.3f}, given/fused "
                  f"{g('given_us') / g('fused_best_us'):.3f}, eager sep/fused "
                  f"{g('eager_sep_us') / g('eager_fused_us'):.3f}", flush=True)
    res["elapsed_s"] = round(time.time() - t0, 1)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
