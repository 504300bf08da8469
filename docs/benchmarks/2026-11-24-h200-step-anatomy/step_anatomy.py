"""Diagnostic: which part of the Gluon FP16 kernel's K step sets its time? Most variants remove one part.

Variants of ``kernels/gluon_fp16.py``, made by editing its source text (``VARIANTS``), loaded as separate
modules, and timed like the sweep (``gluon_check.bench_us``: CUDA-graph replays, L2 flushed):
- ``base``: the shipped kernel.
- ``cheap_merge``: the merge asm is two ``prmt`` (the planes' words packed as they are) instead of nine ops.
- ``no_plane_reads``: the A operand is a constant: no shared-memory reads of the planes, no merge.
- ``no_x_tma``: the producer loads the two planes only; the MMA reads whatever the x slots hold.
- ``no_plane_tma``: the producer loads x only; the consumers read whatever the plane slots hold.
- ``l2_prefetch_D``, ``l2_bulk_prefetch_8``: the shipped kernel, whose producer also prefetches the planes into
  L2 D K steps ahead of its TMA loads, one instruction per row (``_l2_prefetch``).
- ``blocked_planes``: each plane box is one contiguous run of bytes, as a blocked storage layout of the planes
  would make it (``_blocked_boxes``); ``blocked_prefetch_D`` adds one bulk L2 prefetch per box, D steps ahead.
``base`` and the ``l2_*`` variants (``CHECKED``) are checked against ``x @ W.T`` before they are timed. The
others compute garbage by design: only their time means anything.

Cases (``CASES``): K = 4096 at M = 256 with 12 and 96 programs of the (64, 256, 64, 5) tile (N = 768, 6144: the
second is 8B.qkv), 8B.qkv at M = 1024 with (64, 256, 64, 5) and (128, 256, 64, 4), and four more cells with the
table's tiles. cuBLAS FP16 alongside.

    PYTHONPATH=$PWD python3 docs/benchmarks/2026-11-24-h200-step-anatomy/step_anatomy.py OUT.json [VARIANT,...]

``--ncu VARIANT N K M TILE`` instead runs one variant's kernel three times, then cuBLAS, for Nsight Compute
(``kernels.ncu_target.launch_target``).
"""

import json
import pathlib
import sys
import tempfile

import torch

from kernels import nested_merge
from kernels.bench import make_weight, rel_err
from kernels.gluon_check import bench_us
from kernels.gluon_sass import load_module
from kernels.ncu_target import launch_target
from kernels.ops import new_mode_tensor

SRC = pathlib.Path(__file__).resolve().parents[3] / "kernels" / "gluon_fp16.py"

_ASM_BODY_START = "mad.lo.u32 u, $3, 65536, $2;"
_ASM_BODY_END = "prmt.b32 $1, $5, h, 0x7160;"
_PLANE_LOADS = (
    "    u = u_bufs.index(s)._reinterpret(gl.uint16, [BLOCK_W, BLOCK_K // 2], words).load(word_layout)\n"
    "    lo = l_bufs.index(s)._reinterpret(gl.uint16, [BLOCK_W, BLOCK_K // 2], words).load(word_layout)\n")
_X_TMA = "        tma.async_copy_global_to_shared(x_desc, [off_t, k], bar, x_bufs.index(s))\n"
_PLANE_TMA = ("        tma.async_copy_global_to_shared(u_desc, [off_w, k], bar, u_bufs.index(s))\n"
              "        tma.async_copy_global_to_shared(l_desc, [off_w, k], bar, l_bufs.index(s))\n")
_NBYTES = "    nbytes: gl.constexpr = x_desc.block_type.nbytes + u_desc.block_type.nbytes + l_desc.block_type.nbytes\n"


def _cheap_merge(src: str) -> str:
    start, end = src.index(_ASM_BODY_START), src.index(_ASM_BODY_END) + len(_ASM_BODY_END)
    return src[:start] + "prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $4, $5, 0x5410;" + src[end:]


def _no_plane_reads(src: str) -> str:
    const = ("    u = gl.full([BLOCK_W, BLOCK_K // 2], 0x3C00, gl.uint16, word_layout)\n"
             "    lo = gl.full([BLOCK_W, BLOCK_K // 2], 0x3C00, gl.uint16, word_layout)\n")
    return _once(src, _PLANE_LOADS, const)


def _no_x_tma(src: str) -> str:
    src = _once(src, _X_TMA, "")
    # Only the plain producer (the first nbytes line) is patched: these cases run one program per tile.
    return src.replace(_NBYTES, "    nbytes: gl.constexpr = u_desc.block_type.nbytes + l_desc.block_type.nbytes\n", 1)


def _no_plane_tma(src: str) -> str:
    src = _once(src, _PLANE_TMA, "")
    return src.replace(_NBYTES, "    nbytes: gl.constexpr = x_desc.block_type.nbytes\n", 1)


def _once(src: str, old: str, new: str) -> str:
    """Replaces the first occurrence (the plain, non-stream-K partition comes first in the file)."""
    assert old in src, old
    return src.replace(old, new, 1)


def _producer_gets(src: str, names: str, planes: bool = False) -> str:
    """Passes gemm's values ``names`` on to the plain producer (after its k_tiles); with ``planes``, also the
    planes' base pointers u_ptr, l_ptr, which the kernel and gemm then take after sem_ptr."""
    src = _once(src, "off_w, off_t, k_lo, k_tiles,\n", f"off_w, off_t, k_lo, k_tiles, {names},\n")
    src = _once(src, "k_tiles, STAGES, BLOCK_K)),", f"k_tiles, {names}, STAGES, BLOCK_K)),")
    if not planes:
        return src
    src = _once(src, "def gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N, K,",
                "def gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, u_ptr, l_ptr, M, N, K,")
    src = _once(src, "x_ptr, q_ptr, s_ptr, ws_ptr, sem_ptr,\n    M, N, K,",
                "x_ptr, q_ptr, s_ptr, ws_ptr, sem_ptr, u_ptr, l_ptr,\n    M, N, K,")
    src = _once(src, "        gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, M, N,",
                "        gemm(x_desc, u_desc, l_desc, y_ptr, bias_ptr, ws_ptr, sem_ptr, u_ptr, l_ptr, M, N,")
    return _once(src, "mode, x2d, q, s, ws, sem, m, n, k,", "mode, x2d, q, s, ws, sem, upper, lower, m, n, k,")


# Inserted before the producer: per row of the tile, one prefetch of the planes' bytes at byte column kb.
_PREFETCH_ROWS = '''
PF_REGS = common.const([40])


@common.jit
def _prefetch_planes(u_ptr, l_ptr, N, K, off_w, kb, BLOCK_W: gl.constexpr, BLOCK_K: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([BLOCK_W // 32], [32], [1], [0])
    rows = gl.minimum(off_w + gl.arange(0, BLOCK_W, layout=layout), N - 1).to(gl.int64)
    for j in gl.static_range(max(1, BLOCK_K // 128)):
        off = rows * K + {col}
        gl.inline_asm_elementwise("{asm}", "=r,l", [u_ptr + off], dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("{asm}", "=r,l", [l_ptr + off], dtype=gl.int32, is_pure=False, pack=1)


'''


def _l2_prefetch(dist: int, bulk: bool = False):
    """The producer (given 40 registers) also prefetches the planes into L2, ``dist`` K steps ahead of its TMA
    loads: per row, one ``prefetch.global.L2`` of the line at that column, or (``bulk``) one
    ``cp.async.bulk.prefetch.L2`` of the 128 bytes that hold it."""
    if bulk:
        pf = _PREFETCH_ROWS.format(col="gl.minimum(kb + j * 128, K - 128) // 128 * 128",
                                   asm="cp.async.bulk.prefetch.L2.global [$1], 128; mov.b32 $0, 0;")
    else:
        pf = _PREFETCH_ROWS.format(col="gl.minimum(kb + j * 128, K - 1)",
                                   asm="prefetch.global.L2 [$1]; mov.b32 $0, 0;")

    def patch(src: str) -> str:
        src = _producer_gets(src, "u_ptr, l_ptr, N, K", planes=True)
        src = _once(src, "@common.jit\ndef _load_partition(", pf + "@common.jit\ndef _load_partition(")
        src = _once(src, "        k = (k_lo + i) * BLOCK_K\n",
                    "        k = (k_lo + i) * BLOCK_K\n        _prefetch_planes(u_ptr, l_ptr, N, K, off_w, "
                    f"k + {dist} * BLOCK_K, u_bufs.shape[1], BLOCK_K)\n")
        return _once(src, "    ], common.LOAD_WARPS, common.LOAD_REGS)", "    ], common.LOAD_WARPS, PF_REGS)")
    return patch


def _blocked_boxes(src: str) -> str:
    """Each TMA box of a plane reads one contiguous block_w x block_k run of bytes: the planes are viewed as
    [N * K / block_k, block_k] rows, and tile (w, k) maps to rows ((w / block_w) * (K / block_k) + k / block_k)
    * block_w ... The same bytes per step from HBM, in the order a blocked storage layout would give; the
    result is garbage (the weights are read out of place). The producer must already get K."""
    src = _once(src, _PLANE_TMA,
                "        bw: gl.constexpr = u_bufs.shape[1]\n"
                "        row = ((off_w // bw) * (K // BLOCK_K) + k // BLOCK_K) * bw\n"
                "        tma.async_copy_global_to_shared(u_desc, [row, 0], bar, u_bufs.index(s))\n"
                "        tma.async_copy_global_to_shared(l_desc, [row, 0], bar, l_bufs.index(s))\n")
    for plane in ("upper", "lower"):
        src = _once(src, f"TmaArg({plane}, (n, k), (k, 1), (block_w, block_k), plane_layout",
                    f"TmaArg({plane}, (n * k // block_k, block_k), (block_k, 1), (block_w, block_k), plane_layout")
    return src


def _blocked_planes(src: str) -> str:
    return _blocked_boxes(_producer_gets(src, "K"))


def _blocked_prefetch(dist: int):
    """``blocked_planes``, plus one ``cp.async.bulk.prefetch.L2`` per plane and K step of the whole box ``dist``
    steps ahead (in that view a box is one contiguous run, so one instruction fetches it)."""
    asm = "\"cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0;\", \"=r,l,r\""

    def patch(src: str) -> str:
        src = _blocked_boxes(_producer_gets(src, "K, u_ptr, l_ptr", planes=True))
        return _once(src, "        tma.async_copy_global_to_shared(u_desc, [row, 0], bar, u_bufs.index(s))\n",
                     "        tma.async_copy_global_to_shared(u_desc, [row, 0], bar, u_bufs.index(s))\n"
                     f"        pf = gl.minimum(row + {dist} * bw, u_desc.shape[0] - bw).to(gl.int64) * BLOCK_K\n"
                     f"        gl.inline_asm_elementwise({asm}, [u_ptr + pf, bw * BLOCK_K], dtype=gl.int32, "
                     "is_pure=False, pack=1)\n"
                     f"        gl.inline_asm_elementwise({asm}, [l_ptr + pf, bw * BLOCK_K], dtype=gl.int32, "
                     "is_pure=False, pack=1)\n")
    return patch


VARIANTS = {
    "base": lambda s: s,
    "cheap_merge": _cheap_merge,
    "no_plane_reads": _no_plane_reads,
    "no_x_tma": _no_x_tma,
    "no_plane_tma": _no_plane_tma,
    "l2_prefetch_4": _l2_prefetch(4),
    "l2_prefetch_8": _l2_prefetch(8),
    "l2_prefetch_16": _l2_prefetch(16),
    "l2_bulk_prefetch_8": _l2_prefetch(8, bulk=True),
    "blocked_planes": _blocked_planes,
    "blocked_prefetch_4": _blocked_prefetch(4),
    "blocked_prefetch_8": _blocked_prefetch(8),
}
CHECKED = ("base", "l2_prefetch_4", "l2_prefetch_8", "l2_prefetch_16", "l2_bulk_prefetch_8")  # same result


def load_variant(name: str, tmp: pathlib.Path):
    """Variant ``name`` of the kernel module, written to ``tmp`` and loaded as a module of its own."""
    path = tmp / f"gluon_fp16_{name}.py"
    path.write_text(VARIANTS[name](SRC.read_text()))
    return load_module(str(path))


CASES = [  # (label, n, k, m, tile)
    ("12 programs, M=256", 768, 4096, 256, (64, 256, 64, 5)),
    ("8B.qkv M=256 (96 programs)", 6144, 4096, 256, (64, 256, 64, 5)),
    ("8B.qkv M=1024, 64-row (384 programs)", 6144, 4096, 1024, (64, 256, 64, 5)),
    ("8B.qkv M=1024, 128-row (192 programs)", 6144, 4096, 1024, (128, 256, 64, 4)),
    ("70B.qkv M=256", 10240, 8192, 256, (128, 256, 64, 4)),
    ("8B.down M=256", 4096, 14336, 256, (64, 128, 128, 4)),
    ("8B.gate_up M=256", 28672, 4096, 256, (128, 256, 64, 4)),
    ("8B.qkv M=64", 6144, 4096, 64, (64, 64, 128, 5)),
]


def main(out_path: str, names: list[str]) -> None:
    tmp = pathlib.Path(tempfile.mkdtemp())
    mods = {name: load_variant(name, tmp) for name in names}
    mode = new_mode_tensor("cuda", "fp16")
    rows = []
    for label, n, k, m, tile in CASES:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        nw = make_weight(n, k)
        w16 = nested_merge(nw)
        out = torch.empty(m, n, device="cuda", dtype=torch.float16)
        row = dict(case=label, n=n, k=k, m=m, tile=tile, steps=k // tile[2])
        for name, mod in mods.items():
            def run(mod=mod):
                return mod.nested_fp16_gemm_rs(x, nw.upper, nw.lower, mode, nw.scale_exp, None, out, tile)
            out.fill_(float("nan"))
            run()
            if name in CHECKED:
                err = rel_err(out, x @ w16.t())
                assert err < 5e-3, (label, name, err)
                row[f"{name}_rel_err"] = err
            row[name] = bench_us(run, 30)
        row["cublas"] = bench_us(lambda: torch.matmul(x, w16.t()), 30)
        rows.append(row)
        print(json.dumps(row), flush=True)
    json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), open(out_path, "w"), indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "--ncu":  # --ncu VARIANT N K M TILE, e.g. --ncu no_x_tma 6144 4096 256 64,256,64,5
        launch_target(*map(int, sys.argv[3:6]), tuple(map(int, sys.argv[6].split(","))),
                      load_variant(sys.argv[2], pathlib.Path(tempfile.mkdtemp())))
    else:
        main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else list(VARIANTS))
