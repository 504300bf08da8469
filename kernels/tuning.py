"""Tile configurations for the NestedFP Triton GEMMs, per (N, K) and M bucket.

The request path only looks configs up (``get_config``): a table measured once on the H200
(``tile_configs_h200.json`` beside this file, written by ``python -m kernels.tuning --sweep``),
and a heuristic for shapes the table does not hold. Nothing is autotuned while serving.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("tile_configs_h200.json")
GLUON_TABLE_PATH = Path(__file__).with_name("gluon_tiles_h200.json")
GLUON_FP8_TABLE_PATH = Path(__file__).with_name("gluon_fp8_tiles_h200.json")
M_BUCKETS = (1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)  # 1: single-sequence decode
KINDS = ("fp16", "fp8")


@dataclass(frozen=True)
class TileConfig:
    """block_n: weight rows per program (MMA M slot); block_m: tokens (MMA N slot)."""

    block_n: int
    block_m: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group: int = 8
    fused_quant: bool = False  # fp8 only: quantize activations inside the GEMM
    swap_ab: bool = True  # weights in the MMA's M slot; False: activations there (large M)
    split_k: int = 1  # programs per tile, each over a slice of K (kernels.split_k): small grids

    @classmethod
    def from_dict(cls, d: dict) -> "TileConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


def m_bucket(m: int) -> int:
    """Smallest bucket >= m (the last bucket takes everything larger)."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


def token_cap(m: int) -> int:
    """The narrowest token tile that covers M: a power of two, >= 16 (the MMA's N slot)."""
    return max(16, 1 << max(0, m - 1).bit_length())


def token_block(m: int) -> int:
    """Token tile for small M: the MMA's N slot needs >= 16; beyond 64 the table decides."""
    return min(64, token_cap(m))


def heuristic_config(kind: str, n: int, k: int, m: int) -> TileConfig:
    """Defaults for shapes the table lacks: what won most often in the H200 sweep, per M range.
    Split-K only where K is long against N (8B.down, K = 3.5 N), the layer where it won most in the H200
    sweep (docs/BENCHMARKS.md, "Kernels v5")."""
    C = TileConfig
    split = 2 if k >= 3 * n else 1
    if kind == "fp16":
        if m <= 16:
            return C(32, token_block(m), 256, 4, 4, split_k=split)
        if m <= 64:
            return C(64, 64, 128, 4, 4, swap_ab=False, split_k=split)
        if m <= 256:
            return C(64, 128, 64, 4, 4, swap_ab=False)
        return C(128, 256, 64, 8, 3, swap_ab=False)
    if m <= 64:
        return C(64, token_block(m), 256, 4, 4, split_k=split)
    if m <= 256:
        return C(64, 128, 128, 4, 4)
    return C(128, 256, 128, 8, 3)


@functools.cache
def _load(path: Path, key: str) -> dict:
    """A committed table's entries, read once; empty if the file is missing."""
    try:
        return json.loads(path.read_text()).get(key, {})
    except FileNotFoundError:
        return {}


def _table() -> dict:
    return _load(TABLE_PATH, "configs")


@functools.lru_cache(maxsize=4096)
def get_config(kind: str, n: int, k: int, m: int) -> TileConfig:
    """Table entry for (kind, N, K, bucket(M)); else the nearest tuned bucket; else the heuristic."""
    return lookup(_table(), kind, n, k, m) or heuristic_config(kind, n, k, m)


def lookup(configs: dict, kind: str, n: int, k: int, m: int) -> TileConfig | None:
    """The entry of ``configs`` (a table's "configs") for M's bucket, or the nearest bucket's; None
    if the table has no entry for (kind, N, K). Token tiles never wider than M needs."""
    entries = configs.get(kind, {}).get(f"{n}x{k}")
    if not entries:
        return None
    b = m_bucket(m)
    nearest = min(entries, key=lambda s: (abs(math.log2(int(s)) - math.log2(b)), -int(s)))
    cfg = TileConfig.from_dict(entries[nearest])
    if m <= 64 and cfg.block_m > token_block(m):
        cfg = replace(cfg, block_m=token_block(m))
    return cfg


GluonTile = tuple[int, ...]  # block_w (weight rows), block_t (tokens), block_k, stages[, split_k]
STREAM_K = 0  # a GluonTile's split_k for stream-K: one program per SM, K steps of all tiles split evenly


def tile_split(tile: tuple[int, ...]) -> int:
    """A Gluon tile's (or FP8 config's) split_k: its fifth element, 1 without one (``STREAM_K``: stream-K)."""
    return tile[4] if len(tile) > 4 else 1


def gluon_heuristic_tile(m: int) -> GluonTile:
    """For shapes the Gluon table lacks: the most frequent winner per M in the H200 sweep."""
    if m <= 16:
        return (64, 16, 128, 5)
    if m <= 64:
        return (64, 64, 128, 5)
    if m <= 128:
        return (64, 128, 128, 4)
    if m <= 256:
        return (64, 256, 64, 5)
    if m <= 512:
        return (128, 256, 64, 4)
    return (128, 256, 64, 3)


def _gluon_table() -> dict:
    return _load(GLUON_TABLE_PATH, "tiles")


def _token_capped(tile, m: int) -> tuple:
    """A Gluon tile or config with its token tile (second element) no wider than M needs (16 at least)."""
    return (tile[0], min(tile[1], token_cap(m)), *tile[2:])


def _measured_entry(entries: dict, m: int, past_last: bool) -> tuple | None:
    """A Gluon table's entry of the smallest measured M >= m; past the largest measured M, that one's
    (``past_last``) or None. Token tiles capped at what M needs."""
    measured = sorted(int(v) for v in entries)
    key = next((v for v in measured if v >= m), measured[-1] if past_last else None)
    entry = entries[str(key)] if key is not None else None
    return _token_capped(entry, m) if entry is not None else None


@functools.lru_cache(maxsize=4096)
def gluon_tile(n: int, k: int, m: int) -> GluonTile | None:
    """The Gluon NestedFP16 tile for (N, K): the entry of the smallest measured M >= m (else the
    largest), or the heuristic. None where the table measured the Triton kernel faster. Token
    tiles never wider than M needs (16 at least)."""
    entries = _gluon_table().get(f"{n}x{k}")
    if not entries:
        return _token_capped(gluon_heuristic_tile(m), m)
    return _measured_entry(entries, m, past_last=True)


@functools.cache
def merge_from(n: int, k: int) -> int | None:
    """The M from which the op's eager FP16 path is merge + cuBLAS rather than the Gluon kernel, as the H200
    sweep measured it for (N, K) (``write_gluon_table``); None for shapes it lacks."""
    return _load(GLUON_TABLE_PATH, "merge_from").get(f"{n}x{k}")


# block_w, block_t, block_k, stages, split_k[, pdl]: pdl 1 / 0 launches the GEMM as a programmatic dependent of
# the quantization or plainly; entries without it (M <= 256) launch with PDL (fp8_pdl).
GluonFp8Config = tuple[int, ...]
FP8_PDL_CHOICE_FROM_M = 512  # from here up the FP8 table records whether PDL or a plain launch ran the op faster
FP8_LARGE_M_MARGIN = 0.02  # from FP8_PDL_CHOICE_FROM_M up, the Gluon op must beat each alternative by this much


def fp8_pdl(cfg: GluonFp8Config) -> bool:
    """Whether a Gluon FP8 table config launches its GEMM with PDL. Why it can be no: at large M the GEMM's
    CTAs, launched early, hold every SM's registers while ``act_quant``'s thousands of programs still need
    them; 8B.down at M = 512 took 66.9 us with PDL, 60.9 without (docs/BENCHMARKS.md, "Kernels v16")."""
    return len(cfg) < 6 or bool(cfg[5])


@functools.lru_cache(maxsize=4096)
def gluon_fp8_config(n: int, k: int, m: int) -> GluonFp8Config | None:
    """The Gluon NestedFP8 config for (N, K): the entry of the smallest measured M >= m. None where
    the table measured the op faster without it (the Triton FP8 kernel, or from ``LARGE_M_THRESHOLD`` up
    cuBLASLt's), and past its largest M (there the Triton kernel, or cuBLASLt, stays: nothing was measured).
    For shapes it lacks, ``gluon_fp8_heuristic_config``. Token tiles never wider than M needs."""
    entries = _load(GLUON_FP8_TABLE_PATH, "configs").get(f"{n}x{k}")
    if not entries:
        return gluon_fp8_heuristic_config(n, m)
    return _measured_entry(entries, m, past_last=False)


H200_SMS = 132


def gluon_fp8_heuristic_config(n: int, m: int) -> GluonFp8Config | None:
    """For shapes the FP8 table lacks (other models, tensor-parallel shards), up to M = 256: the table's winners
    follow N, 128-row tiles once N / 64 exceeds the H200's SMs and 64-row tiles below. On the Llama-3.1 layers split
    for tensor_parallel_size=2, none of them in the table, it ran FP8 mode 1.21-1.35x faster in CUDA graphs
    (geomean per M, no cell slower) than the Triton path it replaces (docs/BENCHMARKS.md, "Gluon FP8 on shapes the
    tables lack"). None above 256, where nothing was measured."""
    big = n > 64 * H200_SMS
    if m <= 16:
        cfg = (128, 16, 256, 5, 1) if big else (64, 16, 256, 10, 1)
    elif m <= 64:
        cfg = (128, 64, 128, 6, 1) if big else (64, 64, 256, 5, 1)
    elif m <= 128:
        cfg = (128, 128, 128, 6, 1) if big else (64, 128, 256, 4, 1)
    elif m <= 256:
        cfg = (128, 128, 128, 5, 1) if n > 4096 else (64, 128, 256, 4, 1)
    else:
        return None
    return _token_capped(cfg, m)


def write_gluon_fp8_table(sweep_jsons: str | list[str], out_path: str = str(GLUON_FP8_TABLE_PATH),
                          update: bool = False) -> dict:
    """Per (N, K, M) of ``python -m kernels.gluon_fp8``'s JSON: its fastest checked config where the op's
    FP8 path (quantization launch + GEMM) ran faster with it than with what the dispatcher runs without it
    at the M its entry covers (above the previous measured M, up to this one), else null:
    - below ``FP8_PDL_CHOICE_FROM_M``: the Gluon GEMM with PDL (``op_gluon_pdl_us``) against the Triton FP8
      kernel (``op_triton_us``);
    - from there up: the faster of the Gluon GEMM with and without PDL (the entry's sixth element says which),
      ``FP8_LARGE_M_MARGIN`` ahead of the Triton op where the entry covers M below ``LARGE_M_THRESHOLD``
      (the host pick's Triton path), and of cuBLASLt's (``op_cublaslt_us``) where it reaches that M. There
      the GEMM alone must also be no slower than cuBLASLt's (``best_us``, ``cublaslt_fp8_us``): vLLM calls it
      on codes the layer before wrote (``linear_prequantized``), with no quantization to overlap. And the
      eager op (``op_eager_gluon_us``, host pick, where the sweep timed it) must lead the eager op without
      the entry (``op_eager_without_us``) by the same margin: where the GPU work is short, the host's enqueue
      sets an eager call's time.
    With several JSONs (repeated sweeps), an entry needs its win in each, and takes the first one's config.
    ``update``: the table at ``out_path`` keeps its entries for the (N, K, M) these JSONs did not time, and below
    ``FP8_PDL_CHOICE_FROM_M`` those the sweeps would drop. Why: there the sweep times the op without an entry as
    ``act_quant`` + the Triton GEMM, but in a CUDA graph (how vLLM runs those M) that op quantizes inside the FP16
    launch instead, which can be far slower at long K: 70B.down at M = 256 took 161.7 us in graphs without its
    entry, 130.1 with it (docs/BENCHMARKS.md, "Kernels v19"). So a sweep adds and replaces entries there but does
    not remove one."""
    from kernels.triton_dispatch import LARGE_M_THRESHOLD  # imports this module

    paths = [sweep_jsons] if isinstance(sweep_jsons, str) else list(sweep_jsons)
    runs = [json.loads(Path(p).read_text()) for p in paths]
    kept = json.loads(Path(out_path).read_text()) if update and Path(out_path).exists() else {}
    old = kept.get("configs", {})

    def covered(rows: list[dict]) -> dict[tuple[str, int], int]:
        """Per (shape, M): the largest M below it that the sweep (or the kept table) measured, else 0."""
        ms: dict[str, set[int]] = {}
        for r in rows:
            ms.setdefault(f"{r['n']}x{r['k']}", set()).add(r["m"])
        for shape, entries in old.items():
            ms.setdefault(shape, set()).update(int(m) for m in entries)
        return {(shape, m): max((v for v in vs if v < m), default=0) for shape, vs in ms.items() for m in vs}

    def verdict(r: dict, prev: int) -> list | None:
        if r["m"] < FP8_PDL_CHOICE_FROM_M:
            return list(r["best_cfg"]) if r["op_gluon_pdl_us"] < r["op_triton_us"] else None
        pdl = int(r["op_gluon_pdl_us"] < r["op_gluon_us"])
        ours = min(r["op_gluon_pdl_us"], r["op_gluon_us"])
        rivals = [r["op_triton_us"]] if prev + 1 < LARGE_M_THRESHOLD else []
        if r["m"] >= LARGE_M_THRESHOLD and "op_cublaslt_us" in r:
            rivals.append(r["op_cublaslt_us"])
            if r["best_us"] > r["cublaslt_fp8_us"]:
                return None
        lead = 1 - FP8_LARGE_M_MARGIN
        eager = "op_eager_gluon_us" not in r or r["op_eager_gluon_us"] < r["op_eager_without_us"] * lead
        return [*r["best_cfg"], pdl] if eager and all(ours < t * lead for t in rivals) else None

    verdicts: dict[tuple[str, int], list] = {}
    for i, res in enumerate(runs):
        prev = covered(res["rows"])
        for r in res["rows"]:
            key = (f"{r['n']}x{r['k']}", r["m"])
            v = verdict(r, prev[key]) if "op_gluon_pdl_us" in r else None  # none: its PDL check failed
            if i == 0 and "op_gluon_pdl_us" in r:  # the first sweep's rows without op timings are left out
                verdicts[key] = v
            elif v is None and key in verdicts:
                verdicts[key] = None
    configs: dict = {}
    for (shape, m), v in verdicts.items():
        if v is None and m < FP8_PDL_CHOICE_FROM_M and old.get(shape, {}).get(str(m)):
            v = old[shape][str(m)]  # kept: see the docstring's last point
        configs.setdefault(shape, {})[str(m)] = v
    configs = _merge_entries(old, configs)
    source = ",".join(Path(p).name for p in paths)
    if kept.get("source"):  # the kept entries' provenance stays on record
        source = f"{kept['source']} ({kept.get('date', '?')}), then {source}"
    return _write_table(out_path, source, runs[0]["meta"], "--gluon-fp8-table SWEEP_JSON[,SWEEP_JSON...]",
                        "configs", configs)


def _write_table(out_path: str, source: str, meta: dict, option: str, key: str, entries: dict, **extra) -> dict:
    """A Gluon table with its provenance (``source``: the measuring runs' file names; device, date, Triton), one
    line per entry (indent=1 would spread each list of numbers over several lines); ``extra``: more top-level
    keys."""
    table = {"source": source, "device": meta["device"], "date": meta["date"], "triton": meta["triton"],
             "command": f"python -m kernels.tuning {option}", key: entries, **extra}
    text = re.sub(r"\[[\d,\s]+\]", lambda mt: json.dumps(json.loads(mt.group())), json.dumps(table, indent=1))
    Path(out_path).write_text(text + "\n")
    return table


def write_gluon_table(check_json: str, out_path: str = str(GLUON_TABLE_PATH), update: bool = False) -> dict:
    """The fastest checked tile per (N, K, M) from ``python -m kernels.gluon_check``'s JSON, or
    null where the shipped op ran the Triton FP16 kernel and was faster in the same run; per (N, K), the M
    from which merge + cuBLAS was faster (``merge_from``, where the run timed it). ``update``: entries of the
    table at ``out_path`` for (N, K, M) the JSON did not time stay (a sweep of some M), and so does a timed
    entry's tile unless the fastest beat it by more than ``INCUMBENT_MARGIN`` in the same row.

    Where the shipped op itself ran a Gluon tile, its time says nothing about the Triton kernel, so
    the fastest tile stays. Which kernel shipped: the row's ``shipped_gluon``; in JSON from before
    that field, this checkout's table and ``GLUON_MIN_M`` stand in for what shipped then (on
    docs/benchmarks/2026-11-22-h200-gluon-words.json that gives the committed table).
    """
    from kernels.triton_dispatch import GLUON_MIN_M  # imports this module

    res = json.loads(Path(check_json).read_text())
    # read afresh: _load's cache may hold the table as it was before an earlier write
    old = json.loads(Path(out_path).read_text()) if update and Path(out_path).exists() else {}
    tiles: dict = {}
    merge = _merge_from(res["rows"])
    for r in res["rows"]:
        if "best_cfg" in r:
            if "shipped_gluon" in r:
                shipped_gluon = r["shipped_gluon"] is not None
            else:
                shipped_gluon = r["m"] >= GLUON_MIN_M and gluon_tile(r["n"], r["k"], r["m"]) is not None
            win = shipped_gluon or r["best_us"] < r["shipped_us"]
            shape, m = f"{r['n']}x{r['k']}", str(r["m"])
            incumbent = old.get("tiles", {}).get(shape, {}).get(m)
            tile = incumbent if _incumbent_holds(r, incumbent) else list(r["best_cfg"]) if win else None
            tiles.setdefault(shape, {})[m] = tile
    option = "--gluon-table CHECK_JSON"
    if update:
        option += " --update"
        tiles = _merge_entries(old.get("tiles", {}), tiles)
        merge = {**old.get("merge_from", {}), **merge}
    return _write_table(out_path, Path(check_json).name, res["meta"], option, "tiles", tiles, merge_from=merge)


def _merge_entries(old: dict, new: dict) -> dict:
    """A table's per-shape entries by M (``--update``): ``new`` over ``old``, old (shape, M) entries kept where
    ``new`` lacks them, each shape's entries in M order."""
    shapes = {**old, **new}
    return {shape: dict(sorted({**old.get(shape, {}), **new.get(shape, {})}.items(), key=lambda kv: int(kv[0])))
            for shape in shapes}


def _incumbent_holds(row: dict, incumbent: list | None) -> bool:
    """Whether a table's tile stays against a gluon_check row: the row timed it, and its fastest tile
    beat it by no more than ``INCUMBENT_MARGIN``. Single timings vary by a few percent: in one sweep,
    70B.gate_up's tile at M = 128 timed 290 us in the shipped op and 316 us alone, later in the row."""
    if not incumbent or "best_us" not in row:
        return False
    timed = [c["us"] for c in row.get("configs", []) if list(c["cfg"]) == incumbent and "us" in c]
    return bool(timed) and row["best_us"] > timed[0] * (1 - INCUMBENT_MARGIN)


def _merge_from(rows: list[dict]) -> dict:
    """Per (N, K) of a gluon_check run that timed merge + cuBLAS (``merge_cublas_us``): the smallest timed M
    from which it beat the fastest Gluon tile at every larger timed M; past the largest timed M if the Gluon
    kernel won there (beyond what was measured, merge + cuBLAS as before)."""
    timed: dict = {}
    for r in rows:
        if "merge_cublas_us" in r and "best_us" in r:
            timed.setdefault(f"{r['n']}x{r['k']}", []).append((r["m"], r["merge_cublas_us"] < r["best_us"]))
    out = {}
    for shape, wins in timed.items():
        wins.sort()
        start = wins[-1][0] + 1
        for m, merge_won in reversed(wins):
            if not merge_won:
                break
            start = m
        out[shape] = start
    return out


def split_choices(n: int, k: int, m: int, cfg: TileConfig) -> list[int]:
    """Split-K factors worth timing for a tile: only where the tiles alone leave SMs without a
    second program (below 264 programs on the H200's 132 SMs), keeping >= 2 K steps per split."""
    tiles = -(-n // cfg.block_n) * -(-m // cfg.block_m)
    steps = -(-k // cfg.block_k)
    return [1] + [s for s in (2, 4, 8) if tiles < 264 and tiles * s <= 1056 and steps >= 2 * s]


def candidates(kind: str, m: int, n: int | None = None, k: int | None = None) -> list[TileConfig]:
    """Configs the sweep times for one M (a short list: each costs a compile on the H200); given
    (N, K), M <= 64 tiles also come with their split-K variants."""
    base = _base_candidates(kind, m)
    if n is None or k is None or m > 64:
        return base
    return [replace(c, split_k=s) for c in base for s in split_choices(n, k, m, c)]


def _base_candidates(kind: str, m: int) -> list[TileConfig]:
    C = TileConfig
    tb = token_block(m)
    if kind == "fp16":
        if m <= 64:
            # mma.sync tiles (block_n < 64) beat register-A wgmma here: see docs/BENCHMARKS.md
            out = [C(32, tb, 256, 4, 4), C(16, tb, 512, 4, 3), C(32, tb, 128, 4, 5), C(16, tb, 256, 4, 5),
                   C(64, tb, 128, 4, 4), C(32, tb, 512, 4, 3)]
            if m > 16:  # tokens in the MMA's M slot, W through shared memory
                out += [C(64, 64, 128, 4, 4, swap_ab=False), C(32, 64, 256, 4, 4, swap_ab=False),
                        C(128, 64, 64, 4, 3, swap_ab=False)]
            return out
        if m <= 256:
            return [C(64, 128, 64, 4, 4, swap_ab=False), C(128, 64, 64, 4, 3, swap_ab=False),
                    C(32, 128, 128, 4, 4, swap_ab=False), C(64, 64, 128, 4, 4, swap_ab=False),
                    C(64, 128, 128, 4, 3, swap_ab=False), C(64, 256, 64, 8, 3, swap_ab=False),
                    C(32, 64, 256, 4, 4), C(32, 128, 128, 4, 4)]
        return [C(128, 256, 64, 8, 3, swap_ab=False), C(128, 128, 64, 4, 3, swap_ab=False),
                C(128, 128, 64, 8, 3, swap_ab=False), C(256, 128, 64, 8, 3, swap_ab=False),
                C(64, 256, 64, 8, 3, swap_ab=False), C(128, 256, 32, 8, 4, swap_ab=False)]
    if m <= 64:
        base = [C(64, tb, 256, 4, 4), C(128, tb, 256, 4, 3), C(64, tb, 512, 4, 3),
                C(32, tb, 512, 4, 4), C(128, tb, 128, 4, 5), C(16, tb, 512, 4, 4)]
        fused = [replace(c, fused_quant=True) for c in base[:4]] if m <= 16 else []
        return base + fused
    if m <= 512:  # larger weight tiles read x from L2 fewer times (it is read once per weight tile)
        tb = min(256, token_cap(m))
        return [C(128, 64, 128, 4, 4), C(128, 128, 128, 8, 3), C(256, 64, 128, 8, 3),
                C(128, 64, 256, 4, 3), C(64, 128, 128, 4, 4), C(128, 128, 128, 4, 4),
                C(128, tb, 128, 8, 3), C(256, 128, 128, 8, 3), C(128, 128, 256, 8, 3), C(64, tb, 128, 4, 4)]
    return [C(128, 128, 128, 8, 4), C(128, 256, 128, 8, 3), C(256, 128, 128, 8, 3),
            C(128, 128, 128, 4, 4), C(256, 128, 128, 8, 4)]


# --- the sweep that writes the table (run on the H200: python -m kernels.tuning --sweep) ---

LLAMA_SHAPES: dict[str, tuple[int, int]] = {  # name: (N, K)
    "8B.qkv": (6144, 4096), "8B.o": (4096, 4096), "8B.gate_up": (28672, 4096), "8B.down": (4096, 14336),
    "70B.qkv": (10240, 8192), "70B.o": (8192, 8192), "70B.gate_up": (57344, 8192), "70B.down": (8192, 28672),
}
SWEEP_MS = (1, 16, 64, 256, 1024, 4096, 8192)  # one M per tuned bucket
CHECK_TOL = 5e-3  # relative Frobenius error allowed against the reference before a config is timed
INCUMBENT_MARGIN = 0.03  # --update keeps the base table's pick unless a candidate beats it by more


def sweep(out_path: str, shapes: dict[str, tuple[int, int]] = LLAMA_SHAPES, ms=SWEEP_MS, rep_ms: int = 25,
          base: dict | None = None, kinds: tuple[str, ...] = KINDS) -> dict:
    """Time every candidate per (kind, N, K, M); keep the fastest that passes the reference check.
    Each candidate is timed as a CUDA-graph replay of its launches: the GPU's time alone, which
    eager timing at small M is not wherever the host's enqueue outlasts do_bench's L2 flush
    (docs/BENCHMARKS.md, "Kernels v5"). ``base``: a committed table (configs and sweep rows) to
    update: only the swept (kind, N, K, M bucket) entries and rows are replaced, and the config the
    base table gave that M (its incumbent, timed alongside) stays unless a candidate beats it by more
    than ``INCUMBENT_MARGIN``: single timings on the H200 vary by a few percent."""
    import time

    import torch
    import torch.nn.functional as F
    import triton

    from kernels import nested_merge, nested_split
    from kernels.bench import graphed
    from kernels.ops import new_mode_tensor
    from kernels.reference import fp8_linear_reference
    from kernels.triton_fp8 import nested_fp8_gemm
    from kernels.triton_fp16 import nested_fp16_gemm

    configs: dict = json.loads(json.dumps(base["configs"])) if base else {}
    for kind in KINDS:
        configs.setdefault(kind, {})
    swept = {(kind, n, k, m_bucket(m)) for kind in kinds for n, k in shapes.values() for m in ms}
    timings = [r for r in base["sweep"] if (r["kind"], r["n"], r["k"], m_bucket(r["m"])) not in swept] if base else []
    t0 = time.time()
    for name, (n, k) in shapes.items():
        nw = nested_split((torch.randn(n, k, device="cuda") * 0.02).half())
        w16 = nested_merge(nw)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            t_cublas = triton.testing.do_bench(graphed(lambda: torch.matmul(x, w16.t())), warmup=5, rep=rep_ms,
                                               return_mode="median")
            for kind in kinds:
                mode = new_mode_tensor("cuda", kind)
                ref = F.linear(x, w16) if kind == "fp16" else fp8_linear_reference(x, nw.upper, nw.fp8_weight_scale)
                out = torch.empty(m, n, device="cuda", dtype=torch.float16)
                best = None
                incumbent = lookup(base["configs"], kind, n, k, m) if base else None
                inc_row = None
                cands = candidates(kind, m, n, k)
                if incumbent is not None and incumbent not in cands:
                    cands.append(incumbent)
                for cfg in cands:
                    if kind == "fp16":
                        fn = lambda: nested_fp16_gemm(x, nw.upper, nw.lower, mode, 0, out=out, config=cfg)  # noqa: E731
                    else:
                        fn = lambda: nested_fp8_gemm(x, nw.upper, mode, 0, out=out, config=cfg)  # noqa: E731
                    row = dict(kind=kind, shape=name, n=n, k=k, m=m, cfg=cfg.to_dict(), cublas_us=t_cublas * 1e3,
                               timing="graph", incumbent=cfg == incumbent)
                    try:
                        out.fill_(float("nan"))
                        fn()
                        err = float((out.float() - ref.float()).norm() / ref.float().norm())
                        row["rel_err"] = err
                        if not err < CHECK_TOL:
                            raise AssertionError(f"rel err {err:.3g}")
                        row["us"] = triton.testing.do_bench(graphed(fn), warmup=5, rep=rep_ms,
                                                            return_mode="median") * 1e3
                    except Exception as e:  # a config that fails to compile (shared memory) or to check
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                        timings.append(row)
                        continue
                    timings.append(row)
                    if cfg == incumbent:
                        inc_row = row
                    if best is None or row["us"] < best["us"]:
                        best = row
                if inc_row is not None and best["us"] > inc_row["us"] * (1 - INCUMBENT_MARGIN):
                    best = inc_row
                if best is not None:
                    configs[kind].setdefault(f"{n}x{k}", {})[str(m_bucket(m))] = best["cfg"]
                    print(f"{time.time() - t0:6.0f}s {kind} {name:12s} M={m:5d} best {best['us']:9.1f} us "
                          f"(cuBLAS fp16 {t_cublas * 1e3:9.1f} us) {best['cfg']}", flush=True)
        del nw, w16
        torch.cuda.empty_cache()
        _write(out_path, configs, timings, base)  # partial results survive a time-out
    return _write(out_path, configs, timings, base)


def _write(out_path: str, configs: dict, timings: list, base: dict | None = None) -> dict:
    import sys
    import time

    import torch
    import triton

    command = "python -m kernels.tuning " + " ".join(sys.argv[1:])
    history = (base.get("commands") or [f"{base.get('date')}: {base.get('command')}"]) if base else []
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  date=time.strftime("%Y-%m-%d"), command=command,
                  commands=[*history, f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {command}"],
                  configs=configs, sweep=timings)
    Path(out_path).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweep", action="store_true", help="time the candidates on this GPU and write the table")
    ap.add_argument("--out", default=str(TABLE_PATH))
    ap.add_argument("--shapes", default=",".join(LLAMA_SHAPES), help="comma-separated names from LLAMA_SHAPES")
    ap.add_argument("--ms", default=",".join(map(str, SWEEP_MS)))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--update", action="store_true",
                    help="start from the committed table: replace only the swept (shape, M bucket) entries "
                         "(--sweep, --gluon-table, --gluon-fp8-table)")
    ap.add_argument("--gluon-table", default=None, metavar="CHECK_JSON",
                    help="write gluon_tiles_h200.json from a kernels.gluon_check result")
    ap.add_argument("--gluon-fp8-table", default=None, metavar="SWEEP_JSON[,SWEEP_JSON...]",
                    help="write gluon_fp8_tiles_h200.json from python -m kernels.gluon_fp8 results (repeated "
                         "sweeps: an entry must win in each)")
    args = ap.parse_args()
    if args.gluon_table:
        write_gluon_table(args.gluon_table, update=args.update)
    if args.gluon_fp8_table:
        write_gluon_fp8_table(args.gluon_fp8_table.split(","), update=args.update)
    if args.sweep:
        sweep(args.out, {s: LLAMA_SHAPES[s] for s in args.shapes.split(",")}, tuple(map(int, args.ms.split(","))),
              base=json.loads(TABLE_PATH.read_text()) if args.update else None, kinds=tuple(args.kinds.split(",")))
