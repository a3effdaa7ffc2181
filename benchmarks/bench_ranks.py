"""Distributed benchmark: the cost of `log_metric` on a rank that writes no tracker.

Under the default rank policy (``ranks="zero"``) only global rank 0 delivers
to the trackers; on the other ranks `log_metric` only updates the latest
value its OTel gauge reports. Measured in one process, one after the other,
each a median of repeated loops:

- **bare**: the training loop's own cost (a tuple appended to a list);
- **rank 0**: `log_metric` on the rank that writes MLflow (sqlite store;
  its delivery thread runs meanwhile, as it does in training);
- **rank 1**: `log_metric` with ``RANK=1`` (same call, same backends asked for).

Run: ``.venv/bin/python -m benchmarks.bench_ranks [--calls N] [--out build/bench_ranks.json]``
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

from benchmarks._util import per_call_ns, quiet_env, table, write_json

LAUNCH = {"TORCHELASTIC_RUN_ID": "bench-ranks", "WORLD_SIZE": "2"}


def _tracelet_loop(rank: int, workdir: str) -> tuple[Callable[[int], None], Any]:
    import tracelet
    from tracelet import TraceletSettings

    os.environ.update({**LAUNCH, "RANK": str(rank), "LOCAL_RANK": str(rank)})
    exp = tracelet.start_logging(
        f"rank{rank}",
        "bench-ranks",
        backend="mlflow",
        config={"mlflow": {"tracking_uri": f"sqlite:///{workdir}/ranks.db"}},
        # Only the call cost is measured: the run ends without waiting for MLflow.
        settings=TraceletSettings(close_timeout=0, track_system=False),
    )
    done = [0]

    def calls(n: int) -> None:
        log, base = exp.log_metric, done[0]
        for i in range(base, base + n):
            log("loss", 0.5, iteration=i)
        done[0] += n

    return calls, exp


def bench(calls: int, repeats: int) -> dict[str, float]:
    sink: list[Any] = []

    def bare(n: int) -> None:
        append = sink.append
        for i in range(n):
            append(("loss", 0.5, i))
        sink.clear()

    results = {"bare_ns": per_call_ns(bare, calls, repeats)}
    saved = {k: os.environ.get(k) for k in (*LAUNCH, "RANK", "LOCAL_RANK")}
    with tempfile.TemporaryDirectory() as workdir:
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            for rank in (0, 1):
                loop, exp = _tracelet_loop(rank, workdir)
                loop(1000)  # the exporter started, names known: measure the steady state
                results[f"rank{rank}_ns"] = per_call_ns(loop, calls, repeats)
                tracelet_log = logging.getLogger("tracelet")
                level = tracelet_log.level
                tracelet_log.setLevel(logging.CRITICAL)  # "N points undelivered": by design here
                try:
                    exp.end()
                finally:
                    tracelet_log.setLevel(level)
        finally:
            os.chdir(cwd)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    results["rank0_over_bare"] = results["rank0_ns"] / results["bare_ns"]
    results["rank1_over_bare"] = results["rank1_ns"] / results["bare_ns"]
    results["rank1_over_rank0"] = results["rank1_ns"] / results["rank0_ns"]
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="build/bench_ranks.json")
    args = parser.parse_args(argv)
    quiet_env()
    r = bench(args.calls, args.repeats)
    print(
        table(
            f"log_metric per call, median of {args.repeats} x {args.calls:,} calls",
            ["loop", "ns per call", "x bare", "x rank 0"],
            [
                ["bare (list.append)", r["bare_ns"], 1.0, r["bare_ns"] / r["rank0_ns"]],
                ["rank 0 (writes MLflow)", r["rank0_ns"], r["rank0_over_bare"], 1.0],
                ["rank 1 (OTel only)", r["rank1_ns"], r["rank1_over_bare"], r["rank1_over_rank0"]],
            ],
        )
    )
    write_json(args.out, r)
    return r


if __name__ == "__main__":
    main()
