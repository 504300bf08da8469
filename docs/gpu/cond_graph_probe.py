"""Probe: can one CUDA graph hold both precision paths and pick one at replay from a device flag?

Why: under CUDA graphs, FP8 mode today runs our Triton FP8 GEMM, which at decode sizes takes 1.3-1.5x
cuBLASLt's time (docs/BENCHMARKS.md). cuBLASLt FP8 needs the activations quantized first; both paths
can live in one graph only if a conditional node chooses between them at replay. This measures whether
torch's conditional-node capture works here and what it costs, against a graph of each path alone.
Run on the GPU box: ``python docs/gpu/cond_graph_probe.py OUT.json``.
"""

from __future__ import annotations

import json
import sys

import torch

E4M3_MAX = 448.0


def fp16_path(x: torch.Tensor, w16: torch.Tensor, y: torch.Tensor) -> None:
    torch.mm(x, w16.t(), out=y)


def fp8_path(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, y: torch.Tensor) -> None:
    x_scale = (x.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    xq = (x.float() / x_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    y.copy_(torch._scaled_mm(xq, w8.t(), scale_a=x_scale.reshape(1, 1), scale_b=w_scale, out_dtype=torch.float16))


def capture(fn) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm-up outside the graph (cuBLAS workspaces, lazy init)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def replay_us(g: torch.cuda.CUDAGraph, n: int = 200) -> float:
    for _ in range(10):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[n // 2]


def probe(m: int, n: int, k: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w16 = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
    w_scale = (w16.abs().amax().float() / E4M3_MAX).reshape(1, 1)
    w8 = (w16.float() / w_scale).to(torch.float8_e4m3fn)
    y16, y8, yc = (torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in range(3))
    is_fp8 = torch.zeros((), device="cuda", dtype=torch.bool)

    def both() -> None:
        if not torch.cuda.is_current_stream_capturing():  # the warm-up run: a plain Python branch
            (fp8_path(x, w8, w_scale, yc) if bool(is_fp8) else fp16_path(x, w16, yc))
            return
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
        is_fp16 = torch.logical_not(is_fp8)
        graph.begin_capture_to_if_node(is_fp8)
        fp8_path(x, w8, w_scale, yc)
        graph.end_capture_to_conditional_node()
        graph.begin_capture_to_if_node(is_fp16)
        fp16_path(x, w16, yc)
        graph.end_capture_to_conditional_node()

    g16 = capture(lambda: fp16_path(x, w16, y16))
    g8 = capture(lambda: fp8_path(x, w8, w_scale, y8))
    gc = capture(both)
    out = {"M": m, "N": n, "K": k, "fp16_graph_us": replay_us(g16), "fp8_graph_us": replay_us(g8)}
    for flag in (False, True):
        is_fp8.fill_(flag)
        yc.zero_()
        gc.replay()
        torch.cuda.synchronize()
        ref = y8 if flag else y16
        (g8 if flag else g16).replay()
        torch.cuda.synchronize()
        out[f"cond_{'fp8' if flag else 'fp16'}_bitwise_equal"] = bool(torch.equal(yc, ref))
        out[f"cond_{'fp8' if flag else 'fp16'}_us"] = replay_us(gc)
    return out


def main() -> None:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
            "has_if_node": hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node")}
    rows = []
    for m in (1, 16, 64, 256):
        for n, k in ((6144, 4096), (28672, 4096), (4096, 14336)):
            try:
                rows.append(probe(m, n, k))
            except (RuntimeError, AttributeError, TypeError) as e:  # record what failed, go on: a probe
                rows.append({"M": m, "N": n, "K": k, "error": f"{type(e).__name__}: {e}"[:400]})
            print(json.dumps(rows[-1]), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
