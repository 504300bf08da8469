"""Does per-token quantization overlap cuBLASLt's FP8 GEMM on a second stream? (a diagnostic)

Run from the repo root: PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-22-h200-act-quant-v2/overlap_probe.py OUT.json

If it does, the eager FP8 op at large M could quantize row chunk i + 1 while the GEMM runs on chunk i.
Times (do_bench medians, us): the GEMM alone, act_quant alone, both on one stream, both at once on two
streams, and that chunked pipeline at 1024- and 2048-row chunks, checked bit-equal to the one-shot op.
"""
import json
import sys

import torch

from kernels.bench import bench
from kernels.ops import new_mode_tensor
from kernels.triton_fp8 import act_quant
from kernels.tuning import LLAMA_SHAPES

SHAPES = {name: LLAMA_SHAPES[name] for name in ("8B.qkv", "8B.down", "70B.o", "70B.down")}


def main(out: str) -> None:
    torch.manual_seed(0)
    mode = new_mode_tensor("cuda", "fp8")
    side = torch.cuda.Stream()
    rows = []
    for name, (n, k) in SHAPES.items():
        w8 = (torch.randn(n, k, device="cuda") * 0.05).to(torch.float8_e4m3fn)
        ws = torch.full((1, n), 2.0 ** -8, device="cuda")
        for m in (1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda").half()
            q, s = act_quant(x, mode)
            y = torch.empty((m, n), dtype=torch.half, device="cuda")
            q2, s2 = torch.empty_like(q), torch.empty_like(s)

            def mm(q=q, s=s, y=y):
                return torch._scaled_mm(q, w8.t(), scale_a=s.view(-1, 1), scale_b=ws, out_dtype=torch.half, out=y)

            def both_one_stream():
                act_quant(x, mode, (q2, s2))
                mm()

            def both_two_streams():
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    act_quant(x, mode, (q2, s2))
                mm()
                torch.cuda.current_stream().wait_stream(side)

            def pipelined(chunk):
                def op():
                    qq = torch.empty((m, k), dtype=torch.float8_e4m3fn, device="cuda")
                    ss = torch.empty((m,), dtype=torch.float32, device="cuda")
                    yy = torch.empty((m, n), dtype=torch.half, device="cuda")
                    main = torch.cuda.current_stream()
                    side.wait_stream(main)
                    events = []
                    with torch.cuda.stream(side):
                        for r0 in range(0, m, chunk):
                            act_quant(x[r0:r0 + chunk], mode, (qq[r0:r0 + chunk], ss[r0:r0 + chunk]))
                            ev = torch.cuda.Event()
                            ev.record(side)
                            events.append(ev)
                    for i, r0 in enumerate(range(0, m, chunk)):
                        main.wait_event(events[i])
                        torch._scaled_mm(qq[r0:r0 + chunk], w8.t(), scale_a=ss[r0:r0 + chunk].view(-1, 1),
                                         scale_b=ws, out_dtype=torch.half, out=yy[r0:r0 + chunk])
                    return yy
                return op

            ref = mm().clone()
            row = dict(shape=name, n=n, k=k, m=m)
            fns = {"mm": mm, "quant": lambda: act_quant(x, mode, (q2, s2)), "serial": both_one_stream,
                   "concurrent": both_two_streams}
            for chunk in (1024, 2048):
                if chunk < m:
                    fn = pipelined(chunk)
                    assert torch.equal(fn(), ref), f"pipelined {chunk} differs"
                    fns[f"pipelined_{chunk}"] = fn
            times = {key: [] for key in fns}
            for _ in range(3):
                for key, fn in fns.items():
                    times[key].append(bench(fn))
            row.update({key: min(t) for key, t in times.items()})
            print(json.dumps({key: (round(v, 1) if isinstance(v, float) else v) for key, v in row.items()}),
                  flush=True)
            rows.append(row)
    json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
