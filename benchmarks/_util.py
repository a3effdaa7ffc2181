"""Small timing helpers shared by the benchmarks: medians of repeated runs, tables."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def per_call_ns(loop: Callable[[int], None], calls: int, repeats: int) -> float:
    """Median over `repeats` of the time per call of ``loop(calls)``, in ns."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        loop(calls)
        samples.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(samples)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, ""]
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    return out


def quiet_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TRACELET_TRACK_SYSTEM", "false")
    os.environ.setdefault("TRACELET_TRACK_GIT", "false")
    os.environ.setdefault("TRACELET_TRACK_ENV", "false")
