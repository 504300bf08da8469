"""What the offline analyses of a run (``step_gaps``, ``step_itl``, ``policy_replay``) share at the command line:
each reads some runs' ``report.json``, prints a few lines per run, and can write its results as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def per_report(reports: Sequence[str | Path], analyze: Callable[[dict[str, Any]], dict[str, Any]],
               lines: Callable[[dict[str, Any]], Iterable[str]], out: str | Path | None = None) -> list[dict]:
    """``analyze`` each report (its path kept as ``report``), print its ``lines``, write all to ``out`` if given."""
    results = [dict(analyze(json.loads(Path(p).read_text())), report=str(p)) for p in reports]
    for r in results:
        for line in lines(r):
            print(line)
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
    return results


def by_process(records: Iterable[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Step-log records per replica process (``pid``), each list by time: replicas sharing one log interleave."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("pid"), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["t"])
    return out


def step_log_parser(prog: str, doc: str, reports_help: str, out_help: str) -> argparse.ArgumentParser:
    """The command line of an analysis that reads the step log (``NESTEDFP_STEP_LOG``) and some runs' reports."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--steps", required=True, type=Path, help="the replica's NESTEDFP_STEP_LOG file (or a .gz of it)")
    p.add_argument("reports", nargs="+", type=Path, help=reports_help)
    p.add_argument("--out", type=Path, default=None, help=out_help)
    return p
