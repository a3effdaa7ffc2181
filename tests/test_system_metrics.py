"""System metrics (``track_system``): sampled off the training thread, delivered to
every tracker as ``system/*`` histories and to OTel as semantic-convention instruments."""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from mlflow import MlflowClient

import tracelet
from tests._helpers import wait_for
from tracelet import TraceletSettings
from tracelet._system import OTEL_HOST_CONFIG, PREFIX, SystemMetrics
from tracelet.testing import InMemoryExporter, MemoryRun, capture_telemetry

# Every Linux machine reports these through psutil (disk and network counters
# can be missing in some containers, so they are checked when present).
ALWAYS = {
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "system_memory_available_megabytes",
    "process_cpu_utilization_percentage",
    "process_memory_rss_megabytes",
}


def settings(**kwargs: Any) -> TraceletSettings:
    return TraceletSettings(**{"track_git": False, "track_env": False, **kwargs})


def memory_run(exp: tracelet.Experiment) -> MemoryRun:
    return InMemoryExporter.runs[exp.run_id]


def mlflow_run_id(client: MlflowClient, exp: tracelet.Experiment) -> str:
    experiment = client.get_experiment_by_name(exp.project)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tracelet.run_id` = '{exp.run_id}'"
    )
    return str(runs[0].info.run_id)


def sampler_of(exp: tracelet.Experiment) -> SystemMetrics:
    sampler = exp._run.sampler
    assert isinstance(sampler, SystemMetrics)
    return sampler


def train_until(
    exp: tracelet.Experiment,
    done: Callable[[], bool],
    collect: Callable[[], None] | None = None,
    what: str = "the samples awaited",
) -> int:
    """A stand-in training loop: a step every 0.1 s until `done()`; returns the last step.

    It ends on what the test observes (samples taken, collections seen), not
    after a time, so a busy machine only makes it longer.
    """
    step = -1

    def train_step() -> bool:
        nonlocal step
        step += 1
        exp.log_metric("train/loss", 1.0 / (step + 1), iteration=step)
        if collect is not None:  # like a reader exporting after each step
            collect()
        return done()

    wait_for(train_step, 120, what, interval=0.1)
    return step


def test_a_run_of_five_samples_has_each_series_in_mlflow_and_otel(mlflow_uri: str) -> None:
    seen: Counter[str] = Counter()
    with capture_telemetry() as capture:

        def collect() -> None:
            _, series = capture.collect()
            seen.update(name for name in OTEL_HOST_CONFIG if series.get(name))
            assert not any(name.startswith(PREFIX) for name in series)  # no duplicate gauges

        exp = tracelet.start_logging(
            exp_name="system",
            project="system-metrics",
            backend=["mlflow", "memory"],
            config={"mlflow": {"tracking_uri": mlflow_uri}},
            settings=settings(metrics_interval=0.5),
        )
        assert exp._run.sampler is not None, "track_system is on by default"
        sampler = sampler_of(exp)
        last_step = train_until(
            exp,
            lambda: sampler.samples >= 5 and all(seen[n] >= 5 for n in OTEL_HOST_CONFIG),
            collect,
            "five samples and five collections",
        )
        report = exp.end()
    assert report.complete

    # The tracker side: one point per sample, step = sample index, the same
    # samples in every tracker.
    memory = memory_run(exp)
    system = sorted({p.name[len(PREFIX) :] for p in memory.metrics if p.name.startswith(PREFIX)})
    assert ALWAYS <= set(system), system
    client = MlflowClient(mlflow_uri)
    run_id = mlflow_run_id(client, exp)
    for name in system:
        points = client.get_metric_history(run_id, PREFIX + name)
        history = sorted((m.step, m.value) for m in points)
        assert len(history) >= 5, (name, history)
        assert [step for step, _ in history] == list(range(len(history)))
        assert len(history) == sampler.samples
        assert history == sorted(memory.history(PREFIX + name))
    # System samples do not move the run's own step.
    assert exp.step == last_step

    # The OTel side: the host and process instruments in every collection.
    for name in OTEL_HOST_CONFIG:
        assert seen[name] >= 5, (name, seen)


def test_track_system_off_records_nothing(mlflow_uri: str) -> None:
    names: set[str] = set()
    with capture_telemetry() as capture:

        def collect() -> None:
            names.update(capture.collect()[1])

        exp = tracelet.start_logging(
            exp_name="quiet",
            project="system-metrics",
            backend=["mlflow", "memory"],
            config={"mlflow": {"tracking_uri": mlflow_uri}},
            settings=settings(track_system=False, metrics_interval=0.2),
        )
        assert "tracelet-system" not in {t.name for t in threading.enumerate()}
        train_until(exp, lambda: exp.step >= 4, collect, "five steps")  # sampling never starts
        exp.end()
    assert names and not any(n.startswith(("system.", "process.", "hw.")) for n in names)
    assert not [p for p in memory_run(exp).metrics if p.name.startswith(PREFIX)]
    client = MlflowClient(mlflow_uri)
    metrics = client.get_run(mlflow_run_id(client, exp)).data.metrics
    assert set(metrics) == {"train/loss"}


def test_the_sampler_is_a_named_daemon_thread_that_stops_at_once() -> None:
    # An hour between samples: ending the run must not wait for the next one.
    exp = tracelet.start_logging(backend="memory", settings=settings(metrics_interval=3600))
    sampler = sampler_of(exp)
    thread = sampler._thread
    assert thread.name == "tracelet-system" and thread.daemon and thread.is_alive()
    exp.end()
    assert not thread.is_alive()
    assert sampler.samples == 2  # the one taken as the run started, the one as it ended


def test_every_sample_taken_is_delivered_before_the_run_closes() -> None:
    exp = tracelet.start_logging(backend="memory", settings=settings(metrics_interval=0.1))
    sampler = sampler_of(exp)
    train_until(exp, lambda: sampler.samples >= 2)
    exp.end()
    assert sampler.samples >= 2
    for name in ALWAYS:
        assert [s for s, _ in memory_run(exp).history(PREFIX + name)] == list(
            range(sampler.samples)
        )


def test_settings_and_environment_switch_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TraceletSettings().track_system is True
    assert TraceletSettings().metrics_interval == 10.0
    monkeypatch.setenv("TRACELET_TRACK_SYSTEM", "false")
    monkeypatch.setenv("TRACELET_TRACK_GIT", "0")
    monkeypatch.setenv("TRACELET_TRACK_ENV", "false")
    monkeypatch.setenv("TRACELET_METRICS_INTERVAL", "0.5")
    env = TraceletSettings()
    assert (env.track_system, env.track_git, env.track_env) == (False, False, False)
    assert env.metrics_interval == 0.5
    exp = tracelet.start_logging(backend="memory")
    assert exp._run.sampler is None
    exp.end()
    run = memory_run(exp)
    assert not run.metrics and not run.tags
    with pytest.raises(ValueError, match="metrics_interval"):
        TraceletSettings(metrics_interval=0)


def test_a_second_run_in_the_process_gets_the_host_instruments() -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    for name in ("first", "second"):
        with capture_telemetry() as capture:
            exp = tracelet.start_logging(
                exp_name=name, backend="memory", settings=settings(metrics_interval=0.1)
            )
            sampler = sampler_of(exp)
            train_until(exp, lambda s=sampler: s.samples >= 2)
            _, series = capture.collect()
            exp.end()
        assert series.get("system.cpu.utilization"), name
        assert series.get("process.memory.usage"), name
        # Each run undoes its instrumentation at its end (the singleton is free again).
        assert not SystemMetricsInstrumentor().is_instrumented_by_opentelemetry


def test_an_instrumentation_the_application_made_is_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    mine = SystemMetricsInstrumentor(config={"system.memory.usage": ["used"]})
    mine.instrument(meter_provider=provider)
    try:
        caplog.set_level(logging.INFO, logger="tracelet")
        with capture_telemetry() as capture:
            exp = tracelet.start_logging(backend="memory", settings=settings(metrics_interval=0.1))
            sampler = sampler_of(exp)
            train_until(exp, lambda: sampler.samples >= 2)
            _, series = capture.collect()
            exp.end()
        assert not any(n.startswith(("system.", "process.")) for n in series)
        assert "instrumented system metrics itself" in caplog.text
        # The tracker side does not depend on the OTel instrumentation.
        assert memory_run(exp).history(PREFIX + "cpu_utilization_percentage")
        # The application's instrumentation still works after the run.
        assert mine.is_instrumented_by_opentelemetry
        data = reader.get_metrics_data()
        assert data is not None
        names = {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        assert names == {"system.memory.usage"}
    finally:
        mine.uninstrument()
        provider.shutdown()


def test_missing_packages_cost_one_line_each_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Fault injection: the "system" packages cannot be imported.
    for module in ("psutil", "pynvml", "opentelemetry.instrumentation.system_metrics"):
        monkeypatch.setitem(sys.modules, module, None)
    caplog.set_level(logging.DEBUG, logger="tracelet")
    exp = tracelet.start_logging(backend="memory", settings=settings(metrics_interval=0.1))
    sampler = sampler_of(exp)
    sampler._thread.join(10)  # with nothing to sample the thread ends by itself
    assert not sampler._thread.is_alive()
    exp.log_metric("loss", 1.0)
    exp.end()
    assert [p.name for p in memory_run(exp).metrics] == ["loss"]
    messages = [r.getMessage() for r in caplog.records if r.name == "tracelet"]
    assert len([m for m in messages if "psutil" in m]) == 1
    assert len([m for m in messages if "instrumentation-system-metrics" in m]) == 1
    assert len([m for m in messages if "nvidia-ml-py" in m]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "tracelet"]
