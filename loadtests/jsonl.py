"""JSON-lines files as the load tests write them (requests, step logs), plain or gzipped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every non-blank line of ``path`` parsed; a ``.gz`` name is read through gzip (committed raw data)."""
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        return [json.loads(line) for line in f if line.strip()]
