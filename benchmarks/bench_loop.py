"""What logging costs the training loop: a Python-bound loop, timed whole, per variant.

Each step does about 80-100 µs of numpy work (a softmax-regression step on a
small batch, BLAS on one thread) and logs three points. What is timed is the
loop, from its first step to its last, not the logging call alone: a tracker
SDK's threads in the training process take its GIL, and that shows here
even when the call itself is cheap. Closing (until every point is stored) is
timed apart.

Variants, each in a fresh child process, interleaved round by round:

- ``bare``: the loop, logging nothing;
- ``tracelet-memory``: tracelet → the in-memory test double (in process);
- ``tracelet-mlflow``: tracelet → MLflow (local sqlite), through the delivery agent;
- ``tracelet-3``: tracelet → MLflow + W&B + ClearML (offline), through the agent;
- ``tracelet-3-thread``: the same, ``delivery="thread"`` (the SDKs in the trainer);
- ``wandb``: W&B's own ``run.log`` per step (offline);
- ``mlflow-async``: MLflow's own ``log_metrics(..., synchronous=False)`` per step.

The trainer's CPU time over the loop (every thread of the training process,
none of the agent's) is reported too: on a machine busy with other work the
wall-clock ratio moves from run to run, the CPU ratio much less.

Run: ``.venv/bin/python -m benchmarks.bench_loop [--steps N] [--rounds R]
[--only NAME ...] [--against DIR] [--out build/bench_loop.json]``. With
``--against``, the tracelet variants also run with tracelet imported from
another checkout (``git worktree add /tmp/before HEAD~3``), in the same
rounds: a change's effect, measured on one machine at one time. Reports the median loop
time per variant and its ratio to the bare loop's median, and the median
close time. On a shared machine compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import table, write_json
from tracelet.testing import offline_env

VARIANTS: dict[str, str] = {
    "bare": "the loop alone",
    "tracelet-memory": "tracelet → in-memory double",
    "tracelet-mlflow": "tracelet → MLflow (agent)",
    "tracelet-3": "tracelet → MLflow + W&B + ClearML (agent)",
    "tracelet-3-thread": 'tracelet → MLflow + W&B + ClearML (delivery="thread")',
    "wandb": "W&B run.log per step (offline)",
    "mlflow-async": "MLflow log_metrics(synchronous=False) per step",
}

CHILD = r"""
import json, os, sys, time
import numpy as np

variant, steps = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal((224, 256))  # about 90 µs a step here, BLAS on one thread
y = np.eye(10)[rng.integers(0, 10, 224)]
w = np.zeros((256, 10))

def step():
    global w
    z = x @ w
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    w -= 0.01 * (x.T @ (p - y)) / 224
    return float(-np.log((p * y).sum(axis=1) + 1e-12).mean()), float(np.abs(w).mean())

log = None
close = None
if variant.startswith("tracelet"):
    import tracelet
    from tracelet import TraceletSettings
    backend = {"tracelet-memory": ["memory"], "tracelet-mlflow": ["mlflow"]}.get(
        variant, ["mlflow", "wandb", "clearml"])
    settings = TraceletSettings(
        track_git=False, delivery="thread" if variant.endswith("thread") else "agent")
    exp = tracelet.start_logging("loop", "bench", backend=backend, settings=settings)
    def log(i, loss, wabs):
        exp.log_metric("train/loss", loss, iteration=i)
        exp.log_metric("train/w_abs", wabs, iteration=i)
        exp.log_metric("lr", 0.01, iteration=i)
    def close():
        report = exp.end()
        assert report.complete, report
elif variant == "wandb":
    import wandb
    run = wandb.init(project="bench", mode="offline")
    def log(i, loss, wabs):
        run.log({"train/loss": loss, "train/w_abs": wabs, "lr": 0.01}, step=i)
    close = run.finish
elif variant == "mlflow-async":
    import mlflow
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    mlflow.set_experiment("bench")
    mlflow.start_run()
    def log(i, loss, wabs):
        mlflow.log_metrics({"train/loss": loss, "train/w_abs": wabs, "lr": 0.01}, step=i,
                           synchronous=False)
    def close():
        mlflow.flush_async_logging()
        mlflow.end_run()

for i in range(200):  # warm up numpy and the logging path
    step()
t0, c0 = time.perf_counter(), time.process_time()
if log is None:
    for i in range(steps):
        step()
else:
    for i in range(steps):
        loss, wabs = step()
        log(i, loss, wabs)
loop_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
t1 = time.perf_counter()
if close is not None:
    close()
print(json.dumps({"loop_s": loop_s, "cpu_s": cpu_s, "close_s": time.perf_counter() - t1}))
"""


def run_variant(variant: str, steps: int, tree: str | None = None) -> dict[str, float]:
    """Run one variant in a fresh process; `tree`: import tracelet from that checkout."""
    with tempfile.TemporaryDirectory(prefix=f"bench-loop-{variant}-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELET_")}
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
        env.update(
            offline_env(tmp),
            MLFLOW_DISABLE_TELEMETRY="true",
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, variant, str(steps)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
        result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("build/bench_loop.json"))
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="another checkout of tracelet (e.g. a `git worktree` of an older commit): "
        "its tracelet variants run too, in the same rounds",
    )
    args = parser.parse_args(argv)
    chosen = args.only or list(VARIANTS)
    if "bare" not in chosen:
        chosen = ["bare", *chosen]
    if args.against:
        chosen += [f"{v}@{args.against}" for v in chosen if v.startswith("tracelet")]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in chosen}
    for r in range(args.rounds):
        for variant in chosen:  # interleaved: a busy moment hits every variant alike
            name, _, tree = variant.partition("@")
            results[variant].append(run_variant(name, args.steps, tree or None))
            print(
                f"round {r + 1}/{args.rounds} {variant}: "
                f"loop {results[variant][-1]['loop_s']:.2f} s, "
                f"close {results[variant][-1]['close_s']:.2f} s",
                file=sys.stderr,
            )
    bare = statistics.median(x["loop_s"] for x in results["bare"])
    bare_cpu = statistics.median(x["cpu_s"] for x in results["bare"])
    rows = []
    summary: dict[str, Any] = {"steps": args.steps, "rounds": args.rounds, "variants": {}}
    for variant in chosen:
        loop = statistics.median(x["loop_s"] for x in results[variant])
        close = statistics.median(x["close_s"] for x in results[variant])
        cpu = statistics.median(x["cpu_s"] for x in results[variant])
        name, _, tree = variant.partition("@")
        rows.append(
            [
                VARIANTS[name] + (f" [{tree}]" if tree else ""),
                loop,
                f"{loop / bare:.3f}×",
                f"{1e6 * loop / args.steps:.0f}",
                f"{cpu / bare_cpu:.3f}×",
                close,
            ]
        )
        summary["variants"][variant] = {
            "loop_s": loop,
            "ratio": loop / bare,
            "cpu_s": cpu,
            "cpu_ratio": cpu / bare_cpu,
            "close_s": close,
            "runs": results[variant],
        }
    print(
        table(
            f"Training loop, {args.steps:,} steps × 3 points, median of {args.rounds} "
            "interleaved rounds",
            ["variant", "loop s", "vs bare", "µs/step", "trainer CPU vs bare", "close s"],
            rows,
        )
    )
    write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
