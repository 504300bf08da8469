"""Per-K-step SASS opcode counts of the Gluon NestedFP16 (and FP8) kernels, compiled for sm_90 without a GPU.

Why: at small token tiles the step time of ``kernels.gluon_fp16.nested_fp16_rs_kernel`` was set by
the integer work around the merge (loads, byte repacking, the merge asm), not by the tensor cores,
so the opcode counts of one steady-state K step of the consumer loop are the cheap check of a
change to that code. The step counts in docs/BENCHMARKS.md ("Kernels v6") came from this tool.

It needs Triton 3.6.0 (the H200's; Gluon's API and the codegen change between releases) and runs
on any machine, as it only compiles (``GPUTarget("cuda", 90, 64)``) and disassembles:

    python3.11 -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 numpy torch
    PYTHONPATH=. /tmp/t36/bin/python -m kernels.gluon_sass [--tiles 64,128,64,4 ...] [--xdt float16]
        [--out DIR] [--src OTHER_gluon_fp16.py] [--split-k N (0: stream-K)]
    PYTHONPATH=. /tmp/t36/bin/python -m kernels.gluon_sass --kind fp8 [--tiles ...] [--xdt bfloat16] [--bias]
        [--split-k 2]

``--src`` compiles another copy of the kernel module (e.g. ``git show HEAD:kernels/gluon_fp16.py``)
for a before / after comparison; ``--out`` keeps the ttgir / ptx / cubin / sass of each tile.

``--kind fp8`` compiles ``kernels.gluon_fp8.nested_fp8_rs_kernel`` instead (default tiles: its
``TILES``; ``--xdt`` is then the output dtype; ``--bias``, ``--split-k`` pick the variant) and reports
per tile the registers, shared memory, local memory (spills), the K loop's opcode mix, whether every
QGMMA (the sm_90 8-bit wgmma) reads both operands from shared-memory descriptors, how many MMA groups
the loop leaves in flight (``WARPGROUP.DEPBAR.LE gsb0, n``) and the producer's TMA loads.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from types import ModuleType

# Integer / data-movement opcodes counted as "ALU" (the FP16 merge is all integer work).
ALU_OPS = frozenset({"PRMT", "LOP3", "IMAD", "IADD3", "SHF", "VIADD", "IABS", "LEA", "ISETP", "SEL", "MOV", "I2F",
                     "F2I", "IMNMX", "FLO", "POPC", "BFE", "BFI", "SGXT", "PLOP3", "IADD", "HADD2", "HMUL2", "F2FP",
                     "LOP", "SHL", "SHR"})
# One SASS instruction line of nvdisasm: (opcode, modifiers, operands).
_INSTR = re.compile(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T] )?([A-Z0-9_]+)(\.[A-Za-z0-9_.]+)?\s*(.*?);")


def load_module(src: str | None, kind: str = "fp16") -> ModuleType:
    """``kernels.gluon_fp16`` (``kernels.gluon_fp8``), or the kernel module in file ``src``; refuses one
    without Gluon."""
    if src is None:
        mod = importlib.import_module(f"kernels.gluon_{kind}")
    else:
        spec = importlib.util.spec_from_file_location(f"gluon_{kind}_src", src)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    if mod._IMPORT_ERROR is not None:
        raise SystemExit(f"Gluon did not import (this tool needs Triton 3.6.0): {mod._IMPORT_ERROR!r}")
    import triton

    if triton.__version__ != "3.6.0":
        print(f"warning: Triton {triton.__version__}, not 3.6.0: the compile may fail, the counts may differ",
              file=sys.stderr)
    return mod


def _compile(kern, args: tuple, consts: dict, num_warps: int):
    """Compile a Gluon kernel for sm_90 on these (CPU) arguments, as its launch would specialize it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 64)
    backend = make_backend(target)
    binder = create_function_from_signature(kern.signature, kern.params, backend)
    bound, spec, opts = binder(*args, **consts, num_warps=num_warps, num_stages=1)
    options, signature, constexprs, attrs = kern._pack_args(backend, opts, bound, spec, opts)
    return triton.compile(GluonASTSource(kern, signature, constexprs, attrs), target=target, options=options.__dict__)


def compile_tile(mod: ModuleType, tile: tuple[int, int, int, int], xdt: str, out_dir: str,
                 n: int = 4096, k: int = 4096, m: int = 256, quant: bool = False,
                 split_k: int = 1) -> tuple[str, int, str]:
    """Compile one tile for sm_90 into out_dir (``quant``: the variant that quantizes x in FP8 mode);
    returns (SASS listing, shared bytes, register usage)."""
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.gluon_common import smem_layout

    bw, bt, bk, stages = tile
    x = torch.empty((m, k), dtype=getattr(torch, xdt))
    planes = torch.empty((n, k), dtype=torch.uint8)
    y = torch.empty((m, n), dtype=getattr(torch, xdt))
    mode = torch.zeros(1, dtype=torch.int32)
    pl = smem_layout((bw, bk), "uint8")
    xd = TensorDescriptor(x, [m, k], [k, 1], [bt, bk], smem_layout((bt, bk), xdt))
    ud = TensorDescriptor(planes, [n, k], [k, 1], [bw, bk], pl)
    ld = TensorDescriptor(planes, [n, k], [k, 1], [bw, bk], pl)
    consts = dict(HAS_BIAS=False, QUANT=quant, BLOCK_W=bw, BLOCK_T=bt, BLOCK_K=bk, STAGES=stages, GROUP=8,
                  NUM_WARPS=bw // 16, QBLOCK=mod.quantize_block(k, bw // 16) if quant else 1024,
                  SPLIT_K=max(split_k, 1))
    if "STREAM" in mod.nested_fp16_rs_kernel.arg_names:  # a --src copy from before stream-K lacks it
        consts["STREAM"] = split_k == 0
    ck = _compile(mod.nested_fp16_rs_kernel, (xd, ud, ld, y, y, mode, x, y, y, y, mode, m, n, k, n, k, 1.0), consts,
                  bw // 16)
    name = os.path.join(out_dir, "x".join(map(str, tile)) + ("" if xdt == "float16" else f"_{xdt}")
                        + ("" if split_k == 1 else f"_sk{split_k}"))
    sass, usage = _disassemble(ck, name)
    regs = re.search(r"REG:(\d+)", usage)
    return sass, ck.metadata.shared, regs.group(1) if regs else "?"


def _disassemble(ck, name: str) -> tuple[str, str]:
    """Write ttgir / ptx / cubin / sass of ``ck`` at ``name``.*; returns (SASS, ``cuobjdump -res-usage``)."""
    import triton

    for ext in ("ttgir", "ptx"):
        with open(f"{name}.{ext}", "w") as f:
            f.write(ck.asm[ext])
    with open(f"{name}.cubin", "wb") as f:
        f.write(ck.asm["cubin"])
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", f"{name}.cubin"], capture_output=True, text=True,
                          check=True).stdout
    with open(f"{name}.sass", "w") as f:
        f.write(sass)
    usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f"{name}.cubin"], capture_output=True,
                           text=True, check=True).stdout
    return sass, usage


def compile_fp8_tile(mod: ModuleType, tile: tuple[int, int, int, int], odt: str, out_dir: str, bias: bool = False,
                     split_k: int = 1, n: int = 4096, k: int = 4096, m: int = 256,
                     pdl: bool = False) -> tuple[str, int, dict]:
    """Compile one tile of the FP8 kernel for sm_90 into out_dir; returns (SASS listing, shared bytes,
    ``-res-usage`` fields: REG, LOCAL, STACK, ...)."""
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.gluon_common import smem_layout

    bw, bt, bk, stages = tile
    xq = torch.empty((m, k), dtype=torch.float8_e4m3fn)
    upper = torch.empty((n, k), dtype=torch.float8_e4m3fn)
    y = torch.empty((m, n), dtype=getattr(torch, odt))
    xs = torch.empty(m, dtype=torch.float32)
    b = torch.empty(n, dtype=getattr(torch, odt))
    ws = torch.empty(16, dtype=torch.float32)
    sem = torch.zeros(16, dtype=torch.int32)
    mode = torch.zeros(1, dtype=torch.int32)
    xd = TensorDescriptor(xq, [m, k], [k, 1], [bt, bk], smem_layout((bt, bk), "float8e4nv"))
    wd = TensorDescriptor(upper, [n, k], [k, 1], [bw, bk], smem_layout((bw, bk), "float8e4nv"))
    ck = _compile(mod.nested_fp8_rs_kernel, (xd, wd, y, xs, b, mode, ws, sem, m, n, k, n, 2.0**-8),
                  dict(HAS_BIAS=bias, BLOCK_W=bw, BLOCK_T=bt, BLOCK_K=bk, STAGES=stages, GROUP=8, SPLIT_K=split_k,
                       NUM_WARPS=bw // 16, PDL=pdl), bw // 16)
    name = os.path.join(out_dir, "x".join(map(str, tile)) + f"_{odt}" + ("_bias" if bias else "")
                        + (f"_sk{split_k}" if split_k > 1 else "") + ("_pdl" if pdl else ""))
    sass, usage = _disassemble(ck, name)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return sass, ck.metadata.shared, fields


_LABEL = re.compile(r"^(\.L_x_\d+):")


def fp8_loop(sass: str) -> list[tuple[str, str, str]]:
    """The FP8 consumer's K loop as (opcode, modifiers, operands): from the label that a backward branch
    returns to, to that branch, for the first such range holding a QGMMA ([] if none)."""
    seq: list[tuple[str, str, str]] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        lm = _LABEL.match(line.strip())
        if lm:
            labels[lm.group(1)] = len(seq)
            continue
        m = _INSTR.match(line)
        if m:
            seq.append((m.group(1), m.group(2) or "", m.group(3)))
    for j, (op, _, args) in enumerate(seq):
        target = re.search(r"`\((\.L_x_\d+)\)", args) if op == "BRA" else None
        if target and labels.get(target.group(1), j) < j:
            body = seq[labels[target.group(1)]:j + 1]
            if any(o == "QGMMA" for o, _, _ in body):
                return body
    return []


def fp8_counts(sass: str, loop: list[tuple[str, str, str]]) -> dict[str, object]:
    """What the FP8 kernel's SASS says: the K loop's opcode mix, QGMMA operand forms and shapes, the
    in-flight depth of its MMA wait, and kernel-wide TMA loads and local-memory accesses (spills)."""
    c = collections.Counter(op for op, _, _ in loop)
    qg = [(mods, args) for op, mods, args in loop if op == "QGMMA"]
    every = [(m.group(1), m.group(2) or "", m.group(3)) for m in map(_INSTR.match, sass.splitlines()) if m]
    depbar = sorted({args.split(",")[-1].strip() for op, mods, args in loop if op == "WARPGROUP" and "DEPBAR" in mods})
    return dict(loop_ops=len(loop), qgmma=len(qg), qgmma_shapes=sorted({m.lstrip(".") for m, _ in qg}),
                qgmma_ss=bool(qg) and all(re.match(r"R\d+, gdesc\[", a) for _, a in qg),  # A and B descriptors
                depbar_in_flight=depbar, bar_sync=c["BAR"], syncs=c["SYNCS"],
                alu=sum(v for op, v in c.items() if op in ALU_OPS), utmaldg=sum(op == "UTMALDG" for op, _, _ in every),
                stl_ldl=sum(op in ("STL", "LDL") for op, _, _ in every), top=dict(c.most_common(8)))


def k_steps(sass: str) -> list[list[tuple[str, str]]]:
    """The consumer's K steps as (opcode, modifiers) lists: from the SYNCS.PHASECHK (wait on `ready`)
    that an HGMMA follows to the WARPGROUP.DEPBAR after it. Code placed elsewhere (retry loops of the
    barrier wait, the epilogue) is not counted."""
    seq = [(m.group(1), m.group(2) or "") for m in map(_INSTR.match, sass.splitlines()) if m]
    steps, i = [], 0
    while i < len(seq):
        if seq[i][0] == "SYNCS" and "PHASECHK" in seq[i][1]:
            j = i + 1
            while j < len(seq) and seq[j][0] != "HGMMA" and not (seq[j][0] == "SYNCS" and "PHASECHK" in seq[j][1]):
                j += 1
            if j < len(seq) and seq[j][0] == "HGMMA":
                while j < len(seq) and not (seq[j][0] == "WARPGROUP" and "DEPBAR" in seq[j][1]):
                    j += 1
                steps.append(seq[i:j + 1])
                i = j
        i += 1
    return steps


def step_counts(step: list[tuple[str, str]]) -> dict[str, object]:
    """Opcode counts of one K step: total, integer ALU, the merge's opcodes, LDS by width, HGMMA."""
    c = collections.Counter(op for op, _ in step)
    lds = collections.Counter(op + mod for op, mod in step if op == "LDS")
    return dict(total=len(step), alu=sum(v for op, v in c.items() if op in ALU_OPS), prmt=c["PRMT"],
                lop3=c["LOP3"], imad=c["IMAD"], shf=c["SHF"], lds=dict(sorted(lds.items())), hgmma=c["HGMMA"])


def main_fp8(a: argparse.Namespace) -> None:
    """``--kind fp8``: one line per tile (and output dtype, bias, split-K variant)."""
    mod = load_module(a.src, "fp8")
    tiles = [tuple(int(v) for v in t.split(",")) for t in a.tiles] if a.tiles else list(mod.TILES)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.out or tmp
        os.makedirs(out_dir, exist_ok=True)
        for tile in tiles:
            sass, shared, res = compile_fp8_tile(mod, tile, a.xdt, out_dir, a.bias, a.split_k, pdl=a.pdl)
            c = fp8_counts(sass, fp8_loop(sass))
            top = " ".join(f"{op}x{v}" for op, v in c["top"].items())
            print(f"{','.join(map(str, tile))} {a.xdt}{' bias' if a.bias else ''}{' pdl' if a.pdl else ''}"
                  f"{f' split_k {a.split_k}' if a.split_k > 1 else ''}: regs {res.get('REG', '?')} shared {shared} "
                  f"(model {mod.smem_bytes(*tile)}) local {res.get('LOCAL', '?')} stack {res.get('STACK', '?')} "
                  f"STL/LDL {c['stl_ldl']} "
                  f"UTMALDG {c['utmaldg']} | K loop: {c['loop_ops']} ops, QGMMA {c['qgmma']} "
                  f"{'/'.join(c['qgmma_shapes'])} {'SS' if c['qgmma_ss'] else 'NOT-SS'}, "
                  f"DEPBAR.LE {'/'.join(c['depbar_in_flight'])}, BAR {c['bar_sync']}, ALU {c['alu']} | {top}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", nargs="+", default=None,
                    help="BLOCK_W,BLOCK_T,BLOCK_K,STAGES (fp16 default: 64,128,64,4 128,64,64,4 64,64,64,4; "
                         "fp8: kernels.gluon_fp8.TILES)")
    ap.add_argument("--xdt", default="float16", choices=["float16", "bfloat16"],
                    help="x's dtype (fp16); the output's (fp8)")
    ap.add_argument("--out", help="keep ttgir / ptx / cubin / sass here (default: a temporary directory)")
    ap.add_argument("--src", help="compile this copy of gluon_fp16.py (gluon_fp8.py) instead of kernels.gluon_fp16")
    ap.add_argument("--kind", default="fp16", choices=["fp16", "fp8"], help="which kernel (fp8: kernels.gluon_fp8)")
    ap.add_argument("--bias", action="store_true", help="fp8: compile the bias variant")
    ap.add_argument("--split-k", type=int, default=1, help="compile the split-K variant (fp16: 0 = stream-K)")
    ap.add_argument("--pdl", action="store_true", help="fp8: compile the programmatic-dependent-launch variant")
    a = ap.parse_args(argv)
    if a.kind == "fp8":
        main_fp8(a)
        return
    if a.tiles is None:
        a.tiles = ["64,128,64,4", "128,64,64,4", "64,64,64,4"]
    mod = load_module(a.src)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.out or tmp
        os.makedirs(out_dir, exist_ok=True)
        for t in a.tiles:
            tile = tuple(int(v) for v in t.split(","))
            sass, shared, regs = compile_tile(mod, tile, a.xdt, out_dir, split_k=a.split_k)
            steps = k_steps(sass)
            if not steps:
                print(f"{t}: no K step found (regs {regs}, shared {shared})")
                continue
            c = step_counts(steps[1] if len(steps) > 1 else steps[0])  # the 2nd unrolled step: steady state
            lds = " ".join(f"{op}x{v}" for op, v in c["lds"].items())
            print(f"{t} {a.xdt}: regs {regs} shared {shared} | K step ({len(steps)} found): {c['total']} ops, "
                  f"ALU {c['alu']} (PRMT {c['prmt']} LOP3 {c['lop3']} IMAD {c['imad']} SHF {c['shf']}) "
                  f"{lds} HGMMA {c['hgmma']}")


if __name__ == "__main__":
    main()
