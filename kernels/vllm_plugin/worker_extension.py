"""Worker extension: precision control and inspection on every vLLM worker, via ``collective_rpc``."""

from __future__ import annotations

import hashlib
import sys

import torch

from kernels.nested_format import NestedWeight, nested_merge
from kernels.vllm_plugin import precision, step_profile


def _codes_fused() -> dict[str, int]:
    """The codes pass's replacements in this process; none where the pass never loaded (switched off, or a vLLM
    it cannot follow), without importing it here."""
    mod = sys.modules.get("kernels.vllm_plugin.codes_pass")
    replaced = mod.CodesPass.replaced if mod is not None else {}
    return {"silu_codes_fused": replaced.get("silu_mul", 0), "norm_codes_fused": replaced.get("rms_norm", 0)}


class PrecisionWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); ``self`` is the worker."""

    def set_precision(self, mode: str) -> str:
        """Switch every NestedFP layer; takes effect from the next engine step."""
        precision.set_mode(mode)
        return precision.get_mode()

    def get_precision(self) -> str:
        return precision.get_mode()

    def _linear_layers(self):
        model = self.model_runner.model
        for name, module in model.named_modules():
            if hasattr(module, "nestedfp_nested"):
                yield name, module

    def nestedfp_report(self) -> dict:
        """Which linear layers are nested, pre-scaled, kept in plain FP16, or quantize x before the op
        (``nestedfp_method.prequantizes``); how many SiLU-and-mul and RMSNorm kernels this worker's compiles made
        mode-aware (``codes_pass``; none when the compiled graph came from vLLM's cache)."""
        nested, prescaled, plain, prequantized, weight_bytes = [], [], [], [], 0
        for name, m in self._linear_layers():
            if m.nestedfp_nested:
                nested.append(name)
                if m.nestedfp_scale_exp:
                    prescaled.append(name)
                if m.nestedfp_prequantize:
                    prequantized.append(name)
                weight_bytes += m.upper.numel() * m.upper.element_size() + m.lower.numel() * m.lower.element_size()
            else:
                plain.append(name)
                weight_bytes += m.weight.numel() * m.weight.element_size()
        return {"nested": nested, "prescaled": prescaled, "plain": plain, "prequantized": prequantized,
                "linear_weight_bytes": weight_bytes, **_codes_fused()}

    def model_weight_bytes(self) -> int:
        """Bytes of every parameter the model holds (both planes count for nested layers)."""
        return sum(p.numel() * p.element_size() for p in self.model_runner.model.parameters())

    def nestedfp_weight_digests(self) -> dict[str, str]:
        """SHA-256 of the FP16 weight each linear layer multiplies by in fp16 mode."""
        out = {}
        for name, m in self._linear_layers():
            if m.nestedfp_nested:
                w = nested_merge(NestedWeight(m.upper.data, m.lower.data, m.nestedfp_scale_exp))
            else:
                w = m.weight.data
            out[name] = hashlib.sha256(w.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        return out

    def start_kernel_profile(self) -> None:
        """Records this worker's kernels until ``stop_kernel_profile`` (``kernels.vllm_plugin.step_profile``)."""
        step_profile.start()

    def stop_kernel_profile(self) -> dict:
        """The recorded kernels' time by kind (``step_profile.summarize``)."""
        return step_profile.stop()
