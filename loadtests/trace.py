"""Azure LLM inference traces: where they live and how they are read.

CI clones the repo with ``shared/`` beside it, so the data directory defaults to ``<repo>/../shared/data``;
``--data-dir`` or ``NESTEDFP_DATA_DIR`` overrides it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "NESTEDFP_DATA_DIR"
DEFAULT_TRACE = "azure_llm_conv_2024-05-14_1min.csv"


@dataclass(frozen=True)
class Trace:
    path: Path
    t: np.ndarray  # arrival, seconds after the first row
    context_tokens: np.ndarray
    generated_tokens: np.ndarray


def data_dir(override: str | Path | None = None) -> Path:
    """The shared data directory: ``override``, else $NESTEDFP_DATA_DIR, else <repo>/../shared/data."""
    chosen = override or os.environ.get(DATA_DIR_ENV)
    return Path(chosen) if chosen else REPO_ROOT.parent / "shared" / "data"


def resolve_trace_path(name: str | None, data_dir_override: str | Path | None = None) -> Path:
    """A trace file: an existing path as given, else a file name inside the data directory."""
    name = name or DEFAULT_TRACE
    p = Path(name)
    if p.is_file():
        return p
    d = data_dir(data_dir_override)
    if (d / name).is_file():
        return d / name
    raise FileNotFoundError(f"trace {name!r} not found as a path or in {d} (set --data-dir or ${DATA_DIR_ENV})")


def load_trace(name: str | None, data_dir_override: str | Path | None = None) -> Trace:
    """Read a trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), sorted by arrival."""
    path = resolve_trace_path(name, data_dir_override)
    stamps, ctx, gen = [], [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"]).timestamp())
            ctx.append(int(row["ContextTokens"]))
            gen.append(int(row["GeneratedTokens"]))
    order = np.argsort(stamps, kind="stable")
    ts = np.asarray(stamps)[order]
    t = ts - ts[0] if len(ts) else ts
    return Trace(path, t, np.asarray(ctx)[order], np.asarray(gen)[order])
