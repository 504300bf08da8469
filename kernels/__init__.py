"""NestedFP: one copy of FP16 weights that serves both FP16 and FP8 GEMMs."""

from kernels.nested_format import NestedRangeError, NestedWeight, nested_merge, nested_split
from kernels.reference import MODES, Mode, nested_linear, quantize_per_token

__all__ = [
    "MODES",
    "Mode",
    "NestedRangeError",
    "NestedWeight",
    "nested_linear",
    "nested_merge",
    "nested_split",
    "quantize_per_token",
]
