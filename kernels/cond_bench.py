"""CUDA graphs of the op with a conditional node per call, checked and timed against the old captures.

    python -m kernels.cond_bench --out PATH [--shapes 8B.o,...] [--ms 1,16,...]   (on the GPU)

Per shape and M (the sizes vLLM captures): one graph captured in FP16 mode must replay, after each
mode flip, exactly (bitwise) the eager output of the mode set; poisoned outputs first. Then CUDA-graph
replay times (``do_bench`` medians, us) of cuBLAS FP16, the old capture (both kernels, each reading
the mode), and the conditional capture with FP8 mode on cuBLASLt and on the Triton FP8 kernel, in
both modes. ``triton_dispatch.CUBLASLT_FP8_MIN_M`` is chosen from these rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from unittest import mock

import torch

from kernels import cuda_conditional, triton_dispatch
from kernels.bench import bench, graphed, make_weight
from kernels.nested_format import nested_merge
from kernels.ops import new_mode_tensor, set_host_mode
from kernels.tuning import LLAMA_SHAPES

VARIANTS = {  # name: (USE_CONDITIONAL, CUBLASLT_FP8_MIN_M)
    "old": (False, 1 << 30),
    "cond_lt": (True, 1),
    "cond_triton": (True, 1 << 30),
}


def run_variant(x: torch.Tensor, nw, mode: torch.Tensor, use_cond: bool, min_m: int) -> dict:
    r = {}
    with mock.patch.object(triton_dispatch, "USE_CONDITIONAL", use_cond), \
            mock.patch.object(triton_dispatch, "CUBLASLT_FP8_MIN_M", min_m):
        def op():
            return triton_dispatch.nested_linear_cuda(x, nw.upper, nw.lower, mode, 0)

        eager = {}
        for md in ("fp16", "fp8"):
            set_host_mode(mode, md)
            eager[md] = op().clone()
        set_host_mode(mode, "fp16")
        outs: list[torch.Tensor] = []
        replay = graphed(lambda: outs.append(op()))  # outs[-1]: the captured call's output
        for md in ("fp8", "fp16"):
            set_host_mode(mode, md)
            outs[-1].fill_(float("nan"))
            replay()
            torch.cuda.synchronize()
            r[f"equal_{md}"] = bool(torch.equal(outs[-1], eager[md]))
            r[f"{md}_us"] = bench(replay)
    return r


def run_shape(name: str, ms: tuple[int, ...]) -> list[dict]:
    n, k = LLAMA_SHAPES[name]
    nw = make_weight(n, k)
    w16 = nested_merge(nw)
    rows = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        mode = new_mode_tensor("cuda", "fp16")
        r = dict(shape=name, n=n, k=k, m=m)
        r["cublas_fp16_us"] = bench(graphed(lambda x=x: torch.matmul(x, w16.t())))
        for variant, (use_cond, min_m) in VARIANTS.items():
            for key, v in run_variant(x, nw, mode, use_cond, min_m).items():
                r[f"{variant}_{key}"] = v
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Geomeans over shapes, per M, of cuBLAS FP16 time / the variant's time."""
    out = {}
    for m in sorted({r["m"] for r in rows}):
        sel = [r for r in rows if r["m"] == m]
        out[m] = {f"{v}_{md}": math.exp(sum(math.log(r["cublas_fp16_us"] / r[f"{v}_{md}_us"]) for r in sel)
                                        / len(sel)) for v in VARIANTS for md in ("fp16", "fp8")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="1,16,32,64,128,256,512")
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES))
    args = ap.parse_args()
    torch.manual_seed(int(time.time()))
    ms = tuple(int(v) for v in args.ms.split(","))
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  command="python -m kernels.cond_bench " + " ".join(sys.argv[1:]),
                  conditional_available=cuda_conditional.available(0), rows=[])
    if not result["conditional_available"]:
        print("conditional nodes unavailable here", file=sys.stderr)
    for name in args.shapes.split(","):
        result["rows"] += run_shape(name, ms)
        result["summary"] = summarize(result["rows"])
        result["all_equal"] = all(v for r in result["rows"] for key, v in r.items() if "_equal_" in key)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        torch.cuda.empty_cache()
    print(json.dumps(result["summary"], indent=1))
    print("all replays equal eager:", result["all_equal"])


if __name__ == "__main__":
    main()
