"""Diagnostic: FP8 mode on shapes the H200 tables lack, with and without a heuristic Gluon FP8 config.

Why: ``tuning.gluon_fp8_config`` returns None for shapes outside the FP8 table (the eight Llama-3.1 8B / 70B
linears), so every other model, and every tensor-parallel shard of these, runs FP8 mode on the Triton GEMM, and in
CUDA graphs quantizes x inside the FP16 launch. The table's winners follow N: 128-row tiles where N / 64 exceeds
the SMs, 64-row tiles below. ``heuristic`` is that rule. This times, on the Llama-3.1 8B and 70B layers split for
tensor_parallel_size=2 (none of them in either table), the op as vLLM runs it:
- in a CUDA graph (device pick, how decode runs), FP8 mode and FP16 mode (a heuristic FP8 config can pair with
  the FP16 tile into the dual kernel);
- eager (host pick, planned FP8 calls where a Gluon config is used), FP8 mode;
each checked against ``kernels.reference`` first, output of every variant in both modes.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-fp8-unseen-shapes/unseen.py OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from unittest import mock

import torch
import triton

from kernels import eager_fp8, triton_dispatch, tuning
from kernels.bench import bench, graphed, make_weight, rel_err
from kernels.mode_state import set_host_mode
from kernels.ops import new_mode_tensor
from kernels.reference import nested_linear

SHAPES = {  # Llama-3.1 layers at tensor_parallel_size=2: (N, K) of one rank's shard
    "8B.qkv/2": (3072, 4096), "8B.o/2": (4096, 2048), "8B.gate_up/2": (14336, 4096), "8B.down/2": (4096, 7168),
    "70B.qkv/2": (5120, 8192), "70B.o/2": (8192, 4096), "70B.gate_up/2": (28672, 8192), "70B.down/2": (8192, 14336),
}
MS = (1, 16, 64, 128, 256)


def heuristic(n: int, m: int) -> tuple | None:
    """The FP8 table's winners by N (kernels/gluon_fp8_tiles_h200.json): 128-row tiles once N / 64 > 132."""
    big = n > 64 * 132
    if m <= 16:
        cfg = (128, 16, 256, 5, 1) if big else (64, 16, 256, 10, 1)
    elif m <= 64:
        cfg = (128, 64, 128, 6, 1) if big else (64, 64, 256, 5, 1)
    elif m <= 128:
        cfg = (128, 128, 128, 6, 1) if big else (64, 128, 256, 4, 1)
    elif m <= 256:
        cfg = (128, 128, 128, 5, 1) if n > 4096 else (64, 128, 256, 4, 1)
    else:
        return None
    return (cfg[0], min(cfg[1], tuning.token_cap(m)), *cfg[2:])


def with_heuristic(on: bool):
    table = tuning.gluon_fp8_config

    def pick(n, k, m):
        return table(n, k, m) or (heuristic(n, m) if on else None)
    return mock.patch.object(triton_dispatch, "gluon_fp8_config", pick)


def main(out_path: str) -> None:
    torch.manual_seed(0)
    rows, t0 = [], time.time()
    for name, (n, k) in SHAPES.items():
        nw = make_weight(n, k)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            refs = {mode: nested_linear(x, nw, mode) for mode in ("fp16", "fp8")}
            row = dict(shape=name, n=n, k=k, m=m, heuristic=heuristic(n, m))
            for variant, on in (("without", False), ("heuristic", True)):
                with with_heuristic(on):
                    eager_fp8.clear()
                    for mode in ("fp16", "fp8"):
                        mt = new_mode_tensor("cuda", mode)
                        op = lambda mt=mt: triton_dispatch.nested_linear_picked(  # noqa: E731
                            x, nw.upper, nw.lower, mt, nw.scale_exp, None, False)
                        y = op()
                        torch.cuda.synchronize()
                        row[f"{variant}_{mode}_graph_err"] = err = rel_err(y, refs[mode])
                        if err > 5e-3:
                            raise SystemExit(f"{name} M={m} {variant} {mode}: rel err {err:.2e}")
                        row[f"{variant}_{mode}_graph_us"] = bench(graphed(op))
                    mt = set_host_mode(new_mode_tensor("cuda", "fp16"), "fp8")
                    eager = lambda mt=mt: triton_dispatch.nested_linear_cuda(  # noqa: E731
                        x, nw.upper, nw.lower, mt, nw.scale_exp, None)
                    y = eager()
                    y = eager()  # the second call runs the plan, where one was made
                    torch.cuda.synchronize()
                    row[f"{variant}_fp8_eager_err"] = err = rel_err(y, refs["fp8"])
                    if err > 5e-3:
                        raise SystemExit(f"{name} M={m} {variant} eager fp8: rel err {err:.2e}")
                    row[f"{variant}_fp8_eager_us"] = bench(eager)
            print(json.dumps({k_: (round(v, 2) if isinstance(v, float) else v) for k_, v in row.items()
                              if not k_.endswith("err")}), flush=True)
            rows.append(row)
    with open(out_path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                       date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), elapsed_s=round(time.time() - t0, 1),
                       rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
