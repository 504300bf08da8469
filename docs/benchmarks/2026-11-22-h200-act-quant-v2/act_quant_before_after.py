"""act_quant before and after "act_quant v2", and the FP8 op at large M with each (a diagnostic).

Run from the repo root, with the earlier kernels/triton_fp8.py saved at BEFORE (git show dac4d97:kernels/triton_fp8.py):
PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-22-h200-act-quant-v2/act_quant_before_after.py BEFORE OUT.json

For the 8 Llama shapes at M in 1..8192: both quantizations (codes and scales checked against
quantize_per_token first), and from M = 1024 the op's eager FP8 path (quantization + torch._scaled_mm on
the upper plane, as ``kernels.cublaslt_fp8``) with each, against torch._scaled_mm alone and cuBLAS FP16.
do_bench medians, the least of 3 rounds with the variants interleaved.
"""
import importlib.util
import json
import math
import sys

import torch

from kernels.bench import bench
from kernels.ops import new_mode_tensor
from kernels.reference import quantize_per_token
from kernels.triton_fp8 import act_quant
from kernels.tuning import LLAMA_SHAPES


def main(before_path: str, out: str) -> None:
    spec = importlib.util.spec_from_file_location("triton_fp8_before", before_path)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    torch.manual_seed(0)
    mode = new_mode_tensor("cuda", "fp8")
    rows = []
    for name, (n, k) in LLAMA_SHAPES.items():
        w8 = (torch.randn(n, k, device="cuda") * 0.05).to(torch.float8_e4m3fn)
        w16 = w8.half()
        ws = torch.full((1, n), 2.0 ** -8, device="cuda")
        for m in (1, 16, 64, 256, 1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda").half()
            rq, rs = quantize_per_token(x)
            row = dict(shape=name, n=n, k=k, m=m)
            fns = {"quant_before": lambda: before.act_quant(x, mode), "quant_after": lambda: act_quant(x, mode)}
            for key, fn in fns.items():
                q, s = fn()
                assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs.flatten()), key
            if m >= 1024:
                q, s = act_quant(x, mode)
                y = torch.empty((m, n), dtype=torch.half, device="cuda")

                def mm(q, s):
                    return torch._scaled_mm(q, w8.t(), scale_a=s.view(-1, 1), scale_b=ws, out_dtype=torch.half,
                                            out=y)
                fns.update(mm_only=lambda: mm(q, s), op_before=lambda: mm(*before.act_quant(x, mode)),
                           op_after=lambda: mm(*act_quant(x, mode)), cublas_fp16=lambda: torch.matmul(x, w16.t()))
            times = {key: [] for key in fns}
            for _ in range(3):
                for key, fn in fns.items():
                    times[key].append(bench(fn))
            row.update({key: min(t) for key, t in times.items()})
            row["rounds"] = times
            print(json.dumps({key: (round(v, 1) if isinstance(v, float) else v) for key, v in row.items()
                              if key != "rounds"}), flush=True)
            rows.append(row)
        del w8, w16
    big = [r for r in rows if r["m"] >= 1024]
    summary = {f"fp8_op_{w}_geomean_m_ge_1024": math.exp(sum(math.log(r["cublas_fp16"] / r[f"op_{w}"]) for r in big)
                                                         / len(big)) for w in ("before", "after")}
    summary["scaled_mm_alone_geomean_m_ge_1024"] = math.exp(sum(math.log(r["cublas_fp16"] / r["mm_only"])
                                                                for r in big) / len(big))
    print(json.dumps(summary), flush=True)
    json.dump(dict(rows=rows, summary=summary), open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
