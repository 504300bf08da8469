"""Diagnostic: the Gluon FP16 kernel on K-permuted byte planes (one LDS.128 per row and plane) against the
shipped kernel on natural planes, same tiles, checked against the reference, timed in CUDA graphs.
"lperm": only the lower plane permuted. docs/BENCHMARKS.md, "Plane order".

At commit 2dd78ff, copy this file into kernels/ and make kernels/gluon_fp16_perm.py and kernels/gluon_fp16_lperm.py
(kernels/gluon_fp16.py with gluon_fp16_perm.patch / gluon_fp16_lperm.patch applied), then on the H200:

    python -m kernels.perm_check --out $OUT/perm.json [--ms 64,256,1024] [--shapes 8B.qkv,...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kernels import gluon_fp16 as G
from kernels import nested_merge
from kernels import gluon_fp16_perm as P
from kernels import gluon_fp16_lperm as LP
from kernels.bench import make_weight, rel_err
from kernels.gluon_check import TOL, bench_us
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear
from kernels.tuning import LLAMA_SHAPES


def stored_order() -> torch.Tensor:
    """idx[s] = natural k held at stored byte s of a 64-byte group: s = 16q + 4c + 2e1 + e0,
    k = 16c + 8e1 + 2q + e0."""
    s = torch.arange(64)
    q, c, e1, e0 = s >> 4, (s >> 2) & 3, (s >> 1) & 1, s & 1
    return 16 * c + 8 * e1 + 2 * q + e0


def permute_plane(p: torch.Tensor) -> torch.Tensor:
    n, k = p.shape
    idx = stored_order().to(p.device)
    return p.view(torch.uint8).view(n, k // 64, 64)[:, :, idx].reshape(n, k).contiguous()


CONFIGS = {16: [(64, 16, 128, 5), (128, 16, 128, 5), (64, 16, 128, 5, 2)],
           64: [(64, 64, 128, 5), (128, 64, 128, 4), (64, 64, 128, 5, 2)],
           256: [(64, 256, 64, 5), (128, 256, 64, 4), (64, 128, 128, 4), (64, 128, 64, 5)],
           1024: [(64, 256, 64, 5), (128, 256, 64, 4), (128, 256, 64, 3)],
           4096: [(128, 256, 64, 4), (128, 256, 64, 3), (64, 256, 64, 5)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="perm.json")
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES))
    ap.add_argument("--ms", default="16,64,256,1024")
    ap.add_argument("--rep-ms", type=int, default=25)
    a = ap.parse_args()
    t0 = time.time()
    mode = new_mode_tensor("cuda", "fp16")
    res = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), device=torch.cuda.get_device_name(), checks=[], rows=[])

    def write() -> None:  # after every row, so that a run cut short keeps what it measured
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)

    # ragged checks (K a multiple of 64)
    for m, n, k in ((7, 384, 512), (33, 200, 1024), (333, 3000, 2048), (1000, 4096, 4096)):
        nw = make_weight(n, k)
        up, lo = permute_plane(nw.upper), permute_plane(nw.lower)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = nested_linear(x, nw, "fp16")
        for c in sorted({c for v in CONFIGS.values() for c in v}):
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
            P.nested_fp16_gemm_rs(x, up, lo, mode, 0, None, out, c)
            torch.cuda.synchronize()
            res["checks"].append(dict(m=m, n=n, k=k, cfg=c, kind="perm", rel_err=rel_err(out, ref)))
            out.fill_(float("nan"))
            LP.nested_fp16_gemm_rs(x, nw.upper, lo, mode, 0, None, out, c)
            torch.cuda.synchronize()
            res["checks"].append(dict(m=m, n=n, k=k, cfg=c, kind="lperm", rel_err=rel_err(out, ref)))
    bad = [r for r in res["checks"] if not r["rel_err"] < TOL]
    print(f"checks: {len(res['checks']) - len(bad)}/{len(res['checks'])} ok", bad[:3], flush=True)
    for name in a.shapes.split(","):
        n, k = LLAMA_SHAPES[name]
        nw = make_weight(n, k)
        up, lo = permute_plane(nw.upper), permute_plane(nw.lower)
        w16 = nested_merge(nw)
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = nested_linear(x, nw, "fp16")
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            row = dict(shape=name, m=m, cublas_us=bench_us(lambda: torch.matmul(x, w16.t()), a.rep_ms), cfgs=[])
            for c in CONFIGS[m]:
                e = dict(cfg=c)
                for tag, mod, u_, l_ in (("nat", G, nw.upper, nw.lower), ("perm", P, up, lo), ("lperm", LP, nw.upper, lo)):
                    out.fill_(float("nan"))
                    mod.nested_fp16_gemm_rs(x, u_, l_, mode, 0, None, out, c)
                    e[f"{tag}_err"] = rel_err(out, ref)
                    if e[f"{tag}_err"] < TOL:
                        e[f"{tag}_us"] = bench_us(lambda: mod.nested_fp16_gemm_rs(x, u_, l_, mode, 0, None, out, c),
                                                  a.rep_ms)
                row["cfgs"].append(e)
            best = {t: min((e[f"{t}_us"] for e in row["cfgs"] if f"{t}_us" in e), default=float("nan"))
                    for t in ("nat", "perm", "lperm")}
            row.update(best_nat_us=best["nat"], best_perm_us=best["perm"], best_lperm_us=best["lperm"])
            res["rows"].append(row)
            print(f"{time.time() - t0:5.0f}s {name:12s} M={m:5d} cuBLAS {row['cublas_us']:8.1f} nat {best['nat']:8.1f} "
                  f"(x{row['cublas_us'] / best['nat']:.3f}) perm x{row['cublas_us'] / best['perm']:.3f} "
                  f"lperm x{row['cublas_us'] / best['lperm']:.3f} "
                  + " ".join(f"{e['cfg']}:{e.get('nat_us', float('nan')):.1f}/{e.get('perm_us', float('nan')):.1f}"
                             f"/{e.get('lperm_us', float('nan')):.1f}"
                             for e in row["cfgs"]), flush=True)
            write()
        del nw, up, lo, w16
        torch.cuda.empty_cache()
    res["elapsed_s"] = time.time() - t0
    write()


if __name__ == "__main__":
    main()
