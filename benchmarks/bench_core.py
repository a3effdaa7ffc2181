"""Core benchmark: log_metric's cost, end-to-end throughput into MLflow, close time.

Every figure is a median of repeated runs, with its baseline measured in the
same process, so ratios hold across machines better than absolute numbers:

- per-call cost of `Experiment.log_metric` against `list.append` and against
  `mlflow.log_metric(..., synchronous=False)`;
- points per second into MLflow's sqlite store, tracelet (first call to every
  point stored) against raw `MlflowClient.log_batch` in chunks of 1000;
- time for `stop_logging()` with 100,000 points still pending.

Run: ``.venv/bin/python -m benchmarks.bench_core [--points N] [--out build/bench_core.json]``
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from typing import Any

from benchmarks._util import per_call_ns, quiet_env, table, write_json


def bench_call_cost(workdir: str) -> dict[str, float]:
    import mlflow

    import tracelet

    sink: list[Any] = []

    def appends(n: int) -> None:
        append = sink.append
        for i in range(n):
            append(("loss", 0.5, i))
        sink.clear()

    exp = tracelet.start_logging("cost", "bench", backend="memory")
    done = [0]

    def tracelet_calls(n: int) -> None:
        log, base = exp.log_metric, done[0]
        for i in range(base, base + n):
            log("loss", 0.5, iteration=i)
        done[0] += n

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/cost.db")
    mlflow.set_experiment("bench-cost")
    run = mlflow.start_run()
    mdone = [0]

    def mlflow_async(n: int) -> None:
        base = mdone[0]
        for i in range(base, base + n):
            mlflow.log_metric("loss", 0.5, step=i, synchronous=False)
        mdone[0] += n

    result = {
        "list.append": per_call_ns(appends, 10_000, 21),
        "tracelet log_metric": per_call_ns(tracelet_calls, 10_000, 21),
        "mlflow.log_metric(synchronous=False)": per_call_ns(mlflow_async, 500, 7),
    }
    tracelet.stop_logging()
    mlflow.flush_async_logging()
    mlflow.end_run()
    del run
    return result


def bench_throughput(workdir: str, points: int, repeats: int) -> dict[str, float]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    import tracelet

    uri = f"sqlite:///{workdir}/throughput.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("bench-throughput")
    names = ("loss", "acc", "lr")
    t_tracelet, t_raw = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        exp = tracelet.start_logging(
            f"tracelet-{r}", "bench-throughput", backend="mlflow", config={"tracking_uri": uri}
        )
        for i in range(points):
            exp.log_metric(names[i % 3], math.sin(i), iteration=i // 3)
        report = exp.end()
        t_tracelet.append(time.perf_counter() - t0)
        assert report.complete, report

        t0 = time.perf_counter()
        run_id = client.create_run(exp_id, run_name=f"raw-{r}").info.run_id
        now = int(time.time() * 1000)
        for start in range(0, points, 1000):
            batch = [
                Metric(names[i % 3], math.sin(i), now, i // 3)
                for i in range(start, min(points, start + 1000))
            ]
            client.log_batch(run_id, metrics=batch)
        client.set_terminated(run_id)
        t_raw.append(time.perf_counter() - t0)
    med = sorted(t_tracelet)[len(t_tracelet) // 2], sorted(t_raw)[len(t_raw) // 2]
    return {"tracelet → MLflow": points / med[0], "MlflowClient.log_batch ×1000": points / med[1]}


def bench_close(workdir: str, points: int) -> dict[str, float]:
    import tracelet

    uri = f"sqlite:///{workdir}/close.db"
    exp = tracelet.start_logging("close", "bench-close", config={"tracking_uri": uri})
    t0 = time.perf_counter()
    for i in range(points):
        exp.log_metric("loss", 1 / (i + 1), iteration=i)
    t_log = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = exp.end()
    t_close = time.perf_counter() - t0
    assert report.complete, report
    return {"log loop": t_log, "stop_logging": t_close}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="build/bench_core.json")
    args = parser.parse_args(argv)
    quiet_env()
    logging.getLogger("tracelet").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        cost = bench_call_cost(workdir)
        throughput = bench_throughput(workdir, args.points, args.repeats)
        close = bench_close(workdir, args.points)
    base = cost["list.append"]
    mlf = cost["mlflow.log_metric(synchronous=False)"]
    print(
        table(
            "log_metric per-call cost (median ns)",
            ["call", "ns", "× list.append", "× tracelet"],
            [(k, v, v / base, v / cost["tracelet log_metric"]) for k, v in cost.items()],
        )
    )
    print(f"\ntracelet log_metric costs {cost['tracelet log_metric'] / mlf:.4f}× mlflow async\n")
    raw = throughput["MlflowClient.log_batch ×1000"]
    print(
        table(
            f"end-to-end into MLflow sqlite, {args.points:,} points (median of {args.repeats})",
            ["path", "points/s", "× raw log_batch"],
            [(k, v, v / raw) for k, v in throughput.items()],
        )
    )
    print()
    print(
        table(
            f"closing with {args.points:,} points pending (MLflow sqlite)",
            ["phase", "seconds"],
            list(close.items()),
        )
    )
    result = {"points": args.points, "call_ns": cost, "points_per_s": throughput, "close_s": close}
    print(f"\nwritten: {write_json(os.path.join(os.environ.get('PWD', '.'), args.out), result)}")
    return result


if __name__ == "__main__":
    main()
