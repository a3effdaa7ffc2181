"""The otlp backend against a real OTLP receiver (gRPC and HTTP) on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tracelet
from tests._helpers import QUIET
from tests._otlp_receiver import OTLPReceiver, attributes
from tests._reliability import mlflow_run
from tests._servers import free_port
from tracelet import ConfigError
from tracelet.exporters.otlp import OTLPOptions, protocol_for, signal_endpoint, timeout_seconds
from tracelet.testing import InMemoryExporter


def _train(exp: tracelet.Experiment) -> None:
    exp.log_params({"lr": 0.1, "optimizer": {"name": "adam"}})
    for epoch in range(2):
        with exp.span("epoch", epoch=epoch):
            for step in range(epoch * 50, (epoch + 1) * 50):
                exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
            with exp.span("evaluate", split="val"):
                exp.log_metric("val/acc", 0.5 + epoch / 10, iteration=epoch)


def _check_trace(r: OTLPReceiver, exp: tracelet.Experiment) -> dict[str, dict[str, Any]]:
    spans = r.spans()
    assert {s["trace_id"] for s in spans} == {exp.trace_id}
    run = [s for s in spans if s["name"] == "tracelet.run"]
    assert len(run) == 1
    run_span = run[0]
    assert run_span["parent_span_id"] == ""  # a root: nothing was current at start
    assert run_span["attributes"]["tracelet.run_id"] == exp.run_id
    assert run_span["attributes"]["tracelet.param.lr"] == 0.1
    assert run_span["attributes"]["tracelet.param.optimizer.name"] == "adam"
    assert run_span["attributes"]["tracelet.run.status"] == "FINISHED"
    epochs = sorted((s for s in spans if s["name"] == "epoch"), key=lambda s: s["start"])
    assert [s["attributes"]["epoch"] for s in epochs] == [0, 1]
    assert all(s["parent_span_id"] == run_span["span_id"] for s in epochs)
    evals = sorted((s for s in spans if s["name"] == "evaluate"), key=lambda s: s["start"])
    assert [e["parent_span_id"] for e in evals] == [s["span_id"] for s in epochs]
    assert evals[0]["attributes"]["split"] == "val"
    for child in epochs + evals:
        assert run_span["start"] <= child["start"] <= child["end"] <= run_span["end"]
    return {"run": run_span, "epoch0": epochs[0]}


def test_grpc_receiver_gets_resource_metrics_and_spans(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint or "")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tracelet-key=abc,x-team=vision")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    # Rank 3 writes the trackers too (by default only global rank 0 does).
    settings = QUIET.model_copy(update={"ranks": "all"})
    exp = tracelet.start_logging("e1", "p1", backend=["memory", "otlp"], settings=settings)
    _train(exp)
    exp.end()

    assert receiver.of("metrics", "grpc") and receiver.of("traces", "grpc")
    assert not receiver.of("metrics", "http")
    for request in receiver.requests:  # OTEL_EXPORTER_OTLP_HEADERS, as gRPC metadata
        assert request.headers["x-tracelet-key"] == "abc"
        assert request.headers["x-team"] == "vision"

    for resource in receiver.resources("metrics") + receiver.resources("traces"):
        assert resource["service.name"] == "tracelet"
        # one per process (OTel's rule): rank 3 of the job's run
        assert resource["service.instance.id"] == f"{exp.run_id}-rank3"
        assert resource["tracelet.run_id"] == exp.run_id
        assert resource["tracelet.project"] == "p1"
        assert resource["tracelet.experiment"] == "e1"
        assert resource["host.name"] == socket.gethostname()
        assert resource["process.pid"] == os.getpid()
        assert resource["tracelet.rank"] == 3
        assert resource["tracelet.local_rank"] == 1
        assert resource["tracelet.world_size"] == 8
        assert resource["tracelet.slurm.job_id"] == "4242"

    latest = receiver.latest()
    assert latest["train/loss"] == [({}, 1 / 100)]
    assert latest["val/acc"] == [({}, 0.6)]
    assert latest["tracelet.step"] == [({}, 99)]
    assert latest["tracelet.points"] == [({}, 102)]
    assert latest["tracelet.export.delivered"] == [({"tracelet.backend": "memory"}, 102)]
    assert latest["tracelet.export.undelivered"] == [({"tracelet.backend": "memory"}, 0)]
    assert latest["tracelet.export.failures"] == [({"tracelet.backend": "memory"}, 0)]
    assert latest["tracelet.history.journaled"] == [({}, 102)]
    assert latest["tracelet.history.backlog"] == [({}, 0)]
    assert latest["tracelet.history.write_errors"] == [({}, 0)]
    assert latest["tracelet.run.info"] == [
        ({"tracelet.param.lr": 0.1, "tracelet.param.optimizer.name": "adam"}, 1)
    ]
    # No step ever becomes an attribute.
    assert not any("step" in key for _, attrs in receiver.series() for key, _ in attrs)

    _check_trace(receiver, exp)
    # Tags (the trace id among them) come from global rank 0 only.
    assert "tracelet.trace_id" not in InMemoryExporter.runs[exp.run_id].tags

    # Span durations are recorded inside their span: exemplars link each
    # duration series to a span of that name (one exemplar per histogram bucket).
    span_names = {(s["trace_id"], s["span_id"]): s["name"] for s in receiver.spans()}
    linked = set()
    for name, metric, point in receiver.metrics():
        if name == "tracelet.span.duration":
            assert metric.unit == "s"
            phase = attributes(point.attributes)["tracelet.span.name"]
            for e in point.exemplars:
                assert span_names[(e.trace_id.hex(), e.span_id.hex())] == phase
                linked.add(phase)
    assert linked == {"epoch", "evaluate"}


@pytest.mark.parametrize("how", ["env", "config"])
def test_http_protobuf_from_environment_or_config(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    config: dict[str, Any] = {}
    if how == "env":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint or "")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0k")
        expected_auth = "Bearer t0k"
    else:
        # config wins over the variables: this endpoint is a dead port.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=from-env")
        config = {
            "otlp": {
                "protocol": "http/protobuf",
                "endpoint": receiver.http_endpoint,
                "headers": {"authorization": "Bearer cfg"},
            }
        }
        expected_auth = "Bearer cfg"
    exp = tracelet.start_logging(
        "e2", "p2", backend=["memory", "otlp"], config=config, settings=QUIET
    )
    _train(exp)
    exp.end()

    assert not receiver.of("metrics", "grpc")
    assert receiver.of("metrics", "http") and receiver.of("traces", "http")
    for request in receiver.requests:
        assert request.headers["authorization"] == expected_auth
        assert request.headers["content-type"] == "application/x-protobuf"
    assert receiver.latest()["train/loss"] == [({}, 1 / 100)]
    assert all(r["tracelet.run_id"] == exp.run_id for r in receiver.resources("traces"))
    _check_trace(receiver, exp)


def test_failed_run_and_failed_phase_are_error_spans(receiver: OTLPReceiver) -> None:
    config = {"otlp": {"endpoint": receiver.grpc_endpoint}}
    exp = tracelet.start_logging(backend=["memory", "otlp"], config=config, settings=QUIET)
    with pytest.raises(ZeroDivisionError), exp:
        exp.log_metric("loss", 1.0)
        with exp.span("checkpoint"):
            _ = 1 / 0
    spans = {s["name"]: s for s in receiver.spans()}
    assert spans["checkpoint"]["status"] == 2  # STATUS_CODE_ERROR
    assert "exception" in spans["checkpoint"]["events"]
    assert spans["tracelet.run"]["status"] == 2
    assert spans["tracelet.run"]["attributes"]["tracelet.run.status"] == "FAILED"
    assert InMemoryExporter.runs[exp.run_id].tags["tracelet.trace_id"] == exp.trace_id


def test_span_decorator_and_threads_hang_under_the_run(receiver: OTLPReceiver) -> None:
    import threading

    config = {"otlp": {"endpoint": receiver.grpc_endpoint}}
    exp = tracelet.start_logging(backend=["memory", "otlp"], config=config, settings=QUIET)

    @exp.span("evaluate", split="val", shape=(3, 4), obj=object)
    def evaluate(x: int) -> int:
        return x * 2

    with exp.span("epoch"):
        assert evaluate(2) == 4  # nested under the epoch
    worker = threading.Thread(target=evaluate, args=(1,))
    worker.start()
    worker.join()  # another thread: under the run span
    exp.end()
    with exp.span("after-end") as span:  # records nothing once the run has ended
        assert not span.is_recording()
    spans = receiver.spans()
    by_id = {s["span_id"]: s for s in spans}
    evals = [s for s in spans if s["name"] == "evaluate"]
    assert sorted(by_id[s["parent_span_id"]]["name"] for s in evals) == ["epoch", "tracelet.run"]
    assert evals[0]["attributes"]["shape"] == [3, 4]
    assert evals[0]["attributes"]["obj"] == str(object)
    assert "after-end" not in {s["name"] for s in spans}


def test_run_span_joins_the_callers_trace(receiver: OTLPReceiver) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    user_tracer = TracerProvider().get_tracer("pipeline")
    config = {"otlp": {"endpoint": receiver.grpc_endpoint}}
    with user_tracer.start_as_current_span("pipeline") as outer:
        exp = tracelet.start_logging(backend=["memory", "otlp"], config=config, settings=QUIET)
    exp.end()
    run = next(s for s in receiver.spans() if s["name"] == "tracelet.run")
    assert run["trace_id"] == f"{outer.get_span_context().trace_id:032x}"
    assert run["parent_span_id"] == f"{outer.get_span_context().span_id:016x}"


def test_mlflow_run_carries_the_trace_id_the_receiver_saw(
    receiver: OTLPReceiver, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    config = {"mlflow": {"tracking_uri": mlflow_uri}, "otlp": {"endpoint": receiver.grpc_endpoint}}
    exp = tracelet.start_logging(
        "e3", "p3", backend=["mlflow", "otlp"], config=config, settings=QUIET
    )
    _train(exp)
    report = exp.end()
    assert report.complete
    seen = {s["trace_id"] for s in receiver.spans()}
    assert seen == {exp.trace_id}
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("p3").experiment_id],
        filter_string=f"tags.`tracelet.run_id` = '{exp.run_id}'",
    )[0]
    assert run.data.tags["tracelet.trace_id"] in seen
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 100


def test_unreachable_endpoint_leaves_trackers_whole(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the SDK's own knob: seconds
    settings = QUIET.model_copy(update={"metrics_interval": 0.2})
    exp = tracelet.start_logging(
        backend=["mlflow", "otlp"], config={"tracking_uri": mlflow_uri}, settings=settings
    )
    with exp.span("epoch"):
        for i in range(5000):
            exp.log_metric("loss", 1 / (i + 1), iteration=i)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        report = exp.end()
    assert report.complete
    assert report.backends[0].delivered == 5000
    run_id = mlflow_run(mlflow_uri, exp.run_id).info.run_id
    history = MlflowClient(tracking_uri=mlflow_uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(5000))


@pytest.mark.slow
def test_100k_points_all_in_mlflow_and_bounded_otlp_series(
    receiver: OTLPReceiver, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    settings = QUIET.model_copy(update={"metrics_interval": 0.5})
    config = {"mlflow": {"tracking_uri": mlflow_uri}, "otlp": {"endpoint": receiver.grpc_endpoint}}
    exp = tracelet.start_logging(
        "big", "p4", backend=["mlflow", "otlp"], config=config, settings=settings
    )
    exp.log_params({"lr": 0.1})
    for step in range(50_000):
        exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
        exp.log_metric("train/acc", step / 50_000, iteration=step)
    report = exp.end()
    assert report.complete and report.points == 100_000

    run_id = mlflow_run(mlflow_uri, exp.run_id).info.run_id
    client = MlflowClient(tracking_uri=mlflow_uri)
    for name in ("train/loss", "train/acc"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(
            range(50_000)
        )

    # Every series the receiver ever saw, over every export of the run:
    # 2 metric gauges, tracelet.step, tracelet.points, tracelet.run.info,
    # 4 history instruments, 3 per-tracker instruments (1 tracker) = 12.
    series = receiver.series()
    names = sorted({name for name, _ in series})
    assert len(series) == 12, sorted(series)
    assert names == [
        "tracelet.export.delivered",
        "tracelet.export.failures",
        "tracelet.export.undelivered",
        "tracelet.history.backlog",
        "tracelet.history.journaled",
        "tracelet.history.waits",
        "tracelet.history.write_errors",
        "tracelet.points",
        "tracelet.run.info",
        "tracelet.step",
        "train/acc",
        "train/loss",
    ]
    latest = receiver.latest()
    assert latest["train/loss"] == [({}, 1 / 50_000)]
    assert latest["tracelet.step"] == [({}, 49_999)]
    assert latest["tracelet.points"] == [({}, 100_000)]
    assert latest["tracelet.export.delivered"] == [({"tracelet.backend": "mlflow"}, 100_000)]
    print(f"\n100k points: {len(receiver.of('metrics'))} OTLP exports, {len(series)} series")


# -- pure parts and configuration errors -----------------------------------------


def test_protocol_rules() -> None:
    assert protocol_for("metrics", None, {}) == "grpc"
    assert protocol_for("metrics", None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == (
        "http/protobuf"
    )
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    assert protocol_for("traces", None, env) == "grpc"
    assert protocol_for("metrics", None, env) == "http/protobuf"
    assert protocol_for("metrics", "grpc", env) == "grpc"
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/json'.*'grpc'"):
        protocol_for("metrics", None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_endpoint_and_timeout_rules() -> None:
    assert signal_endpoint("grpc", "http://c:4317", "metrics") == "http://c:4317"
    assert signal_endpoint("http/protobuf", "http://c:4318/", "traces") == "http://c:4318/v1/traces"
    assert signal_endpoint("http/protobuf", None, "traces") is None
    assert timeout_seconds("metrics", {}) == 10.0
    assert timeout_seconds("metrics", {"OTEL_EXPORTER_OTLP_TIMEOUT": "3"}) == 3.0
    env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1.5"}
    assert timeout_seconds("traces", env) == 1.5


def test_bad_protocol_or_option_fails_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="http/json"):
        tracelet.start_logging(backend=["memory", "otlp"], settings=QUIET)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    with pytest.raises(ConfigError, match="endpiont"):
        tracelet.start_logging(backend=["memory", "otlp"], config={"endpiont": "x"}, settings=QUIET)
    assert not (tmp_path / ".tracelet").exists()
    assert tracelet.get_active_experiment() is None


def test_headers_never_show_in_a_repr() -> None:
    options = OTLPOptions(headers={"authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(options)
    assert "s3cret" not in str(options)


def test_otlp_alone_runs_without_a_tracker(receiver: OTLPReceiver) -> None:
    exp = tracelet.start_logging(
        backend="otlp", config={"endpoint": receiver.grpc_endpoint}, settings=QUIET
    )
    exp.log_metric("loss", 0.25)
    report = exp.end()
    assert report.backends == [] and report.complete
    assert receiver.latest()["loss"] == [({}, 0.25)]


@pytest.fixture
def no_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An endpoint where nothing listens: a port held bound, never listening (refused)."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)  # the SDK's own timeouts: 10 s an export, with retries
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def test_no_collector_says_so_once_and_does_not_wait_on_retries_at_the_end(
    no_collector: str, mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    caplog.set_level(logging.WARNING)
    settings = QUIET.model_copy(update={"metrics_interval": 0.1})
    exp = tracelet.start_logging(
        backend=["mlflow", "otlp"],
        config={"mlflow": {"tracking_uri": mlflow_uri}, "otlp": {"endpoint": no_collector}},
        settings=settings,
    )
    otlp = exp.telemetry.backends["otlp"]
    assert otlp.flush_timeout_millis == 2000  # nothing has answered yet: no wait on retries
    with exp.span("epoch"):
        for i in range(3000):
            exp.log_metric("loss", 1 / (i + 1), iteration=i)
    for _ in range(600):  # bounded polling: the periodic reader's first export fails
        if otlp.collector.reported:
            break
        threading.Event().wait(0.05)
    assert otlp.collector.reported and not otlp.collector.answering
    # the end-of-run flush waits UNANSWERED_FLUSH_SECONDS, not the SDK's 10 s of retries
    assert otlp.flush_timeout_millis == 2000 < otlp._timeout_millis == 10_000
    report = exp.end()

    lines = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    port = no_collector.rsplit(":", 1)[1]
    assert lines == [
        (
            "tracelet.exporters.otlp",
            f"no OTLP collector answers at 127.0.0.1:{port}; telemetry for this run "
            "is dropped while none does (the trackers still get every point)",
        )
    ], lines
    assert report.complete and report.backends[0].delivered == 3000
    run_id = mlflow_run(mlflow_uri, exp.run_id).info.run_id
    history = MlflowClient(tracking_uri=mlflow_uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(3000))


def test_no_collector_details_stay_at_debug_for_who_asks(
    no_collector: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    exp = tracelet.start_logging(
        backend=["memory", "otlp"], config={"otlp": {"endpoint": no_collector}}, settings=QUIET
    )
    with exp.span("epoch"):
        exp.log_metric("loss", 1.0)
    exp.end()
    sdk = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter.otlp")]
    assert any("UNAVAILABLE" in r.getMessage() for r in sdk), sdk  # the SDK's own words...
    assert {r.levelname for r in sdk} == {"DEBUG"}  # ...at DEBUG only
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["tracelet.exporters.otlp"]


def test_no_collector_in_a_terminal_is_one_line(no_collector: str, tmp_path: Any) -> None:
    """What a user sees on stderr with no logging configured (Python's last-resort handler)."""
    import subprocess
    import sys

    script = (
        "import tracelet\n"
        "exp = tracelet.start_logging('run', 'p', backend=['memory', 'otlp'],\n"
        f"    config={{'otlp': {{'endpoint': {no_collector!r}}}}})\n"
        "with exp.span('epoch'):\n"
        "    exp.log_metric('loss', 1.0)\n"
        "exp.end()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_"))}
    env["TRACELET_TRACK_SYSTEM"] = "false"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"tracelet: no OTLP collector answers at {no_collector.split('//')[1]}; telemetry for "
        "this run is dropped while none does (the trackers still get every point)"
    ], proc.stderr
