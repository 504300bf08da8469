"""Three scheduling variants of the Gluon NestedFP16 kernel against its table's tile, on the H200 (diagnostic).

Run from the repository root, D=docs/benchmarks/2026-11-22-h200-gluon-schedules, on the kernel the runs used
(the patches are against it; a later commit moved the K-step loop into ``_mma_range``):

    git checkout 444a0c4 -- kernels/gluon_fp16.py kernels/gluon_sass.py

    PYTHONPATH=$PWD python3 $D/variants.py maxnreg OUT.json 64,256,1024
    patch -p1 < $D/depth.patch && PYTHONPATH=$PWD python3 $D/variants.py depth OUT.json 64,256,1024
    patch -R -p1 < $D/depth.patch
    patch -p1 < $D/hybrid.patch && PYTHONPATH=$PWD python3 $D/variants.py hybrid OUT.json 256,512,1024,2048
    patch -R -p1 < $D/hybrid.patch

- maxnreg: 64-row tiles small enough for two programs per SM in shared memory, launched through Triton with
  ``maxnreg=128`` (a program of 8 warps then holds half the register file) and without (255 registers: one per SM).
- depth (``depth.patch``): ``gluon_fp16.MMA_DEPTH`` MMA groups left in flight after each K step, 1 (as shipped)
  or 2 (three A register sets, the x slot released two steps later).
- hybrid (``hybrid.patch``): per tile, one program per tile, stream-K (fifth element 0) and hybrid (-1): whole
  waves one tile per program (persistent), stream-K over the rest.
Each config is checked against ``kernels.reference.nested_linear`` (output poisoned with NaN) before it is timed
(``kernels.gluon_check.bench_us``: CUDA-graph replays, do_bench median, L2 flushed).
"""
import json
import sys
import time

import torch

from kernels import gluon_fp16 as G, nested_merge, split_k
from kernels.bench import make_weight, rel_err
from kernels.fast_launch import TmaArg
from kernels.gluon_check import TOL, bench_us
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear
from kernels.tuning import LLAMA_SHAPES, gluon_tile

variant, out_path, ms = sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3].split(",")]
MAXNREG = [None]
_launch = G.launch


def launch_with_maxnreg(kernel, grid, args, consts, num_warps, num_stages, spec, pdl=False):
    if MAXNREG[0] is None:
        return _launch(kernel, grid, args, consts, num_warps, num_stages, spec, pdl)
    call = tuple(a.descriptor() if isinstance(a, TmaArg) else a for a in args)
    kernel[(grid,)](*call, **consts, num_warps=num_warps, num_stages=num_stages, maxnreg=MAXNREG[0])


G.launch = launch_with_maxnreg
if variant == "maxnreg":
    tiles = [(64, 128, 64, 4), (64, 128, 64, 3), (64, 128, 128, 2), (64, 64, 128, 3), (64, 64, 64, 4), (64, 32, 128, 4)]
    knobs = [None, 128]
elif variant == "depth":
    tiles = [(64, 256, 64, 5), (128, 256, 64, 4), (128, 256, 64, 3), (128, 128, 64, 5), (64, 128, 128, 4),
             (64, 64, 128, 5), (128, 64, 128, 4)]
    knobs = [1, 2]
else:
    base = [(64, 256, 64, 5), (128, 256, 64, 4), (128, 256, 64, 3), (128, 128, 64, 5), (64, 128, 128, 4)]
    tiles = base + [(*c, 0) for c in base] + [(*c, -1) for c in base]
    knobs = [None]


def set_knob(v):
    if variant == "maxnreg":
        MAXNREG[0] = v
    elif variant == "depth":
        G.MMA_DEPTH = v


mode = new_mode_tensor("cuda", "fp16")
split_k.reserve(torch.device("cuda"))
rows, t0 = [], time.time()
for name, (n, k) in LLAMA_SHAPES.items():
    nw = make_weight(n, k)
    w16 = nested_merge(nw)
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = nested_linear(x, nw, "fp16")
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        r = dict(shape=name, n=n, k=k, m=m, cublas_us=bench_us(lambda: torch.matmul(x, w16.t()), 20), cfgs=[])
        shipped = gluon_tile(n, k, m)
        r["shipped"] = list(shipped) if shipped else None
        cap = max(16, 1 << (m - 1).bit_length())
        tries = [(tuple(shipped), knobs[0])] if shipped else []
        tries += [(c, v) for c in tiles if c[1] <= cap for v in knobs]

        def run(c):
            G.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, None, out, c)

        for c, v in tries:
            set_knob(v)
            e = dict(cfg=c, knob=v)
            try:
                out.fill_(float("nan"))
                run(c)
                torch.cuda.synchronize()
                e["rel_err"] = rel_err(out, ref)
                if e["rel_err"] < TOL:
                    e["us"] = bench_us(lambda: run(c), 20)
                    out.fill_(float("nan"))
                    run(c)
                    torch.cuda.synchronize()
                    e["rel_err_after"] = rel_err(out, ref)  # stream-K counters reset: a second launch is right too
            except Exception as ex:  # noqa: BLE001 - recorded
                e["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            r["cfgs"].append(e)
        set_knob(knobs[0])
        rows.append(r)
        best = sorted([e for e in r["cfgs"] if "us" in e], key=lambda e: e["us"])[:6]
        print(f"{time.time() - t0:5.0f}s {name} M={m} cuBLAS {r['cublas_us']:.1f} table {shipped}: "
              + " | ".join(f"{e['cfg']} {e['knob']} {e['us']:.1f}" for e in best), flush=True)
        for e in r["cfgs"]:
            if "error" in e or e.get("rel_err", 0) >= TOL or e.get("rel_err_after", 0) >= TOL:
                print("   FAILED", e, flush=True)
        json.dump(dict(variant=variant, device=torch.cuda.get_device_name(),
                       date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), rows=rows),
                  open(out_path, "w"), indent=1)
    del nw, w16
    torch.cuda.empty_cache()
