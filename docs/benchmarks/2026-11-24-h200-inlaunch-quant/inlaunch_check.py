"""Diagnostic: the Gluon FP8 GEMM launch quantizing x's rows itself, each row once (``QROWS``: programs draw row
tickets, quantize the rows drawn into the codes buffer, count them per token block; each TMA producer waits for its
block's count), against ``act_quant`` + the GEMM as a PDL launch (what the op runs now), on an H200.

Checks first, on ragged cases and every table config at M <= 64: the codes, the scales and the output equal those
of ``act_quant`` + the same config (``torch.equal``), three launches in a row and a CUDA-graph replay give the same,
and the control words are zero after each launch. Then CUDA-graph replays (do_bench median, L2 flushed) of
given (the GEMM on given codes), sep (act_quant + the GEMM, PDL) and inlaunch (one launch), and eager calls of sep
and inlaunch, on the Llama shapes at M = 1, 16, 64 with the table's configs.

    git apply docs/benchmarks/2026-11-24-h200-inlaunch-quant/inlaunch_quant.patch   # against 7f6c3f6
    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-inlaunch-quant/inlaunch_check.py $OUT/inlaunch.json
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


def inlaunch(x, nw, mode, cfg, out, bias=None):
    m, k = x.shape
    xq = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    xs = torch.empty((m,), dtype=torch.float32, device=x.device)
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, bias, out, cfg[:4], split_k=cfg[4], quantize=x)
    return xq, xs


def sep(x, nw, mode, cfg, out, bias=None, quant=None):
    xq, xs = act_quant(x, mode, quant)
    G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, bias, out, cfg[:4], split_k=cfg[4], pdl=True)
    return xq, xs


def ctl_clear(m: int, block_t: int) -> bool:
    torch.cuda.synchronize()
    c = G._ctl(torch.device("cuda", torch.cuda.current_device()))
    return bool((c[: 2 + -(-m // block_t)] == 0).all())


def checks() -> list[dict]:
    m8 = new_mode_tensor("cuda", "fp8")
    cfgs = sorted({tuple(c) for sh in LLAMA_SHAPES.values() for mm in (1, 16, 64)
                   for c in [gluon_fp8_config(*sh, mm)] if c})
    cases = [((1, 4096, 4096), torch.float16, False), ((7, 208, 512), torch.float16, True),
             ((16, 3024, 2048), torch.bfloat16, True), ((33, 1008, 1056), torch.float16, False),
             ((64, 4096, 1024), torch.float16, True), ((5, 1024, 14336), torch.bfloat16, False),
             ((64, 1024, 28672), torch.float16, False)]
    rows = []
    for (m, n, k), dtype, with_bias in cases:
        nw = make_weight(n, k)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        x[:, ::97] *= 40
        b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
        ref = nested_linear(x, nw, "fp8", bias=b)
        for c in cfgs:
            row = dict(m=m, n=n, k=k, dtype=str(dtype), bias=with_bias, cfg=c)
            try:
                o_sep = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
                q_sep, s_sep = sep(x, nw, m8, c, o_sep, b)
                outs = []
                for _ in range(3):
                    o = torch.full_like(o_sep, float("nan"))
                    q, s = inlaunch(x, nw, m8, c, o, b)
                    outs.append((o, q, s, ctl_clear(m, c[1])))
                o, q, s, clear = outs[0]
                go = torch.full_like(o_sep, float("nan"))
                replay = graphed(lambda: inlaunch(x, nw, m8, c, go, b))
                go.fill_(float("nan"))
                replay()
                row.update(
                    codes_equal=bool(torch.equal(q.view(torch.uint8), q_sep.view(torch.uint8))),
                    scales_equal=bool(torch.equal(s, s_sep)), out_equal=bool(torch.equal(o, o_sep)),
                    repeat_equal=all(torch.equal(oo, o) for oo, *_ in outs[1:]), ctl_clear=all(cc for *_, cc in outs),
                    graph_equal=bool(torch.equal(go, o)), graph_ctl_clear=ctl_clear(m, c[1]), rel_err=rel_err(o, ref))
                row["ok"] = all(row[key] for key in ("codes_equal", "scales_equal", "out_equal", "repeat_equal",
                                                     "ctl_clear", "graph_equal", "graph_ctl_clear"))
            except Exception as ex:  # noqa: BLE001 - recorded
                row.update(ok=False, error=f"{type(ex).__name__}: {str(ex)[:300]}")
            rows.append(row)
        got = rows[-len(cfgs):]
        print(f"check M={m} N={n} K={k} {dtype} bias={with_bias}: {sum(r['ok'] for r in got)}/{len(cfgs)} ok",
              [(r["cfg"], r.get("error", "")[:100] or {kk: v for kk, v in r.items() if v is False}) for r in got
               if not r["ok"]], flush=True)
    return rows


def main(out_path: str) -> None:
    t0 = time.time()
    res: dict = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     command=" ".join(sys.argv))
    res["checks"] = checks()
    mode = new_mode_tensor("cuda", "fp8")
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        nw = make_weight(n, k)
        for m in (1, 16, 64):
            c = gluon_fp8_config(n, k, m)
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xq, xs = act_quant(x, mode)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            r = dict(shape=name, n=n, k=k, m=m, cfg=c)
            r["given_us"] = bench_us(lambda: G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, None, out,
                                                                  c[:4], split_k=c[4]), 20)
            r["sep_us"] = bench_us(lambda: sep(x, nw, mode, c, out, None, (xq, xs)), 20)
            r["inlaunch_us"] = bench_us(lambda: G.nested_fp8_gemm_rs(xq, xs, nw.upper, mode, nw.scale_exp, None, out,
                                                                     c[:4], split_k=c[4], quantize=x), 20)
            r["eager_sep_us"] = bench(lambda: sep(x, nw, mode, c, torch.empty_like(out)))
            r["eager_inlaunch_us"] = bench(lambda: inlaunch(x, nw, mode, c, torch.empty_like(out)))
            rows.append(r)
            print(f"{time.time() - t0:5.0f}s {name:12s} M={m:3d} {c} given {r['given_us']:6.1f} sep {r['sep_us']:6.1f}"
                  f" inlaunch {r['inlaunch_us']:6.1f} | eager sep {r['eager_sep_us']:6.1f} inlaunch "
                  f"{r['eager_inlaunch_us']:6.1f}", flush=True)
            res["rows"] = rows
            with open(out_path, "w") as f:
                json.dump(res, f, indent=1)
    for m in (1, 16, 64):
        sel = [r for r in rows if r["m"] == m]
        g = lambda key: math.exp(sum(math.log(r[key]) for r in sel) / len(sel))  # noqa: E731
        print(f"M={m}: geomean sep/inlaunch {g('sep_us') / g('inlaunch_us'):.3f}, given/inlaunch "
              f"{g('given_us') / g('inlaunch_us'):.3f}, eager sep/inlaunch "
              f"{g('eager_sep_us') / g('eager_inlaunch_us'):.3f}", flush=True)
    res["elapsed_s"] = round(time.time() - t0, 1)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
