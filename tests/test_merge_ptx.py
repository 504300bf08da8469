"""The merge PTX (``gluon_fp16._MERGE_WORDS_ASM``, ``triton_fp16._MERGE_ASM``) against the NestedFP format.

The inline asm only runs on a GPU and CI has none, so the arithmetic is checked here: a small numpy
interpreter of the integer PTX the merges use (one uint32 lane per element) runs the very strings
the kernels compile and is compared with ``kernels.nested_format``'s split and merge. The last test
mutates the asm and expects a difference, so these checks can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import gluon_fp16, triton_fp16
from kernels import nested_format as nf

WORDS_ASM: str = getattr(gluon_fp16._MERGE_WORDS_ASM, "value", gluon_fp16._MERGE_WORDS_ASM)
BYTES_ASM: str = getattr(triton_fp16._MERGE_ASM, "value", triton_fp16._MERGE_ASM)

# The split of every FP16 bit pattern as lookup tables, and the patterns that nest without a
# pre-scale (|w| < 1.875; pre-scaled weights are stored as such patterns too).
_UPPER, _LOWER = (t.numpy().astype(np.uint32) for t in nf._split_chunk(torch.arange(65536).to(torch.int16)))
NESTABLE = np.nonzero((np.arange(65536) & 0x7FFF) < nf._IN_RANGE_LIMIT)[0].astype(np.uint32)
# Neighbours at the edges: zeros, the largest nestable magnitude (upper byte 448), subnormals, lower
# bytes 0x7F / 0x80 / 0xFF, 1.0, and 0x00C0 / 0x80C0 whose rounding carries into the upper byte.
EDGES = [0x0000, 0x8000, 0x3F7F, 0xBF7F, 0x0001, 0x8001, 0x007F, 0x0080, 0x00FF, 0x3C00, 0x3EFF, 0x3F00,
         0x00C0, 0x80C0]


def _lop3(a: np.ndarray, b: np.ndarray, c: np.ndarray, lut: int) -> np.ndarray:
    out = np.zeros_like(a)
    for i in range(8):  # bit i of the LUT is the result for (a, b, c) = bits (2, 1, 0) of i
        if lut >> i & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out


def _prmt(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    src = [(x >> np.uint32(8 * i)) & np.uint32(0xFF) for x in (a, b) for i in range(4)]
    out = np.zeros_like(a)
    for i in range(4):
        n = sel >> 4 * i & 0xF
        byte = src[n & 7]
        if n & 8:  # sign mode: the selected byte's bit 7 replicated over the byte
            byte = np.where(byte & np.uint32(0x80), np.uint32(0xFF), np.uint32(0))
        out |= byte << np.uint32(8 * i)
    return out


def run_ptx(asm: str, args: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Interpret the merge's PTX subset on uint32 lanes; args keyed by operand number, returns ($0, $1)."""
    env = {f"${k}": np.asarray(v, dtype=np.uint32) for k, v in args.items()}

    def val(tok: str) -> np.ndarray:
        return env[tok] if tok in env else np.uint32(int(tok, 0) & 0xFFFFFFFF)

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        ops = [x.strip() for x in rest.split(",")]
        s = [val(x) for x in ops[1:]]
        with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as in PTX
            if op in ("shr.b32", "shr.u32"):
                r = s[0] >> s[1]
            elif op == "and.b32":
                r = s[0] & s[1]
            elif op == "sub.u32":
                r = s[0] - s[1]
            elif op == "mad.lo.u32":
                r = s[0] * s[1] + s[2]
            elif op == "lop3.b32":
                r = _lop3(s[0], s[1], s[2], int(ops[4], 0))
            elif op == "prmt.b32":
                r = _prmt(s[0], s[1], int(ops[3], 0))
            else:
                raise ValueError(f"PTX the emulator does not know: {line}")
        env[ops[0]] = np.asarray(r, dtype=np.uint32)
    return env["$0"], env["$1"]


def _halves(r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """Two output registers of 2 FP16 each -> [n, 4] bit patterns."""
    return np.stack([r0 & 0xFFFF, r0 >> 16, r1 & 0xFFFF, r1 >> 16], 1)


def merge_words(w: np.ndarray, asm: str = WORDS_ASM) -> np.ndarray:
    """w: [n, 4] FP16 bits (row r: k, k + 1; row r + 8: k, k + 1) -> the word asm's [n, 4] bits."""
    u, lo = _UPPER[w], _LOWER[w]
    return _halves(*run_ptx(asm, {2: u[:, 0] | u[:, 1] << 8, 3: u[:, 2] | u[:, 3] << 8,
                                  4: lo[:, 0] | lo[:, 1] << 8, 5: lo[:, 2] | lo[:, 3] << 8}))


def merge_bytes(w: np.ndarray, asm: str = BYTES_ASM) -> np.ndarray:
    """The same groups through the byte asm: one register of 4 upper bytes, one of 4 lower bytes."""
    u, lo = _UPPER[w], _LOWER[w]
    pack = [np.uint32(8 * i) for i in range(4)]
    return _halves(*run_ptx(asm, {2: sum(u[:, i] << pack[i] for i in range(4)),
                                  3: sum(lo[:, i] << pack[i] for i in range(4))}))


def reference(w: np.ndarray) -> np.ndarray:
    """``nested_format._merge_chunk`` of the split planes (what nested_merge returns before the pre-scale)."""
    bits = nf._merge_chunk(torch.from_numpy(_UPPER[w].astype(np.uint8)), torch.from_numpy(_LOWER[w].astype(np.uint8)))
    return bits.numpy().view(np.uint16).astype(np.uint32)


def _random_groups(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(NESTABLE, size=(n, 4))


def test_emulator_follows_the_ptx_definitions():
    a, b = np.array([0x1234807F], dtype=np.uint32), np.array([0x5678FF01], dtype=np.uint32)
    assert _prmt(a, b, 0x3210)[0] == 0x1234807F and _prmt(a, b, 0x7654)[0] == 0x5678FF01
    assert _prmt(a, b, 0xDC98)[0] == 0xFF00FF00  # sign of 0x7F, 0x80 (a), 0x01, 0xFF (b)
    assert _lop3(a, b, ~a, 0xF0)[0] == a[0] and _lop3(a, b, ~a, 0xCC)[0] == b[0]
    assert _lop3(a, b, b, 0x28)[0] == (a[0] ^ b[0]) & b[0]  # 0x28 = (a ^ b) & c
    r0, r1 = run_ptx("mad.lo.u32 $0, $2, 65536, $3;\nsub.u32 $1, $3, $2;", {2: [0x10001], 3: [1]})
    assert (r0[0], r1[0]) == (0x10001, 0xFFFF0000)  # both wrap at 32 bits


@pytest.mark.parametrize("lane", range(4), ids=["r_k", "r_k+1", "r+8_k", "r+8_k+1"])
def test_word_merge_rebuilds_every_nestable_fp16_pattern_in_every_lane(lane):
    fills = [_random_groups(len(NESTABLE), seed=lane)]
    fills += [np.full((len(NESTABLE), 4), e, dtype=np.uint32) for e in EDGES]
    w = np.concatenate(fills)
    w[:, lane] = np.tile(NESTABLE, len(fills))
    got = merge_words(w)
    assert np.array_equal(reference(w)[:, lane], w[:, lane]), "the format's own round trip"
    bad = np.nonzero((got != w).any(1))[0]
    assert bad.size == 0, [tuple(map(hex, w[i])) for i in bad[:5]]


def test_word_merge_equals_the_byte_merge_on_random_groups():
    w = _random_groups(1 << 16, seed=1)
    got = merge_words(w)
    assert np.array_equal(got, reference(w))
    assert np.array_equal(got, merge_bytes(w))


@pytest.mark.parametrize("amax, shape", [(0.5, (128, 128)), (1.874, (128, 64)), (7.0, (64, 256)),
                                         (1000.0, (64, 64))])
def test_word_merge_of_split_tiles_equals_nested_merge(amax, shape):
    gen = torch.Generator().manual_seed(int(amax * 1000))
    w = (torch.randn(*shape, generator=gen) * amax / 3).clamp(-amax, amax)
    if amax > 1.875:  # as tests.kernel_helpers.nested_weights: nothing subnormal after the pre-scale
        w = torch.where(w.abs() < amax / 512, torch.full_like(w, amax / 512) * w.sign().add(0.5).sign(), w)
    w = w.half()
    w[0, :4] = torch.tensor([0.0, -0.0, amax, -amax]).half()
    if amax < 1.875:
        w[0, 4:8] = torch.tensor([6e-8, -6e-8, 1e-4, -1e-4]).half()
    nw = nf.nested_split(w)
    assert (nw.scale_exp > 0) == (amax > 1.875)
    # The planes as shared memory holds them: 16-bit little-endian words of 2 K-adjacent bytes.
    up, lo = nw.upper.view(torch.uint8).numpy().astype(np.uint32), nw.lower.numpy().astype(np.uint32)
    uw, lw = up[:, 0::2] | up[:, 1::2] << 8, lo[:, 0::2] | lo[:, 1::2] << 8
    n, kw = uw.shape
    # The kernel pairs rows r (bit 3 clear) and r + 8, as the wgmma A registers hold them.
    r, c = (g.ravel() for g in np.meshgrid([i for i in range(n) if not i & 8], np.arange(kw), indexing="ij"))
    r0, r1 = run_ptx(WORDS_ASM, {2: uw[r, c], 3: uw[r + 8, c], 4: lw[r, c], 5: lw[r + 8, c]})
    out = np.zeros((n, 2 * kw), dtype=np.uint16)
    out[r, 2 * c], out[r, 2 * c + 1] = r0 & 0xFFFF, r0 >> 16
    out[r + 8, 2 * c], out[r + 8, 2 * c + 1] = r1 & 0xFFFF, r1 >> 16
    got = torch.from_numpy(out.view(np.float16)).float() * 2.0**nw.scale_exp
    want = nf.nested_merge(nw)
    assert torch.equal(got, want.float())
    assert torch.equal(want.view(torch.int16), w.view(torch.int16))


MERGES = {"words": (WORDS_ASM, merge_words), "bytes": (BYTES_ASM, merge_bytes)}


@pytest.mark.parametrize("which, old, new", [
    ("words", "0x7160", "0x7362"),  # row r + 8 takes the bytes of row r's word layout
    ("words", "0x5140", "0x5410"),  # lower / merged bytes interleaved wrongly
    ("words", "0xDC98", "0x5410"),  # lower bytes as is, not their sign (bit 7) replicated
    ("words", "0xDC98", "0xBA98"),  # signs of row r's lower bytes twice
    ("words", "65536", "256"),  # the upper words packed at the wrong offset
    ("words", "0x3F3F3F3F", "0x7F7F7F7F"),  # the shifted exponent keeps the sign bit
    ("words", "0x01010101, 0x28", "0x01010101, 0x20"),  # carry test ignores the lower byte
    ("words", "0x80808080, s, 0xEA", "0x80808080, s, 0xFE"),  # sign mask dropped
    ("bytes", "0x7362", "0x7160"),
    ("bytes", "shr.b32 c, $3, 7", "shr.b32 c, $3, 6"),
])
def test_emulation_catches_a_broken_merge(which, old, new):
    asm, merge = MERGES[which]
    assert asm.count(old) == 1, f"{old!r} is no longer in the asm: update this mutation"
    w = _random_groups(1 << 12, seed=2)
    assert np.array_equal(merge(w, asm), reference(w))
    assert not np.array_equal(merge(w, asm.replace(old, new)), reference(w))
