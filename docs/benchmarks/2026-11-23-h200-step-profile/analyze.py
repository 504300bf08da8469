"""The numbers of docs/BENCHMARKS.md, "Where the engine's GPU time goes", from profile_a.json and profile_b.json.

    python3 docs/benchmarks/2026-11-23-h200-step-profile/analyze.py

The LM head is a plain FP16 GEMM in every variant (vLLM's fp8 does not quantize it either). In nestedfp's fp8 mode
every linear layer runs on NestedFP kernels or cuBLASLt's FP8 GEMM (``qqhsh`` kernels), so the FP16 GEMMs left in
that run's "gemm" kind are the LM head's: its time, subtracted from the baseline's GEMM time, leaves the time of the
layers an FP8 GEMM can speed up (L). With everything else unchanged, FP8 GEMMs at exactly twice FP16 speed give at
most busy / (busy - L / 2); adding the measured cost of quantizing activations (Q, the "elementwise" kind's growth),
busy / (busy - L / 2 + Q).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
WORKLOADS = ["balanced_512in_128out", "decode_heavy_128in_512out", "prefill_heavy_2048in_16out"]


def ms(s: dict, kind: str) -> float:
    return s["categories"].get(kind, {}).get("us", 0.0) / 1e3


def main() -> None:
    a = json.loads((HERE / "profile_a.json").read_text())
    b = json.loads((HERE / "profile_b.json").read_text())
    for wl in WORKLOADS:
        print("##", wl)
        g = b["variants"]["nestedfp_fp8"][wl]["categories"]["gemm"]
        lm = g["us"] / 1e3 - sum(us for name, us, _ in g["top"] if "qqhsh" in name) / 1e3
        print(f" LM head (the FP16 GEMMs of nestedfp_fp8): {lm:.1f} ms")
        for run, d in (("a", a), ("b", b)):
            s = d["variants"]["vllm_fp16"][wl]
            busy = s["busy_us"] / 1e3
            lin = ms(s, "gemm") - lm
            print(f" baseline {run}: busy {busy:.1f} ms, wall {s['wall_s']:.2f} s; gemm {ms(s, 'gemm'):.1f}, attention "
                  f"{ms(s, 'attention'):.1f}, elementwise {ms(s, 'elementwise'):.1f}, kv_cache {ms(s, 'kv_cache'):.1f}, "
                  f"other {ms(s, 'other') + ms(s, 'memcpy'):.1f}")
            print(f"   L share {lin / busy:.3f} (LM head included {ms(s, 'gemm') / busy:.3f}); bound at 2x "
                  f"{busy / (busy - lin / 2):.3f}")
            for v in ("nestedfp_fp8", "vllm_fp8"):
                if v not in d["variants"]:
                    continue
                t = d["variants"][v][wl]
                q = ms(t, "elementwise") - ms(s, "elementwise")
                speed = lin / (ms(t, "gemm") + ms(t, "nestedfp") - lm)
                print(f"   {v}: Q {q:+.1f} ms, bound at 2x with Q {busy / (busy - lin / 2 + q):.3f}; busy ratio "
                      f"{busy / (t['busy_us'] / 1e3):.3f}, wall ratio {s['wall_s'] / t['wall_s']:.3f}; its linear "
                      f"layers {speed:.3f}x the baseline's (kernel time)")
        s, t = a["variants"]["vllm_fp16"][wl], a["variants"]["nestedfp_fp16"][wl]
        gap = (t["busy_us"] - s["busy_us"]) / 1e3
        overlap = (t["kernel_us"] - t["busy_us"] - s["kernel_us"] + s["busy_us"]) / 1e3
        lin = ms(t, "gemm") + ms(t, "nestedfp") - ms(s, "gemm") - overlap
        el = ms(t, "elementwise") - ms(s, "elementwise")
        print(f" nestedfp_fp16 (run a): busy ratio {s['busy_us'] / t['busy_us']:.3f}, wall ratio "
              f"{s['wall_s'] / t['wall_s']:.3f}; gap {gap:+.1f} ms = linear {lin:+.1f} ({lin / gap:.2f}) + elementwise "
              f"{el:+.1f} ({el / gap:.2f}) + attention {ms(t, 'attention') - ms(s, 'attention'):+.1f}; its linear layers "
              f"{(ms(s, 'gemm') - lm) / (ms(t, 'gemm') + ms(t, 'nestedfp') - lm - overlap):.3f}x the baseline's")


if __name__ == "__main__":
    main()
