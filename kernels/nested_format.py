"""The NestedFP weight format: one FP16 weight = an FP8 E4M3 upper byte + a residual lower byte.

For |w| < 1.875 the FP16 bit pattern is ``s 0 eeee mmm mmmmmmm``. The upper byte keeps
``s eeee mmm`` -- exactly the E4M3 number ``w * 2**8`` -- rounded to nearest-even on the
seven dropped mantissa bits; the lower byte is the FP16 value's low byte as is. Because the
lower byte repeats the upper byte's last mantissa bit, a merge can tell whether rounding
carried into the upper byte and undo it, so the FP16 weight comes back bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

FP8_WEIGHT_SCALE_EXP = -8  # upper-plane E4M3 value times 2**-8 is the weight
_IN_RANGE_LIMIT = 0x3F80  # FP16 bits of 1.875: magnitudes below it fit
_NAN_MAGNITUDE = 0x7F  # E4M3 NaN code (exponent 15, mantissa 7), never produced
_MAX_PRESCALE_EXP = 16  # 65504 * 2**-16 < 1.875
_CHUNK_ELEMENTS = 1 << 24  # bounds conversion temporaries to ~64 MiB per chunk


class NestedRangeError(ValueError):
    """A weight cannot be nested losslessly, even after a power-of-two pre-scale."""


@dataclass
class NestedWeight:
    """Two byte planes of an FP16 ``[N, K]`` weight, plus its power-of-two pre-scale.

    The stored weight is ``w * 2**-scale_exp``; GEMMs multiply their output by
    ``2**scale_exp`` so they compute with the original ``w``.
    """

    upper: torch.Tensor  # float8_e4m3fn [N, K]
    lower: torch.Tensor  # uint8 [N, K]
    scale_exp: int = 0

    @property
    def shape(self) -> torch.Size:
        return self.upper.shape

    @property
    def fp8_weight_scale(self) -> float:
        """Factor that turns the upper plane's E4M3 values into the weight."""
        return 2.0 ** (FP8_WEIGHT_SCALE_EXP + self.scale_exp)


def _magnitudes(bits16: torch.Tensor) -> torch.Tensor:
    return bits16.to(torch.int32) & 0x7FFF


def is_in_range(w: torch.Tensor) -> bool:
    """True when every element of the FP16 tensor nests without a pre-scale."""
    return bool((_magnitudes(w.contiguous().view(torch.int16)) < _IN_RANGE_LIMIT).all())


def _split_chunk(bits16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = bits16.to(torch.int32)
    sign = (b >> 8) & 0x80
    mag = b & 0x7FFF
    trunc = mag >> 7  # exponent[3:0] | mantissa[9:7]; top exponent bit is 0 in range
    dropped = mag & 0x7F
    round_up = (dropped > 0x40) | ((dropped == 0x40) & ((trunc & 1) == 1))
    round_up &= trunc != _NAN_MAGNITUDE - 1  # 448 stays 448: a carry would make NaN
    upper = (sign | (trunc + round_up.to(torch.int32))).to(torch.uint8)
    lower = (b & 0xFF).to(torch.uint8)
    return upper, lower


def _merge_chunk(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    u = upper.to(torch.int32)
    lo = lower.to(torch.int32)
    carried = (u & 1) != ((lo >> 7) & 1)  # rounding flipped the upper byte's last bit
    u = u - carried.to(torch.int32)
    bits = ((u & 0x80) << 8) | ((u & 0x7F) << 7) | (lo & 0x7F)
    return bits.to(torch.int16)


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


def _pick_scale_exp(w: torch.Tensor) -> int:
    """Smallest power-of-two pre-scale that brings every |w| under 1.875, if exact."""
    if is_in_range(w):
        return 0
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        raise NestedRangeError("weight holds inf or NaN")
    amax = float(w.abs().max())
    for s in range(1, _MAX_PRESCALE_EXP + 1):
        if amax * 2.0**-s < 1.875:
            scaled = w * 2.0**-s
            # The pre-scale is lossless only if no value fell into FP16 subnormals.
            if torch.equal((scaled * 2.0**s).view(torch.int16), w.view(torch.int16)) and is_in_range(scaled):
                return s
            break
    raise NestedRangeError(f"max |w| = {amax:g} needs a pre-scale that is not exact in FP16")


def nested_split(w: torch.Tensor) -> NestedWeight:
    """Split an FP16 ``[N, K]`` weight into its E4M3 upper and residual lower planes.

    Applies the smallest exact power-of-two pre-scale when |w| >= 1.875 somewhere; raises
    ``NestedRangeError`` when none is exact (the caller then keeps the layer in FP16).
    Works in row chunks so conversion needs at most one chunk of temporaries beyond the
    two output planes.
    """
    if w.dtype != torch.float16 or w.dim() != 2:
        raise TypeError(f"nested_split takes a 2-D float16 tensor, got {w.dtype} {tuple(w.shape)}")
    w = w.contiguous()
    scale_exp = _pick_scale_exp(w)
    n, k = w.shape
    upper = torch.empty((n, k), dtype=torch.uint8, device=w.device)
    lower = torch.empty((n, k), dtype=torch.uint8, device=w.device)
    step = _rows_per_chunk(k)
    for r in range(0, n, step):
        chunk = w[r : r + step]
        if scale_exp:
            chunk = chunk * 2.0**-scale_exp
        upper[r : r + step], lower[r : r + step] = _split_chunk(chunk.view(torch.int16))
    return NestedWeight(upper.view(torch.float8_e4m3fn), lower, scale_exp)


def nested_merge(nw: NestedWeight) -> torch.Tensor:
    """Rebuild the exact FP16 weight from its two planes (and pre-scale)."""
    upper = nw.upper.view(torch.uint8)
    n, k = upper.shape
    out = torch.empty((n, k), dtype=torch.float16, device=upper.device)
    step = _rows_per_chunk(k)
    for r in range(0, n, step):
        chunk = _merge_chunk(upper[r : r + step], nw.lower[r : r + step]).view(torch.float16)
        out[r : r + step] = chunk * 2.0**nw.scale_exp if nw.scale_exp else chunk
    return out
