"""Many threads logging into one run: every point delivered, per-metric order = call order."""

from __future__ import annotations

import threading

import pytest

import tracelet
from tests._helpers import QUIET
from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run
from tracelet.testing import InMemoryExporter

THREADS = 8


def hammer(exp: tracelet.Experiment, per_thread: int) -> None:
    """Each thread: its own metric with explicit steps, and one metric all threads share.

    The shared metric takes automatic steps, so the order the calls were made
    in is the order of its steps.
    """
    barrier = threading.Barrier(THREADS)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(per_thread // 2):
            exp.log_metric(f"thread{k}/loss", k + i / per_thread, iteration=i)
            exp.log_metric("shared", k * 10_000_000 + i)  # value says who and when

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def check_memory(exp: tracelet.Experiment, per_thread: int) -> None:
    run = InMemoryExporter.runs[exp.run_id]
    half = per_thread // 2
    for k in range(THREADS):  # delivered in call order, exactly
        assert run.history(f"thread{k}/loss") == [(i, k + i / per_thread) for i in range(half)]
    shared = run.history("shared")
    assert [s for s, _ in shared] == list(range(THREADS * half))  # steps = call order
    for k in range(THREADS):  # each thread's calls in its own order
        mine = [v for _, v in shared if k * 10_000_000 <= v < (k + 1) * 10_000_000]
        assert mine == [k * 10_000_000 + i for i in range(half)]


def test_8_threads_into_the_memory_backend() -> None:
    exp = tracelet.start_logging("threads", backend="memory", settings=QUIET)
    hammer(exp, 10_000)
    report = exp.end()
    assert report.complete and report.points == THREADS * 10_000
    check_memory(exp, 10_000)


@pytest.mark.slow
def test_8_threads_x_50000_points_into_mlflow(mlflow_uri: str) -> None:
    per_thread = 50_000
    settings = QUIET.model_copy(update={"close_timeout": 600.0})
    exp = tracelet.start_logging(
        "threads",
        "reliability",
        backend=["mlflow", "memory"],
        config={"mlflow": {"tracking_uri": mlflow_uri}},
        settings=settings,
    )
    hammer(exp, per_thread)
    report = exp.end()
    assert report.complete and report.points == THREADS * per_thread
    check_memory(exp, per_thread)

    run = mlflow_run(mlflow_uri, exp.run_id)
    half = per_thread // 2
    for k in range(THREADS):
        history = mlflow_history(mlflow_uri, run.info.run_id, f"thread{k}/loss")
        assert_exactly_once([s for s, _, _ in history], range(half), f"thread{k}")
        assert [v for _, v, _ in history] == [k + i / per_thread for i in range(half)]
        times = [t for _, _, t in history]
        assert times == sorted(times)  # step order is time order: call order kept
    shared = mlflow_history(mlflow_uri, run.info.run_id, "shared")
    assert_exactly_once([s for s, _, _ in shared], range(THREADS * half), "shared")
    times = [t for _, _, t in shared]
    assert times == sorted(times)
