"""System-metrics benchmark: what ``track_system`` / ``track_git`` / ``track_env`` cost.

- the sampler's cost per sample (psutil reads, and with the history append),
  the OTel instrumentation's cost per collection, and NVML's per read where a
  GPU exists;
- a small numpy training loop's speed with ``track_system`` off and on
  (the default 10 s interval and an aggressive 0.1 s), trials interleaved,
  medians reported;
- what git and environment capture add to ``start_logging``, and how long
  ending a run takes while the sampler waits out a one-hour interval.

Run: ``.venv/bin/python -m benchmarks.bench_system [--repeats N] [--out build/bench_system.json]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from benchmarks._util import table, write_json


def median_ms(call: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


def bench_sample_cost(repeats: int) -> dict[str, float | str]:
    import psutil
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import tracelet
    from tracelet._gpu import NvmlDevices
    from tracelet._system import OTEL_HOST_CONFIG, HostSampler, SystemMetrics

    out: dict[str, float | str] = {}
    host = HostSampler(psutil)
    out["psutil reads, one sample (12 series)"] = median_ms(host.sample, repeats)

    # A sample put through the run's door (`Run.put_sample`), as the sampler thread does.
    exp = tracelet.start_logging(
        backend="memory",
        settings=tracelet.TraceletSettings(track_system=False, track_git=False, track_env=False),
    )
    run = exp._run
    sampler = SystemMetrics(interval=10.0, put=run.put_sample, telemetry=run.telemetry)
    queue: deque[Any] = run.history.queue

    def one_sample() -> None:
        sampler._sample(host, None)
        queue.clear()  # what the journal thread has not taken yet

    out["one sample into the history queue"] = median_ms(one_sample, repeats)
    exp.end()

    for label, config in (("tracelet's subset (10 metrics)", OTEL_HOST_CONFIG), ("default", None)):
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        instrumentor = SystemMetricsInstrumentor(config=config)
        instrumentor.instrument(meter_provider=provider, skip_dep_check=True)
        out[f"OTel collect, instrumentation {label}"] = median_ms(
            reader.get_metrics_data, max(20, repeats // 10)
        )
        instrumentor.uninstrument()
        provider.shutdown()

    devices = NvmlDevices.open()
    if devices is None:
        out["NVML read, all GPUs"] = "n/a (no NVML here)"
    else:
        out[f"NVML read, all GPUs ({devices.count})"] = median_ms(devices.read, repeats)
        devices.close()
    return out


def _train(steps: int, exp: Any, a: Any, b: Any) -> None:
    for step in range(steps):
        c = a @ b
        exp.log_metric("loss", float(c[0, 0]), iteration=step)


def bench_training_loop(repeats: int, steps: int) -> dict[str, dict[str, Any]]:
    import numpy as np

    import tracelet
    from tracelet import TraceletSettings

    rng = np.random.default_rng(0)
    a, b = rng.random((192, 192)), rng.random((192, 192))
    off = TraceletSettings(track_system=False, track_git=False, track_env=False)
    configs = {
        "track_system off": off,
        # The same setting again: how far two identical trials differ on this machine.
        "track_system off (A/A noise floor)": off,
        "on, metrics_interval=10 s (default)": TraceletSettings(track_git=False, track_env=False),
        "on, metrics_interval=0.1 s": TraceletSettings(
            metrics_interval=0.1, track_git=False, track_env=False
        ),
    }
    exp = tracelet.start_logging(backend="memory", settings=off)
    _train(200, exp, a, b)  # warm up
    exp.end()

    labels = list(configs)
    walls: dict[str, list[float]] = {k: [] for k in labels}
    ratios: dict[str, list[float]] = {k: [] for k in labels}
    samples: dict[str, list[int]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    sample_cpu: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(repeats):
        # Rounds of one trial per setting, the order rotated each round; each
        # setting is compared with the "off" trial of its own round.
        wall: dict[str, float] = {}
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            exp = tracelet.start_logging(backend="memory", settings=configs[label])
            t0 = time.perf_counter()
            _train(steps, exp, a, b)
            wall[label] = time.perf_counter() - t0
            sampler = exp._run.sampler
            exp.end()
            samples[label].append(sampler.samples if sampler is not None else 0)
            if sampler is not None:
                cpu[label].append(1000 * sampler.cpu_seconds)
                if sampler.samples:
                    sample_cpu[label].append(1000 * sampler.sample_cpu_seconds / sampler.samples)
        for label in labels:
            walls[label].append(wall[label])
            ratios[label].append(wall[label] / wall["track_system off"])
    return {
        label: {
            "steps": steps,
            "median s": statistics.median(walls[label]),
            "steps/s": steps / statistics.median(walls[label]),
            "slowdown %": 100 * (statistics.median(ratios[label]) - 1),
            "slowdown % min..max": (
                f"{100 * (min(ratios[label]) - 1):+.1f}..{100 * (max(ratios[label]) - 1):+.1f}"
            ),
            "samples/trial": statistics.median(samples[label]),
            "sampler CPU ms/trial": statistics.median(cpu[label] or [0.0]),
            "CPU ms/sample": statistics.median(sample_cpu[label] or [0.0]),
        }
        for label in labels
    }


def bench_start_stop(repeats: int, repo: str) -> dict[str, float]:
    import tracelet
    from tracelet import TraceletSettings
    from tracelet._provenance import capture_git, env_tags

    out: dict[str, float] = {
        "git capture (3 git processes at once)": median_ms(lambda: capture_git(repo), repeats),
        "environment capture": median_ms(env_tags, repeats),
    }

    def start_end(**kwargs: Any) -> Callable[[], None]:
        settings = TraceletSettings(
            **{"track_system": False, "track_git": False, "track_env": False, **kwargs}
        )

        def run() -> None:
            tracelet.start_logging(backend="memory", settings=settings).end()

        return run

    cwd = os.getcwd()
    os.chdir(repo)  # so track_git finds a repository
    try:
        out["start_logging + end, all off"] = median_ms(start_end(), repeats)
        out["start_logging + end, track_git"] = median_ms(start_end(track_git=True), repeats)
        out["start_logging + end, track_env"] = median_ms(start_end(track_env=True), repeats)
        out["start_logging + end, track_system (1 h interval)"] = median_ms(
            start_end(track_system=True, metrics_interval=3600), repeats
        )
    finally:
        os.chdir(cwd)

    def end_only(track: bool) -> float:
        settings = TraceletSettings(
            track_system=track, metrics_interval=3600, track_git=False, track_env=False
        )
        times = []
        for _ in range(repeats):
            exp = tracelet.start_logging(backend="memory", settings=settings)
            while track and not any(t.name == "tracelet-system" for t in threading.enumerate()):
                time.sleep(0.001)
            time.sleep(0.05)  # the sampler is now waiting on its hour
            t0 = time.perf_counter_ns()
            exp.end()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return statistics.median(times)

    out["end(), track_system off"] = end_only(False)
    out["end(), sampler waiting on a 1 h interval"] = end_only(True)
    return out


HEADER = ("setting", "steps/s", "slowdown %", "min..max", "samples", "sampler CPU ms", "ms/sample")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="training-loop rounds")
    parser.add_argument("--steps", type=int, default=2000, help="steps in one trial")
    parser.add_argument("--samples", type=int, default=500, help="samples timed per figure")
    parser.add_argument("--out", default="build/bench_system.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("tracelet").setLevel(logging.WARNING)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = os.path.abspath(args.out)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        try:
            cost = bench_sample_cost(args.samples)
            loop = bench_training_loop(args.repeats, args.steps)
            start = bench_start_stop(max(10, args.repeats * 4), repo)
        finally:
            os.chdir(cwd)

    print(table("Sampler cost (median ms)", ["what", "ms"], list(cost.items())))
    print()
    print(
        table(
            f"Training loop: {args.steps} steps of a 192×192 matmul + log_metric, "
            f"{args.repeats} rounds (medians; slowdown against the 'off' trial of the same round)",
            HEADER,
            [
                (
                    k,
                    v["steps/s"],
                    f"{v['slowdown %']:+.2f}",
                    v["slowdown % min..max"],
                    v["samples/trial"],
                    v["sampler CPU ms/trial"],
                    v["CPU ms/sample"],
                )
                for k, v in loop.items()
            ],
        )
    )
    print()
    print(table("Start and stop (median ms)", ["what", "ms"], list(start.items())))
    result = {"sample_cost_ms": cost, "training_loop": loop, "start_stop_ms": start}
    write_json(out_path, result)
    return result


if __name__ == "__main__":
    main()
