"""Scratch: merged_linear (slices) against one merge + F.linear, eager do_bench and CUDA-graph replays, one box."""
import json, sys, time
import torch
import torch.nn.functional as F
import triton
from kernels.bench import make_weight
from kernels.gluon_check import bench_us
from kernels.ops import new_mode_tensor
from kernels.triton_dispatch import nested_linear_cuda
from kernels.triton_merge import merge_weight, merged_linear
from kernels.tuning import LLAMA_SHAPES


def eager_us(fn):
    return triton.testing.do_bench(fn, return_mode="median") * 1e3


rows = []
mode = new_mode_tensor("cuda", "fp16")
for name in sys.argv[2].split(","):
    n, k = LLAMA_SHAPES[name]
    nw = make_weight(n, k)
    w16 = merge_weight(nw.upper, nw.lower, 0, torch.float16)
    for m in (4096, 8192):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        fns = dict(cublas=lambda: torch.matmul(x, w16.t()),
                   whole=lambda: F.linear(x, merge_weight(nw.upper, nw.lower, 0, x.dtype)),
                   sliced=lambda: merged_linear(x, nw.upper, nw.lower, 0),
                   op=lambda: nested_linear_cuda(x, nw.upper, nw.lower, mode, 0))
        r = dict(shape=name, m=m, equal=bool(torch.equal(fns["sliced"](), fns["whole"]())))
        for rep in range(2):
            for key, fn in fns.items():
                r[f"{key}_eager_{rep}"] = eager_us(fn)
                r[f"{key}_graph_{rep}"] = bench_us(fn, 100)
        rows.append(r)
        print({a: (round(b, 1) if isinstance(b, float) else b) for a, b in r.items()}, flush=True)
        json.dump(rows, open(sys.argv[1], "w"), indent=1)
    del nw, w16
    torch.cuda.empty_cache()
