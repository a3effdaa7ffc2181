"""OTLP benchmark: does the otlp backend cost log_metric anything, even with the collector down?

Median per-call cost of `Experiment.log_metric` (and of an empty ``exp.span``),
all measured in this process:

- ``["mlflow"]``: the baseline;
- ``["mlflow", "otlp"]`` with an unreachable endpoint (a closed port on
  127.0.0.1): the SDK exporter fails and retries on its own thread every
  export interval (0.5 s here, to make it busy);
- ``["mlflow", "otlp"]`` with a live OTLP/gRPC receiver on 127.0.0.1;
- the OTel SDK's own synchronous ``gauge.set(v)`` on a MeterProvider whose
  reader exports to the same unreachable endpoint: what logging straight into
  OTel would cost.

It also reports how long `stop_logging` took for each run (the unreachable
collector costs the end of the run up to ``OTEL_EXPORTER_OTLP_TIMEOUT``,
set to 1 s here) and checks that MLflow received every point.

Run: ``.venv/bin/python -m benchmarks.bench_otlp [--calls N] [--repeats R] [--rounds K]``
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import tempfile
import time
from typing import Any

from benchmarks._util import per_call_ns, quiet_env, table, write_json

HEADER = ["path", "ns/call", "× [mlflow]", "exp.span ns", "stop_logging s", "points", "in MLflow"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_tracelet(
    workdir: str, label: str, backends: list[str], calls: int, repeats: int
) -> dict[str, Any]:
    from mlflow import MlflowClient

    import tracelet

    uri = f"sqlite:///{workdir}/bench.db"
    settings = tracelet.TraceletSettings(metrics_interval=0.5)
    exp = tracelet.start_logging(
        label, "bench-otlp", backend=backends, config={"tracking_uri": uri}, settings=settings
    )
    done = [0]

    def loop(n: int) -> None:
        log, base = exp.log_metric, done[0]
        for i in range(base, base + n):
            log("train/loss", 1 / (i + 1), iteration=i)
        done[0] += n

    def spans(n: int) -> None:
        span = exp.span
        for i in range(n):
            with span("epoch", epoch=i):
                pass

    loop(1000)  # warm-up: gauge registered
    deadline = time.monotonic() + 60
    while not exp._deliveries[0].started and time.monotonic() < deadline:
        time.sleep(0.05)  # the MLflow run exists (its start is not what is measured)
    ns = per_call_ns(loop, calls, repeats)
    span_ns = per_call_ns(spans, max(100, calls // 10), repeats)
    t0 = time.perf_counter()
    report = exp.end()
    close_s = time.perf_counter() - t0
    run_id = exp._deliveries[0].exporter.run_id  # type: ignore[attr-defined]
    stored = len(MlflowClient(uri).get_metric_history(run_id, "train/loss"))
    return {
        "ns": ns,
        "span_ns": span_ns,
        "close_s": close_s,
        "points": done[0],
        "in_mlflow": stored,
        "complete": report.complete,
    }


def bench_sdk_gauge(endpoint: str, calls: int, repeats: int) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint), export_interval_millis=500
    )
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    gauge = provider.get_meter("bench").create_gauge("train/loss")

    def loop(n: int) -> None:
        set_ = gauge.set
        for i in range(n):
            set_(1 / (i + 1))

    loop(1000)
    ns = per_call_ns(loop, calls, repeats)
    t0 = time.perf_counter()
    provider.shutdown(timeout_millis=1000)
    return {
        "ns": ns,
        "span_ns": None,
        "close_s": time.perf_counter() - t0,
        "points": None,
        "in_mlflow": "-",
    }


def _row(name: str, r: dict[str, Any], base: float) -> tuple[Any, ...]:
    return (
        name,
        r["ns"],
        r["ns"] / base,
        r["span_ns"] or "-",
        r["close_s"],
        r["points"] or "-",
        r["in_mlflow"],
    )


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each timing over the rounds; the counts of the last round."""
    out = dict(results[-1])
    for key in ("ns", "span_ns", "close_s"):
        values = [r[key] for r in results if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["complete"] = all(r.get("complete", True) for r in results)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5_000, help="calls per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each case, interleaved")
    parser.add_argument("--out", default="build/bench_otlp.json")
    args = parser.parse_args(argv)
    out_dir = os.environ.get("PWD", os.getcwd())
    quiet_env()
    logging.getLogger("tracelet").setLevel(logging.ERROR)
    # The SDK logs every failed export of the unreachable case; not the point here.
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]
    dead = f"http://127.0.0.1:{_closed_port()}"
    os.environ["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"

    from tests._otlp_receiver import OTLPReceiver

    receiver = OTLPReceiver()
    live = receiver.start_grpc()
    cases: list[tuple[str, list[str], str | None]] = [
        ('["mlflow"]', ["mlflow"], None),
        ('["mlflow", "otlp"], endpoint unreachable', ["mlflow", "otlp"], dead),
        ('["mlflow", "otlp"], live receiver', ["mlflow", "otlp"], live),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in cases}
    sdk = "OTel SDK gauge.set(v), endpoint unreachable"
    runs[sdk] = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        for _ in range(args.rounds):  # interleaved, so machine noise hits every case alike
            for name, backends, endpoint in cases:
                os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                if endpoint is not None:
                    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
                runs[name].append(bench_tracelet(workdir, name, backends, args.calls, args.repeats))
            runs[sdk].append(bench_sdk_gauge(dead, args.calls, args.repeats))
    receiver.stop()
    rows = {name: _median_run(r) for name, r in runs.items()}
    exports = len(receiver.of("metrics"))
    base = rows['["mlflow"]']["ns"]
    print(
        table(
            f"log_metric per-call cost: median over {args.rounds} interleaved runs of the "
            f"median of {args.repeats} × {args.calls:,} calls",
            HEADER,
            [_row(name, r, base) for name, r in rows.items()],
        )
    )
    print(f"\nlive receiver got {exports} metric exports")
    for name, r in rows.items():
        if r["points"] is not None:
            assert r["in_mlflow"] == r["points"] and r["complete"], (name, r)
    result = {"calls": args.calls, "repeats": args.repeats, "rounds": args.rounds, "rows": rows}
    print(f"written: {write_json(os.path.join(out_dir, args.out), result)}")
    return result


if __name__ == "__main__":
    main()
