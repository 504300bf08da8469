"""Scratch: merge + cuBLAS in N slices that stay in L2, against one merge of the whole weight."""
import json, sys, time
import torch
import torch.nn.functional as F
from kernels.bench import make_weight
from kernels.gluon_check import bench_us
from kernels.triton_merge import merge_weight
from kernels.tuning import LLAMA_SHAPES

out_path = sys.argv[1]
ms = [int(v) for v in sys.argv[2].split(",")]
rows_out = []
for name, (n, k) in LLAMA_SHAPES.items():
    nw = make_weight(n, k)
    w16 = merge_weight(nw.upper, nw.lower, 0, torch.float16)
    for m in ms:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        r = dict(shape=name, n=n, k=k, m=m)
        r["cublas_us"] = bench_us(lambda: torch.matmul(x, w16.t()), 20)
        whole = lambda: F.linear(x, merge_weight(nw.upper, nw.lower, 0, x.dtype))
        ref = whole()
        r["merge_cublas_us"] = bench_us(whole, 20)
        for mb in (8, 16, 32):
            rows = max(256, (mb << 20) // (2 * k) // 256 * 256)
            if rows >= n:
                continue
            buf = torch.empty(rows, k, dtype=torch.float16, device="cuda")
            y = torch.empty(m, n, dtype=torch.float16, device="cuda")

            def chunked(rows=rows, buf=buf, y=y):
                for n0 in range(0, n, rows):
                    n1 = min(n, n0 + rows)
                    w = merge_weight(nw.upper[n0:n1], nw.lower[n0:n1], 0, x.dtype, out=buf[: n1 - n0])
                    torch.mm(x, w.t(), out=y[:, n0:n1])
                return y
            try:
                got = chunked()
                torch.cuda.synchronize()
                r[f"chunk{mb}MB_equal"] = bool(torch.equal(got, ref))
                r[f"chunk{mb}MB_maxdiff"] = float((got.float() - ref.float()).abs().max())
                r[f"chunk{mb}MB_us"] = bench_us(chunked, 20)
            except Exception as e:
                r[f"chunk{mb}MB_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows_out.append(r)
        print({a: (round(b, 1) if isinstance(b, float) and b > 0.01 else b) for a, b in r.items()}, flush=True)
        json.dump(rows_out, open(out_path, "w"), indent=1)
    del nw, w16
    torch.cuda.empty_cache()
