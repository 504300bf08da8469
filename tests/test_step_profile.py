"""Kernel-time summaries of an engine window (kernels.vllm_plugin.step_profile): names sorted into kinds,
intervals merged, and the Amdahl bound; the profiler's own trace read back on the CPU."""

from __future__ import annotations

import random

import pytest
import torch

from kernels.vllm_plugin import step_profile
from kernels.vllm_plugin.step_profile import analysis, kernel_category, summarize
from tests.kernel_helpers import nested_weights


@pytest.mark.parametrize("name, kind", [
    ("nested_fp16_rs_kernel", "nestedfp"),
    ("nested_fp8_rs_kernel", "nestedfp"),
    ("act_quant_kernel", "nestedfp"),
    ("nvjet_sm90_hsh_96x128_64x7_2x1_v_bz_coopA_NNT", "gemm"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("void cutlass::device_kernel<vllm::cutlass_3x_gemm<cutlass::float_e4m3_t>>(Params)", "gemm"),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<Params>>>(Params)",
     "attention"),
    ("kernel_unified_attention_2d", "attention"),
    ("void vllm::reshape_and_cache_flash_kernel<__half, __half, 0>(...)", "kv_cache"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "elementwise"),
    ("triton_poi_fused_mul_silu_slice_1", "elementwise"),
    ("silu_mul_codes_kernel", "elementwise"),  # ours, in place of Inductor's fused SiLU-and-mul + codes
    ("rms_norm_codes_kernel", "elementwise"),  # ours, in place of Inductor's fused RMSNorm + codes
    ("nestedfp::linear_prequantized", "nestedfp"),  # the CPU records ops, not kernels
    ("nestedfp::add_rms_norm_codes", "elementwise"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "other"),
])
def test_kernel_names_fall_into_their_kind(name, kind):
    assert kernel_category(name) == kind


def test_summary_sums_each_kind_and_counts_overlapping_kernels_once():
    ev = [
        {"ph": "X", "cat": "kernel", "name": "nested_fp16_rs_kernel", "ts": 0.0, "dur": 10.0},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_hsh", "ts": 5.0, "dur": 10.0},  # overlaps: busy 0..15
        {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add_0", "ts": 20.0, "dur": 2.5},
        {"ph": "X", "cat": "kernel", "name": "nested_fp16_rs_kernel", "ts": 30.0, "dur": 4.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 100.0},  # not a kernel
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 1.0},  # not a complete event
    ]
    s = summarize(ev)
    assert s["kernels"] == 4
    assert s["kernel_us"] == pytest.approx(26.5)
    assert s["busy_us"] == pytest.approx(15.0 + 2.5 + 4.0)
    assert s["span_us"] == pytest.approx(34.0)
    nf = s["categories"]["nestedfp"]
    assert (nf["us"], nf["count"]) == (pytest.approx(14.0), 2)
    assert nf["top"][0][:1] == ["nested_fp16_rs_kernel"] and nf["top"][0][2] == 2
    assert list(s["categories"]) == ["nestedfp", "gemm", "elementwise"]  # largest first
    assert sum(c["share"] for c in s["categories"].values()) == pytest.approx(1.0)


def test_busy_time_is_the_union_of_random_intervals():
    rng = random.Random()
    iv = [(s, s + rng.uniform(0, 5)) for s in (rng.uniform(0, 50) for _ in range(40))]
    grid = 0.01
    covered = sum(grid for i in range(int(60 / grid)) if any(a <= i * grid < b for a, b in iv))
    ev = [{"ph": "X", "cat": "kernel", "name": "k", "ts": a, "dur": b - a} for a, b in iv]
    assert summarize(ev)["busy_us"] == pytest.approx(covered, abs=40 * 2 * grid)


def _window(gemm_us: float, nested_us: float, other_us: float) -> dict:
    cats = {k: {"us": v} for k, v in (("gemm", gemm_us), ("nestedfp", nested_us), ("attention", other_us)) if v}
    total = gemm_us + nested_us + other_us
    return {"kernel_us": total, "busy_us": total, "categories": cats}


def test_analysis_bounds_fp8_by_the_linear_share_and_attributes_the_gap_by_kind():
    variants = {
        "vllm_fp16": {"w": _window(600.0, 0.0, 400.0)},
        "nestedfp_fp16": {"w": _window(50.0, 700.0, 400.0)},  # LM head on cuBLAS, the rest ours
    }
    row = analysis(variants, ["w"])["w"]
    assert row["linear_share"] == pytest.approx(0.6)
    assert row["fp8_bound_at_2x_gemm"] == pytest.approx(1000.0 / 700.0)
    v = row["variants"]["nestedfp_fp16"]
    assert v["busy_ratio_vs_baseline"] == pytest.approx(1000.0 / 1150.0)
    assert v["linear_ratio_vs_baseline"] == pytest.approx(600.0 / 750.0)
    assert v["delta_ms_by_kind"] == pytest.approx({"attention": 0.0, "gemm": -0.55, "nestedfp": 0.7})


def test_profiler_window_records_the_nestedfp_ops_called_inside_it():
    import kernels.ops  # noqa: F401  (defines torch.ops.nestedfp.linear)
    from kernels.vllm_plugin.precision import mode_tensor

    nw = nested_weights(32, 64, device="cpu")
    x = torch.randn(4, 64, dtype=torch.float16)
    mode = mode_tensor(torch.device("cpu"))
    calls = random.randint(2, 5)
    torch.ops.nestedfp.linear(x, nw.upper, nw.lower, mode, nw.scale_exp, None)  # outside the window
    step_profile.start()
    with pytest.raises(RuntimeError, match="already running"):
        step_profile.start()
    for _ in range(calls):
        torch.ops.nestedfp.linear(x, nw.upper, nw.lower, mode, nw.scale_exp, None)
    s = step_profile.stop()
    assert s["categories"]["nestedfp"]["count"] == calls
    assert s["wall_s"] > 0
    with pytest.raises(RuntimeError, match="no kernel profile"):
        step_profile.stop()
