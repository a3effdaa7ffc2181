"""The full comparison: tracelet against each tracker's own logging call, in one run.

For every contender the same training-loop workload (one metric, step ``i``,
value ``sin(i)``) runs in a fresh child process, so imports and memory are its
own, and four things are measured:

- **per call**: the cost of one logging call inside the loop (median of
  100-call blocks; p99 of those blocks; the slowest block, which shows stalls);
- **close**: the time from the end of the loop until every point is stored
  (the backlog the loop left behind is part of it): ``stop_logging()``,
  ``mlflow.flush_async_logging()`` + ``end_run()``, ``run.finish()``,
  ``task.close()``, ``force_flush()``;
- **throughput**: points / (loop + close), end to end;
- **memory**: peak RSS of the child, and its growth over the RSS measured
  after setup (SDK imported, run open).

A last column says how many of the logged points the backend kept: the OTel
SDK's gauge keeps the last value per collection, not a history.

Contenders: tracelet → MLflow (sqlite), tracelet → the in-memory test double
(tracelet's own cost), plain MLflow ``log_metric`` (synchronous and
``synchronous=False``; at ~5 ms a call they get fewer points), W&B offline
``run.log``, ClearML offline ``report_scalar`` (reporting thread, as tracelet
configures it), and the OTel SDK's ``gauge.set``.

Run: ``.venv/bin/python -m benchmarks.bench_full [--points N] [--slow-points M]
[--only NAME ...] [--out build/bench_full.json]``. On a shared machine the
absolute numbers move from run to run; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import quiet_env, table, write_json
from tracelet.testing import offline_env

BLOCK = 100  # calls per timed block

#: name -> (description, uses the slow point count)
CONTENDERS: dict[str, tuple[str, bool]] = {
    "tracelet-mlflow": ("tracelet log_metric → MLflow (sqlite)", False),
    "tracelet-memory": ("tracelet log_metric → memory double", False),
    "mlflow-sync": ("mlflow.log_metric (sqlite)", True),
    "mlflow-async": ("mlflow.log_metric(synchronous=False)", True),
    "wandb": ("W&B offline run.log", False),
    "clearml": ("ClearML offline report_scalar", False),
    "otel-gauge": ("OTel SDK gauge.set", False),
}


def child_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MLFLOW_"))}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        TRACELET_TRACK_SYSTEM="false",
        TRACELET_TRACK_GIT="false",
        TRACELET_TRACK_ENV="false",
        TRACELET_CLOSE_TIMEOUT="900",
        **offline_env(workdir),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


# -- the contenders, each run in its own process ----------------------------------


def _loop(call: Callable[[int], None], n: int) -> tuple[list[int], float]:
    """Run ``call(i)`` for i < n in timed blocks; return block times (ns) and total (s)."""
    blocks = []
    t0 = time.perf_counter()
    for start in range(0, n, BLOCK):
        b0 = time.perf_counter_ns()
        for i in range(start, min(n, start + BLOCK)):
            call(i)
        blocks.append((time.perf_counter_ns() - b0) * BLOCK // max(1, min(BLOCK, n - start)))
    return blocks, time.perf_counter() - t0


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def run_contender(name: str, n: int, workdir: Path) -> dict[str, Any]:
    """Set up, run the loop, close, count what was kept; in this process."""
    uri = f"sqlite:///{workdir / (name + '.db')}"
    setup, close, kept = CONTENDER_FUNCS[name](uri, workdir)
    base = _rss()
    value = math.sin
    call = setup(value)
    blocks, loop_s = _loop(call, n)
    t0 = time.perf_counter()
    close()
    close_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    blocks.sort()
    return {
        "contender": name,
        "points": n,
        "per_call_ns": statistics.median(blocks) / BLOCK,
        "p99_ns": blocks[min(len(blocks) - 1, int(len(blocks) * 0.99))] / BLOCK,
        "worst_block_ms": blocks[-1] / 1e6,
        "loop_s": loop_s,
        "close_s": close_s,
        "throughput": n / (loop_s + close_s),
        "base_rss_mb": base / 2**20,
        "peak_rss_mb": peak / 2**20,
        "rss_growth_mb": (peak - base) / 2**20,
        "kept": kept(n),
    }


Setup = Callable[[Callable[[float], float]], Callable[[int], None]]
Parts = tuple[Setup, Callable[[], None], Callable[[int], int]]


def _tracelet(backend: str) -> Callable[[str, Path], Parts]:
    def parts(uri: str, workdir: Path) -> Parts:
        import tracelet

        config = {"mlflow": {"tracking_uri": uri}} if backend == "mlflow" else None
        exp = tracelet.start_logging("bench", "bench-full", backend=backend, config=config)
        while not all(d.started for d in exp._deliveries):  # SDK imported, run open
            time.sleep(0.01)

        def setup(value: Callable[[float], float]) -> Callable[[int], None]:
            log = exp.log_metric
            return lambda i: log("loss", value(i), i)

        def kept(n: int) -> int:
            report = exp.report
            assert report is not None
            return min(b.delivered for b in report.backends)

        return setup, lambda: tracelet.stop_logging(), kept

    return parts


def _mlflow(synchronous: bool) -> Callable[[str, Path], Parts]:
    def parts(uri: str, workdir: Path) -> Parts:
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench-full")
        run = mlflow.start_run()

        def setup(value: Callable[[float], float]) -> Callable[[int], None]:
            log = mlflow.log_metric
            return lambda i: log("loss", value(i), step=i, synchronous=synchronous)

        def close() -> None:
            if not synchronous:
                mlflow.flush_async_logging()
            mlflow.end_run()

        def kept(n: int) -> int:
            return len(mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "loss"))

        return setup, close, kept

    return parts


def _wandb(uri: str, workdir: Path) -> Parts:
    import wandb

    run = wandb.init(project="bench-full", name="sdk")
    sync_file = str(run.settings.sync_file)

    def setup(value: Callable[[float], float]) -> Callable[[int], None]:
        log = run.log
        return lambda i: log({"loss": value(i)}, step=i)

    def close() -> None:
        run.finish()
        wandb.teardown()  # offline: the file is complete once the service has exited

    def kept(n: int) -> int:
        try:
            from tracelet.testing import read_wandb_run
        except ImportError:
            return -1
        return sum(1 for row in read_wandb_run(sync_file).rows if "loss" in row)

    return setup, close, kept


def _clearml(uri: str, workdir: Path) -> Parts:
    from clearml import Task

    Task._report_subprocess_enabled = False  # a reporting thread, as tracelet configures it
    task = Task.init(
        project_name="bench-full",
        task_name="sdk",
        reuse_last_task_id=False,
        auto_connect_frameworks={"detect_repository": False},
        auto_resource_monitoring=False,
        auto_connect_streams=False,
        auto_connect_arg_parser=False,
    )
    folder = str(task.get_offline_mode_folder())
    logger = task.get_logger()

    def setup(value: Callable[[float], float]) -> Callable[[int], None]:
        report = logger.report_scalar
        return lambda i: report("train", "loss", value=value(i), iteration=i)

    def close() -> None:
        task.flush(wait_for_uploads=True)
        task.close()

    def kept(n: int) -> int:
        try:
            from tracelet.testing import read_clearml_session
        except ImportError:
            return -1
        return len(read_clearml_session(folder).scalars.get(("train", "loss"), []))

    return setup, close, kept


def _otel(uri: str, workdir: Path) -> Parts:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gauge = provider.get_meter("bench").create_gauge("loss")
    exported: list[int] = []

    def setup(value: Callable[[float], float]) -> Callable[[int], None]:
        set_ = gauge.set
        attrs = {"split": "train"}
        return lambda i: set_(value(i), attrs)

    def close() -> None:
        data = reader.get_metrics_data()
        exported.append(
            sum(
                len(m.data.data_points)
                for rm in (data.resource_metrics if data else [])
                for sm in rm.scope_metrics
                for m in sm.metrics
            )
        )
        provider.shutdown()

    return setup, close, lambda n: exported[0]


CONTENDER_FUNCS: dict[str, Callable[[str, Path], Parts]] = {
    "tracelet-mlflow": _tracelet("mlflow"),
    "tracelet-memory": _tracelet("memory"),
    "mlflow-sync": _mlflow(True),
    "mlflow-async": _mlflow(False),
    "wandb": _wandb,
    "clearml": _clearml,
    "otel-gauge": _otel,
}


# -- the parent: one child per contender, then the table -----------------------------


def measure(name: str, n: int, workdir: Path, timeout: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_full",
        "--child",
        name,
        "--points",
        str(n),
        "--workdir",
        str(workdir),
    ]
    proc = subprocess.run(
        cmd, env=child_env(workdir), cwd=workdir, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        return {"contender": name, "points": n, "error": proc.stderr.strip()[-2000:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def render(results: Sequence[dict[str, Any]]) -> str:
    header = [
        "contender",
        "points",
        "per call µs",
        "p99 µs",
        "worst 100 calls ms",
        "loop s",
        "close s",
        "end-to-end pts/s",
        "peak RSS MB",
        "RSS growth MB",
        "points kept",
    ]
    rows = []
    for r in results:
        label = CONTENDERS[r["contender"]][0]
        if "error" in r:
            rows.append(
                [label, r["points"], "error: " + r["error"].splitlines()[-1][:60]]
                + [""] * (len(header) - 3)
            )
            continue
        rows.append(
            [
                label,
                f"{r['points']:,}",
                r["per_call_ns"] / 1000,
                r["p99_ns"] / 1000,
                r["worst_block_ms"],
                r["loop_s"],
                r["close_s"],
                r["throughput"],
                r["peak_rss_mb"],
                r["rss_growth_mb"],
                f"{r['kept']:,}",
            ]
        )
    return table("Full comparison (one child process per contender)", header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument(
        "--slow-points",
        type=int,
        default=2_000,
        help="points for plain MLflow log_metric (~5 ms a call)",
    )
    parser.add_argument("--only", action="append", choices=list(CONTENDERS))
    parser.add_argument("--out", default="build/bench_full.json")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_contender(args.child, args.points, Path(args.workdir))
        print(json.dumps(result))
        return
    quiet_env()
    results = []
    with tempfile.TemporaryDirectory(prefix="tracelet-bench-full-") as tmp:
        for name in args.only or CONTENDERS:
            n = args.slow_points if CONTENDERS[name][1] else args.points
            workdir = Path(tmp) / name
            workdir.mkdir()
            results.append(measure(name, n, workdir, args.timeout))
            print(f"  measured {name}", file=sys.stderr, flush=True)
    print(render(results))
    out = write_json(
        args.out,
        {
            "benchmark": "bench_full",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": results,
        },
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
