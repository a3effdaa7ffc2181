"""Resume benchmark: what skipping the already-stored replay costs `tracelet sync` after a kill -9.

For W&B and ClearML (offline, in a temporary folder), a first exporter writes
N points, saves its resume state at a durable cursor, writes a replay window
of W points more and stops: the state a kill -9 leaves. A second exporter
resumes from that state (as ``tracelet sync`` does) and is sent the window
again plus W new points. Reported, per N:

- ``start s``: the resumed exporter's ``start`` (reopening the run, and reading
  back what was stored past the mark), against a fresh run's ``start`` in the
  same process;
- ``read s``: the read-back alone (W&B reads the tail of the previous
  ``.wandb`` file, ClearML what lies past the mark in ``metrics.jsonl``), which
  should not grow with N;
- ``skipped``: replayed points left out, which must be W.

Run: ``.venv/bin/python -m benchmarks.bench_resume [--points N ...] [--out FILE]``
(default ``build/bench_resume.json``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._util import table, write_json
from benchmarks.bench_backends import offline_env

WINDOW = 2_000
BATCH = 1_000


def _points(first: int, n: int) -> list[Any]:
    from tracelet.export import MetricPoint

    return [MetricPoint("loss", 1.0 / (i + 1), i, 10**18 + i) for i in range(first, first + n)]


def _send(exporter: Any, points: list[Any]) -> None:
    from tracelet.export import Batch

    for i in range(0, len(points), BATCH):
        exporter.export(Batch(metrics=points[i : i + BATCH]))


def one(backend: str, n: int) -> dict[str, Any]:
    from tracelet.export import RunInfo
    from tracelet.exporters.clearml import ClearMLExporter, stored_events
    from tracelet.exporters.wandb import WandbExporter, read_previous_rows

    cls = {"wandb": WandbExporter, "clearml": ClearMLExporter}[backend]
    run = RunInfo(run_id=f"resume{backend}{n}", project="bench-resume", name=f"{backend}-{n}")
    first = cls()
    t0 = time.perf_counter()
    first.start(run)
    fresh_start = time.perf_counter() - t0
    _send(first, _points(0, n))
    assert first.force_flush()
    mark = first.resume_state()
    _send(first, _points(n, WINDOW))  # stored, but past the cursor the crash leaves
    first.shutdown()

    t0 = time.perf_counter()
    if backend == "wandb":
        read_previous_rows(mark["sync_file"], mark["rows_from"], None)
    else:
        stored_events(mark)
    read = time.perf_counter() - t0

    second = cls()
    t0 = time.perf_counter()
    second.start(RunInfo(**{**run.__dict__, "resume": mark}))
    resumed_start = time.perf_counter() - t0
    _send(second, _points(n, 2 * WINDOW))
    skipped = second._tail.skipped
    second.shutdown()
    return {
        "backend": backend,
        "points before": n,
        "fresh start s": round(fresh_start, 3),
        "resumed start s": round(resumed_start, 3),
        "read s": round(read, 3),
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out", default="build/bench_resume.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        offline_env(Path(tmp))
        rows = [one(b, n) for n in args.points for b in ("wandb", "clearml")]
    header = list(rows[0])
    print(
        table(
            f"Resuming after a crash ({WINDOW} replayed points stored already)",
            header,
            [[r[h] for h in header] for r in rows],
        )
    )
    write_json(args.out, {"window": WINDOW, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
