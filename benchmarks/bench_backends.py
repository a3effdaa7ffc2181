"""Backends benchmark: what MLflow, W&B and ClearML cost the training loop, and their throughput.

Everything runs offline in a temporary folder (MLflow sqlite store, W&B
offline, ClearML offline), baselines in the same process:

1. ``log_metric`` cost with 1 backend (MLflow) and with 3 (MLflow, W&B,
   ClearML): median ns per call over timed blocks of 1,000 calls, once with the
   backends idle (started, nothing to send) and once while they are busy
   exporting what was just logged (their threads then share the GIL with the
   loop; the 90th percentile shows it).
2. End-to-end throughput per backend: points per second from the first
   ``log_metric`` to ``end()`` returning (every point stored), against the
   SDK's own logging call: ``wandb`` ``run.log``, ClearML
   ``Logger.report_scalar``, MLflow ``MlflowClient.log_batch``.
3. What starting and closing each tracker costs, on its delivery thread
   (never on the training loop), and how long ``start_logging`` itself takes.

Run: ``.venv/bin/python -m benchmarks.bench_backends [--points N] [--out FILE]``
(default ``build/bench_backends.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._util import quiet_env, table, write_json
from tracelet.testing import offline_env as offline_vars

TRACKERS = ["mlflow", "wandb", "clearml"]
NAMES = ("train/loss", "val/loss", "lr")


def offline_env(workdir: Path) -> None:
    """W&B and ClearML offline, writing under `workdir`; set before either is imported."""
    quiet_env()
    os.environ.update(offline_vars(workdir))


class Lifecycle:
    """Times each exporter's start / force_flush / shutdown (they run on delivery threads)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.started = threading.Semaphore(0)
        from tracelet import _registry, interface

        for name, cls in _registry.resolve(TRACKERS).items():
            for method in ("start", "force_flush", "shutdown"):
                setattr(cls, method, self._timed(name, method, getattr(cls, method)))
        real_hook = interface._exit_hook_first

        def hook() -> None:  # called on a delivery thread right after its start()
            real_hook()
            self.started.release()

        interface._exit_hook_first = hook

    def _timed(self, backend: str, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(exporter: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(exporter, *args, **kwargs)
            finally:
                self.seconds.setdefault((backend, method), []).append(time.perf_counter() - t0)

        return timed

    def wait_started(self, n: int) -> None:
        for _ in range(n):
            if not self.started.acquire(timeout=300):
                raise RuntimeError("a backend did not start within 300 s")


@contextmanager
def experiment(life: Lifecycle, backends: list[str], mlflow_uri: str, name: str) -> Iterator[Any]:
    import tracelet

    exp = tracelet.start_logging(
        exp_name=name,
        project="bench",
        backend=backends,
        config={"mlflow": {"tracking_uri": mlflow_uri}} if "mlflow" in backends else None,
        settings=tracelet.TraceletSettings(close_timeout=1800),
    )
    life.wait_started(len(backends))
    try:
        yield exp
    finally:
        report = exp.end()
        if not report.complete:
            raise RuntimeError(f"not every point arrived: {report}")


def block_costs(exp: Any, blocks: int, calls: int, start_step: int) -> list[float]:
    """ns per log_metric call, for each timed block of `calls` calls."""
    out = []
    log, step = exp.log_metric, start_step
    for _ in range(blocks):
        t0 = time.perf_counter_ns()
        for i in range(step, step + calls):
            log("train/loss", 0.5, iteration=i)
        out.append((time.perf_counter_ns() - t0) / calls)
        step += calls
    return out


def drain(exp: Any) -> None:
    """Wait until every backend has the points logged so far (polling: a benchmark may)."""
    exp._history.wake()
    while any(d.delivered < exp._run.points for d in exp._deliveries):
        time.sleep(0.01)


def bench_call_cost(life: Lifecycle, mlflow_uri: str) -> list[dict[str, Any]]:
    rows = []
    for backends in (["mlflow"], TRACKERS):
        with experiment(life, backends, mlflow_uri, f"cost-{len(backends)}") as exp:
            idle = []
            for r in range(30):  # each block timed once the backends delivered the last one
                idle.extend(block_costs(exp, 1, 1000, r * 1000))
                drain(exp)
            busy = block_costs(exp, 30, 1000, 1_000_000)  # 30k points, back to back
        rows.append(
            {
                "backends": "+".join(backends),
                "idle_median_ns": statistics.median(idle),
                "busy_median_ns": statistics.median(busy),
                "busy_p90_ns": statistics.quantiles(busy, n=10)[-1],
            }
        )
    return rows


def log_points(exp: Any, n: int, same_step: bool) -> None:
    """`n` points over 3 metrics: at one shared step, or each at its own step going back."""
    log = exp.log_metric
    for i in range(n):
        k = i // 3
        if same_step:
            log(NAMES[i % 3], 1.0 / (k + 1), iteration=k)
        else:
            step = (k, k % 997, n - k)[i % 3]
            log(NAMES[i % 3], 1.0 / (k + 1), iteration=step)


def tracelet_rate(life: Lifecycle, backend: str, n: int, mlflow_uri: str, same_step: bool) -> float:
    with experiment(life, [backend], mlflow_uri, f"e2e-{backend}") as exp:
        t0 = time.perf_counter()
        log_points(exp, n, same_step)
    return n / (time.perf_counter() - t0)


def wandb_rate(n: int, per_call: int) -> float:
    import wandb

    run = wandb.init(
        project="bench", name=f"sdk-{per_call}", settings=wandb.Settings(reinit="create_new")
    )
    t0 = time.perf_counter()
    for k in range(n // per_call):
        run.log({NAMES[j]: 1.0 / (k + 1) for j in range(per_call)}, step=k, commit=True)
    run.finish()
    return n / (time.perf_counter() - t0)


def clearml_rate(n: int) -> float:
    from clearml import Task

    task = Task.init(
        project_name="bench",
        task_name="sdk",
        reuse_last_task_id=False,
        auto_connect_frameworks={"detect_repository": False},
        auto_resource_monitoring=False,
        auto_connect_streams=False,
        auto_connect_arg_parser=False,
    )
    logger = task.get_logger()
    t0 = time.perf_counter()
    for i in range(n):
        k = i // 3
        logger.report_scalar(NAMES[i % 3], "value", 1.0 / (k + 1), iteration=k)
    task.flush(wait_for_uploads=True)
    task.close()
    return n / (time.perf_counter() - t0)


def mlflow_rate(n: int, uri: str) -> float:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(
        client.create_experiment("bench")
    )
    run_id = client.create_run(experiment.experiment_id, run_name="sdk").info.run_id
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    batch = []
    for i in range(n):
        k = i // 3
        batch.append(Metric(NAMES[i % 3], 1.0 / (k + 1), now, k))
        if len(batch) == 1000:
            client.log_batch(run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id)
    return n / (time.perf_counter() - t0)


def bench_throughput(life: Lifecycle, n: int, mlflow_uri: str) -> list[dict[str, Any]]:
    rows = []
    for backend in TRACKERS:
        own = tracelet_rate(life, backend, n, mlflow_uri, same_step=False)
        shared = tracelet_rate(life, backend, n, mlflow_uri, same_step=True)
        if backend == "wandb":
            sdk = {
                "run.log, 1 metric per call": wandb_rate(n, 1),
                "run.log, 3 metrics per call": wandb_rate(n, 3),
            }
        elif backend == "clearml":
            sdk = {"Logger.report_scalar (reporting thread)": clearml_rate(n)}
        else:
            sdk = {"MlflowClient.log_batch x1000": mlflow_rate(n, mlflow_uri)}
        for call, rate in sdk.items():
            rows.append(
                {
                    "backend": backend,
                    "tracelet_own_steps_pps": own,
                    "tracelet_shared_step_pps": shared,
                    "sdk_call": call,
                    "sdk_pps": rate,
                }
            )
    return rows


def bench_start(life: Lifecycle, mlflow_uri: str) -> float:
    import tracelet

    t0 = time.perf_counter()
    exp = tracelet.start_logging(
        "start", "bench", backend=TRACKERS, config={"mlflow": {"tracking_uri": mlflow_uri}}
    )
    returned = time.perf_counter() - t0
    life.wait_started(len(TRACKERS))
    exp.end()
    return returned


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30_000, help="points per throughput run")
    parser.add_argument("--out", default="build/bench_backends.json")
    args = parser.parse_args(argv)
    out_path = Path(args.out).absolute()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="tracelet-bench-") as tmp:
        workdir = Path(tmp)
        offline_env(workdir)
        os.chdir(workdir)
        try:
            life = Lifecycle()
            mlflow_uri = f"sqlite:///{workdir / 'mlflow.db'}"
            start_logging_s = bench_start(life, mlflow_uri)  # also creates MLflow's schema
            cost = bench_call_cost(life, mlflow_uri)
            rates = bench_throughput(life, args.points, mlflow_uri)
            import wandb

            wandb.teardown()
        finally:
            os.chdir(cwd)
    lifecycle = [
        {
            "backend": backend,
            "method": method,
            "first_s": times[0],  # the first start also imports the SDK
            "later_median_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "calls": len(times),
        }
        for (backend, method), times in sorted(life.seconds.items())
    ]
    results = {
        "points": args.points,
        "start_logging_s": start_logging_s,
        "log_metric_cost": cost,
        "throughput": rates,
        "lifecycle": lifecycle,
    }
    print(
        table(
            "log_metric cost (ns per call, median of blocks of 1,000 calls)",
            ["backends", "idle median", "busy median", "busy p90"],
            [
                [r["backends"], r["idle_median_ns"], r["busy_median_ns"], r["busy_p90_ns"]]
                for r in cost
            ],
        )
    )
    print()
    print(
        table(
            f"end-to-end points/s ({args.points:,} points over 3 metrics, "
            "first call to every point stored)",
            ["backend", "tracelet, own steps", "tracelet, shared step", "SDK call", "SDK points/s"],
            [
                [
                    r["backend"],
                    r["tracelet_own_steps_pps"],
                    r["tracelet_shared_step_pps"],
                    r["sdk_call"],
                    r["sdk_pps"],
                ]
                for r in rates
            ],
        )
    )
    print()
    print(
        table(
            f"tracker start and close, on the delivery thread (start_logging() returned in "
            f"{start_logging_s * 1000:.1f} ms with all three)",
            ["backend", "method", "first s", "later median s", "calls"],
            [
                [r["backend"], r["method"], r["first_s"], r["later_median_s"], r["calls"]]
                for r in lifecycle
            ],
        )
    )
    path = write_json(out_path, results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
