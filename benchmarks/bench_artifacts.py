"""Artifacts benchmark: what ``log_artifact`` costs the training loop, and upload throughput.

For 1 MB, 100 MB and 500 MB files of random bytes, against a real
``mlflow server`` (artifact proxy) and the local sqlite store, baselines in
the same process:

1. The call: ``Experiment.log_artifact`` (capture into the run directory,
   hashed; the upload happens on the delivery thread) against
   ``MlflowClient.log_artifact`` (the training thread waits for the upload).
2. Upload throughput: from tracelet's call until the backend holds the file
   (the delivery's durable cursor passed it), against the baseline call.
3. ``log_metric`` meanwhile: ns per call (median and 99th percentile) of a
   thread logging points while the capture runs, and of the training loop
   while the upload runs, against the same loop with nothing else going on.

Medians over ``--repeats`` runs (one for 500 MB by default). Run:
``.venv/bin/python -m benchmarks.bench_artifacts [--sizes 1 100 500] [--out FILE]``
(default ``build/bench_artifacts.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._util import quiet_env, table, write_json

MB = 1 << 20


def write_random(path: Path, size_mb: int) -> None:
    with path.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    from tests._helpers import migrate_mlflow_store
    from tests._servers import MlflowServer

    template = migrate_mlflow_store(root / "template.db")
    (root / "server").mkdir()
    server = MlflowServer(root / "server", template=template).start()
    try:
        yield server.url
    finally:
        server.stop()


def metric_loop(exp: Any, stop: threading.Event, out: list[int]) -> None:
    """Log points until `stop`, 10 per ms (a fast training loop), keeping each call's ns."""
    log, clock, i = exp.log_metric, time.perf_counter_ns, 0
    while not stop.is_set():
        for _ in range(10):
            t0 = clock()
            log("bench/loss", 0.5, i)
            out.append(clock() - t0)
            i += 1
        time.sleep(0.001)


def quantiles(samples: list[int]) -> tuple[float, float]:
    if not samples:
        return float("nan"), float("nan")
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def one_tracelet(uri: str, path: Path) -> dict[str, float]:
    import tracelet

    exp = tracelet.start_logging(
        backend="mlflow", config={"mlflow": {"tracking_uri": uri}}, exp_name="bench-artifacts"
    )
    delivery = exp._deliveries[0]
    uploaded_at: list[float] = []  # when the exporter returned from the artifact's batch
    export = delivery.exporter.export

    def timed_export(batch: Any, *args: Any, **kwargs: Any) -> Any:
        result = export(batch, *args, **kwargs)
        if batch.artifacts:
            uploaded_at.append(time.perf_counter())
        return result

    delivery.exporter.export = timed_export  # type: ignore[method-assign]
    exp.log_metric("bench/loss", 0.1, 0)
    while delivery.delivered < 1:  # MLflow imported, run open: only the artifact is timed
        time.sleep(0.01)
    idle: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=metric_loop, args=(exp, stop, idle))
    t.start()
    time.sleep(0.3)
    stop.set()
    t.join()
    during_call: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=metric_loop, args=(exp, stop, during_call))
    t.start()
    t0 = time.perf_counter()
    exp.log_artifact(path, f"bench/{path.name}")
    call = time.perf_counter() - t0
    stop.set()
    t.join()
    during_upload: list[int] = []
    log, clock, i = exp.log_metric, time.perf_counter_ns, 10**6
    while not uploaded_at:  # a training loop: 10 points per ms, while the upload runs
        for _ in range(10):
            s = clock()
            log("bench/loss", 0.5, i)
            during_upload.append(clock() - s)
            i += 1
        time.sleep(0.001)
        if time.perf_counter() - t0 > 600:
            raise TimeoutError(f"{path.name} not uploaded within 600 s")
    uploaded = uploaded_at[0] - t0
    exp.end()
    return {
        "call_s": call,
        "upload_s": uploaded,
        "metric_idle_ns": quantiles(idle)[0],
        "metric_idle_p99_ns": quantiles(idle)[1],
        "metric_during_call_ns": quantiles(during_call)[0],
        "metric_during_call_p99_ns": quantiles(during_call)[1],
        "metric_during_upload_ns": quantiles(during_upload)[0],
        "metric_during_upload_p99_ns": quantiles(during_upload)[1],
    }


def one_baseline(uri: str, path: Path) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench-baseline")
    eid = experiment.experiment_id if experiment else client.create_experiment("bench-baseline")
    run = client.create_run(eid)
    t0 = time.perf_counter()
    client.log_artifact(run.info.run_id, str(path), "bench")
    took = time.perf_counter() - t0
    client.set_terminated(run.info.run_id)
    return took


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 500], help="MB")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size under 500 MB")
    parser.add_argument("--stores", nargs="+", default=["server", "sqlite"])
    parser.add_argument("--out", default="build/bench_artifacts.json")
    args = parser.parse_args(argv)
    quiet_env()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tracelet-bench-artifacts-") as tmp:
        root = Path(tmp)
        os.chdir(root)
        with mlflow_server(root) as server_url:
            uris = {"server": server_url, "sqlite": f"sqlite:///{root / 'store.db'}"}
            for store in args.stores:
                for size in args.sizes:
                    path = root / f"file-{size}mb.bin"
                    write_random(path, size)
                    repeats = 1 if size >= 500 else args.repeats
                    ours = [one_tracelet(uris[store], path) for _ in range(repeats)]
                    base = [one_baseline(uris[store], path) for _ in range(repeats)]
                    path.unlink()
                    med = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
                    base_s = statistics.median(base)
                    results[f"{store}/{size}MB"] = {**med, "baseline_call_s": base_s}
                    rows.append(
                        [
                            store,
                            size,
                            med["call_s"] * 1000,
                            base_s * 1000,
                            size / med["upload_s"],
                            size / base_s,
                            med["metric_idle_ns"] / 1000,
                            med["metric_during_call_ns"] / 1000,
                            med["metric_during_call_p99_ns"] / 1000,
                            med["metric_during_upload_ns"] / 1000,
                            med["metric_during_upload_p99_ns"] / 1000,
                        ]
                    )
    print(
        table(
            "log_artifact: tracelet's call (capture) vs MlflowClient.log_artifact (upload); "
            "log_metric meanwhile (µs)",
            [
                "store",
                "MB",
                "call ms",
                "MlflowClient ms",
                "tracelet MB/s",
                "MlflowClient MB/s",
                "metric idle",
                "metric in call",
                "p99",
                "metric in upload",
                "p99",
            ],
            rows,
        )
    )
    out = write_json(Path(__file__).parent.parent / args.out, results)
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
