"""What do_bench's L2 flush adds to a small-M GEMM's time (run on the GPU).

    python -m kernels.flush_cost [--ms 1,16,64] [--out PATH]

Why: at M <= 64 the FP8 target (1.6x cuBLAS FP16) is missed on the 8B layers, where even cuBLAS FP16 takes
18-23 us for 34-50 MB of weights (docs/BENCHMARKS.md, "Kernels v14"), about twice what the bytes need.
``triton.testing.do_bench`` flushes L2 by writing zeros over 256 MB, so the kernel it times starts with L2
full of dirty lines; any line the kernel's loads evict may first be written back to DRAM, on the kernel's
clock. A clean flush (reading 256 MB that nobody wrote since) empties L2 of the weights as well, but
leaves nothing to write back. This times the same CUDA graphs after each flush, and after none:

- graphs of 1-3 one-element kernels (``launches``): the fixed cost of a timed replay, with no bytes to move;
- a read of B bytes (``probe_*``): how many microseconds the dirty flush adds, by bytes read;
- per Llama shape and M: cuBLAS FP16, cuBLASLt FP8 (codes given), and the NestedFP16 / NestedFP8 op as
  CUDA graphs run it (the ``graph_*`` columns of ``kernels.bench``), and the FP8 op on given codes
  (``nestedfp::linear_prequantized``, as vLLM calls it): what the quantization launch costs.

The ``dirty`` loop is do_bench's timing with its flush; ``do_bench_*`` checks that it agrees.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import triton

from kernels import nested_merge
from kernels.bench import check, geomean, graphed, make_weight, scaled_mm_fn
from kernels.ops import new_mode_tensor
from kernels.reference import quantize_per_token
from kernels.triton_dispatch import nested_linear_cuda, nested_linear_prequantized_cuda
from kernels.tuning import LLAMA_SHAPES

FLUSH_BYTES = 256 * 2**20  # do_bench's flush buffer (Triton 3.6: 256 MB of int32)
PROBE_MB = (1, 8, 16, 32, 64, 128, 256)
REPS = 200


def flushes(device: torch.device) -> dict[str, callable]:
    """``dirty``: do_bench's flush (zeros written); ``clean``: the same bytes of another buffer read;
    ``none``: no flush (L2 keeps whatever the last run left)."""
    dirty = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    clean = torch.ones(FLUSH_BYTES // 2, dtype=torch.float16, device=device)
    out = torch.empty((), dtype=torch.float32, device=device)
    return {"dirty": dirty.zero_, "clean": lambda: torch.sum(clean, 0, dtype=torch.float32, out=out),
            "none": lambda: None}


def time_us(fn, flush, reps: int = REPS) -> float:
    """Median microseconds of ``fn`` over ``reps`` runs, each after ``flush``: do_bench's loop, any flush."""
    for _ in range(5):
        flush()
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def probe(fl: dict, device: torch.device) -> list[dict]:
    """A read of B bytes (a float16 sum, one graph) after each flush."""
    rows = []
    for mb in PROBE_MB:
        buf = torch.ones(mb * 2**20 // 2, dtype=torch.float16, device=device)
        out = torch.empty((), dtype=torch.float32, device=device)
        fn = graphed(lambda buf=buf, out=out: torch.sum(buf, 0, dtype=torch.float32, out=out))
        rows.append({"mb": mb, **{f"probe_{name}_us": time_us(fn, f) for name, f in fl.items()}})
        print(f"read {mb:4d} MB  " + "  ".join(f"{k} {v:7.1f}" for k, v in rows[-1].items() if k != "mb"), flush=True)
    return rows


def launches(fl: dict, device: torch.device, most: int = 3) -> list[dict]:
    """A graph of 1..``most`` one-element kernels after each flush: the fixed cost of a timed replay and of each
    kernel in it, with no bytes to move."""
    a = torch.zeros(1, device=device)
    rows = []
    for n in range(1, most + 1):
        fn = graphed(lambda n=n: [a.add_(1) for _ in range(n)])
        rows.append({"kernels": n, **{f"launch_{name}_us": time_us(fn, f) for name, f in fl.items()}})
        print(f"{n} kernel(s)  " + "  ".join(f"{k} {v:6.1f}" for k, v in rows[-1].items() if k != "kernels"),
              flush=True)
    return rows


def gemms(fl: dict, shapes: dict[str, tuple[int, int]], ms: tuple[int, ...]) -> list[dict]:
    """The four graphs per shape and M, each checked against the reference before it is timed."""
    modes = {md: new_mode_tensor("cuda", md) for md in ("fp16", "fp8")}
    rows = []
    for name, (n, k) in shapes.items():
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        for m in ms:
            rows.append(gemm_row(fl, name, nw, w16, torch.randn(m, k, device="cuda", dtype=torch.float16), modes))
        del nw, w16
        torch.cuda.empty_cache()
    return rows


def gemm_row(fl: dict, name: str, nw, w16: torch.Tensor, x: torch.Tensor, modes: dict) -> dict:
    n, k = nw.shape
    errs = check(x, nw)  # both modes, both picks, against the reference; raises if any is off
    r = {"shape": name, "n": n, "k": k, "m": x.shape[0], "err_fp16": errs["fp16"], "err_fp8": errs["fp8"]}
    codes = quantize_per_token(x)
    ops = {"cublas_fp16": lambda: torch.matmul(x, w16.t()), "cublaslt_fp8": scaled_mm_fn(x, nw)[0],
           "nested_fp16": lambda: nested_linear_cuda(x, nw.upper, nw.lower, modes["fp16"], 0),
           "nested_fp8": lambda: nested_linear_cuda(x, nw.upper, nw.lower, modes["fp8"], 0),
           "nested_fp8_given_codes": lambda: nested_linear_prequantized_cuda(x, *codes, nw.upper, nw.lower,
                                                                             modes["fp8"], 0)}
    ops = {key: op for key, op in ops.items() if op is not None}
    for key, op in ops.items():
        g = graphed(op)
        for fname, f in fl.items():
            r[f"{key}_{fname}_us"] = time_us(g, f)
        r[f"{key}_do_bench_us"] = triton.testing.do_bench(g, return_mode="median") * 1e3
    for fname in fl:
        for md in ("fp16", "fp8"):
            r[f"ratio_{md}_{fname}"] = r[f"cublas_fp16_{fname}_us"] / r[f"nested_{md}_{fname}_us"]
    print(f"{name:11s} M={x.shape[0]:3d}  " + "  ".join(
        f"{key} {r[f'{key}_dirty_us']:6.1f}/{r[f'{key}_clean_us']:6.1f}" for key in ops)
        + f"  fp8 x{r['ratio_fp8_dirty']:.3f}/x{r['ratio_fp8_clean']:.3f}", flush=True)
    return r


def summarize(rows: list[dict]) -> dict:
    """Geomean ratios to cuBLAS FP16 per flush, over all rows and per M."""
    s = {}
    for fname in ("dirty", "clean", "none"):
        for md in ("fp16", "fp8"):
            s[f"{md}_{fname}"] = geomean(r[f"ratio_{md}_{fname}"] for r in rows)
            for m in sorted({r["m"] for r in rows}):
                s[f"{md}_{fname}_m{m}"] = geomean(r[f"ratio_{md}_{fname}"] for r in rows if r["m"] == m)
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ms", default="1,16,64")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    t0 = time.time()
    dev = torch.device("cuda")
    fl = flushes(dev)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "reps": REPS, "flush_bytes": FLUSH_BYTES}
    res["launches"] = launches(fl, dev)
    res["probe"] = probe(fl, dev)
    res["rows"] = gemms(fl, LLAMA_SHAPES, tuple(int(m) for m in a.ms.split(",")))
    res["summary"] = summarize(res["rows"])
    res["elapsed_s"] = time.time() - t0
    print(json.dumps(res["summary"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
