"""Compiles the K-interleaved variant's tiles for sm_90 without a GPU (Triton 3.6.0, as ``kernels.gluon_sass``)
and prints, per tile, its shared memory, registers, spills and the SASS counts that show its schedule.

    PYTHONPATH=$PWD /tmp/t36/bin/python docs/benchmarks/2026-11-24-h200-k-interleave/ki_sass.py OUT_DIR TILE ...
"""

import re
import sys

from kernels import gluon_sass

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from k_interleave_check import load_variant  # noqa: E402

_compile = gluon_sass._compile


def _with_ki(kern, args, consts, num_warps):
    """``gluon_sass._compile`` with the variant's KI flag set (its launches set it for 64-row tiles)."""
    return _compile(kern, args, dict(consts, KI=True), num_warps)


if __name__ == "__main__":
    gluon_sass._compile = _with_ki
    mod = load_variant()
    for t in sys.argv[2:]:
        tile = tuple(int(v) for v in t.split(","))
        sass, smem, regs = gluon_sass.compile_tile(mod, tile, "float16", sys.argv[1])
        counts = {k: sass.count(k) for k in ("DEPBAR.LE gsb0, 0x0", "DEPBAR.LE gsb0, 0x1", "HGMMA", "LDS.U16",
                                             "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0")}
        print(tile, "shared", smem, "regs", regs, "spills", len(re.findall(r"\b(?:STL|LDL)\b", sass)), counts)
