"""The ClearML exporter through `tracelet.start_logging`, read back from the offline session."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._helpers import IN_PROCESS, QUIET
from tests._trackers import starts_seen, state_of
from tracelet import TraceletSettings
from tracelet.exporters._clearml_translate import FLOAT32_MAX
from tracelet.testing import ClearMLSession, read_clearml_session

pytestmark = pytest.mark.usefixtures("offline_trackers")


def session(exp: tracelet.Experiment) -> ClearMLSession:
    return read_clearml_session(state_of(exp.run_dir, "clearml")["offline_folder"])


def test_project_name_type_tags_and_params(tmp_path: Path) -> None:
    exp = tracelet.start_logging(
        exp_name="resnet-baseline",
        project="vision",
        backend="clearml",
        config={"task_type": "testing", "tags": ["pytorch"]},
        settings=QUIET,  # no system samples: the scalars compared are the test's own
    )
    exp.log_params({"lr": 0.1, "opt": {"name": "adam"}, "amp": False})
    exp.set_tags({"stage": "warmup"})
    exp.set_tags({"stage": "main"})
    exp.log_metric("train/loss", 0.5, iteration=0)
    exp.log_metric("loss", 0.25, iteration=0)
    tracelet.stop_logging()
    s = session(exp)
    state = state_of(exp.run_dir, "clearml")
    assert Path(state["offline_folder"]).is_relative_to(tmp_path / "clearml" / "offline")
    assert s.name == "resnet-baseline"
    assert s.task["project_name"] == "vision"
    assert s.task["type"] == "testing"
    assert {"pytorch", "stage:main"} <= set(s.tags) and "stage:warmup" not in s.tags
    assert s.params == {"General/lr": "0.1", "General/opt/name": "adam", "General/amp": "False"}
    assert s.properties == {"tracelet_run_id": exp.run_id, "tracelet_status": "FINISHED"}
    assert s.scalars == {("train", "loss"): [(0, 0.5)], ("loss", "loss"): [(0, 0.25)]}
    assert Path(state["offline_folder"] + ".zip").exists()  # what clearml-task imports


def test_two_metrics_never_share_a_series(caplog: pytest.LogCaptureFixture) -> None:
    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml", settings=QUIET)
    exp.log_metric("loss", 1.0, iteration=0)
    exp.log_metric("loss/loss", 2.0, iteration=0)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        tracelet.stop_logging()
    assert session(exp).scalars == {("loss", "loss"): [(0, 1.0)], ("loss", "loss_2"): [(0, 2.0)]}
    assert "stored as series 'loss_2'" in caplog.text


def test_params_section_option() -> None:
    exp = tracelet.start_logging(
        exp_name="n", project="p", backend="clearml", config={"params_section": "Args"}
    )
    exp.log_params({"epochs": 10})
    tracelet.stop_logging()
    assert session(exp).params == {"Args/epochs": "10"}


def test_nan_is_left_out_and_said_so_and_inf_keeps_its_sign(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml")
    for step, value in enumerate([1.0, math.nan, math.inf, -math.inf, math.nan]):
        exp.log_metric("loss", value, iteration=step)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        tracelet.stop_logging()
    s = session(exp)
    assert s.scalars[("loss", "loss")] == [(0, 1.0), (2, FLOAT32_MAX), (3, -FLOAT32_MAX)]
    warnings = [r for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warnings) == 1 and "'loss' is NaN at step 1" in warnings[0].getMessage()
    assert any("'loss' is NaN at step 1" in line for line in s.console)


def test_nan_value_and_inf_value_options() -> None:
    exp = tracelet.start_logging(
        exp_name="n",
        project="p",
        backend="clearml",
        config={"clearml": {"nan_value": -1.0, "inf_value": 1e9}},
    )
    for step, value in enumerate([math.nan, math.inf, -math.inf]):
        exp.log_metric("loss", value, iteration=step)
    tracelet.stop_logging()
    assert session(exp).scalars[("loss", "loss")] == [(0, -1.0), (1, 1e9), (2, -1e9)]


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_final_status_is_recorded(status: str) -> None:
    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml")
    exp.log_metric("loss", 1.0)
    exp.end(status)
    assert session(exp).properties["tracelet_status"] == status


def test_reports_from_a_thread_not_a_forked_process() -> None:
    import psutil
    from clearml import Task

    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml", settings=IN_PROCESS)
    exp.log_metric("loss", 1.0)
    exp.end()  # a stop drains the delivery thread, so Task.init has run
    assert Task._report_subprocess_enabled is False
    me = psutil.Process()
    # A fork has this process's command line (a server or delivery agent that another
    # test started is a child too, with a command line of its own).
    forks = [c for c in me.children() if c.cmdline() == me.cmdline()]
    assert forks == []


def test_argparse_arguments_are_not_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    """ClearML records parsed arguments as ``Args/*`` when its argparse hook is on."""
    with starts_seen(monkeypatch) as started:
        exp = tracelet.start_logging(
            exp_name="n", project="p", backend="clearml", settings=IN_PROCESS
        )
        assert started.acquire(timeout=60)  # the task is open now
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    assert parser.parse_args(["--epochs", "5"]).epochs == 5
    exp.end()
    assert not any(key.startswith("Args/") for key in session(exp).params)


def test_task_init_gets_tracelets_defaults_and_the_users_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spy on Task.init (it calls through): what ClearML is asked to switch on."""
    from clearml import Task

    seen: dict[str, Any] = {}
    real_init = Task.init.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_init(cls, *args, **kwargs)

    monkeypatch.setattr(Task, "init", classmethod(spy))
    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml", settings=IN_PROCESS)
    exp.end()
    assert seen["auto_connect_frameworks"]["detect_repository"] is False
    assert not any(v for k, v in seen["auto_connect_frameworks"].items())
    assert seen["auto_resource_monitoring"] is False
    assert seen["auto_connect_streams"] is False
    assert seen["auto_connect_arg_parser"] is False
    assert seen["reuse_last_task_id"] is False

    seen.clear()
    exp = tracelet.start_logging(
        exp_name="n2",
        project="p",
        backend="clearml",
        settings=IN_PROCESS,
        config={"auto_connect_frameworks": {"matplotlib": True}, "detect_repository": False},
    )
    exp.end()
    assert seen["auto_connect_frameworks"] == {"matplotlib": True, "detect_repository": False}


def test_a_task_the_code_opened_itself_gets_the_points_and_stays_open() -> None:
    from clearml import Task

    own = Task.init(
        project_name="mine",
        task_name="own",
        reuse_last_task_id=False,
        auto_connect_frameworks={"detect_repository": False},
        auto_connect_streams=False,
        auto_resource_monitoring=False,
        auto_connect_arg_parser=False,
    )
    try:
        exp = tracelet.start_logging(exp_name="tracelet", project="p", backend="clearml")
        exp.log_metric("loss", 1.0, iteration=3)
        exp.end()
        assert Task.current_task() is own
        assert state_of(exp.run_dir, "clearml")["task_id"] == own.id
    finally:
        own.close()
    s = read_clearml_session(own.get_offline_mode_folder())
    assert s.scalars[("loss", "loss")] == [(3, 1.0)]


def test_an_explicit_report_use_subprocess_in_clearml_conf_is_respected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from clearml import config as clearml_config

    from tracelet.exporters.clearml import _report_from_threads

    class FakeTask:
        _report_subprocess_enabled = "ClearML's default"

    real_get = clearml_config.config.get

    def get(key: str, default: Any = None) -> Any:
        if key == "development.report_use_subprocess":
            return True  # as if the user's clearml.conf said so
        return real_get(key, default)

    monkeypatch.setattr(clearml_config.config, "get", get)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        _report_from_threads(FakeTask)
    assert FakeTask._report_subprocess_enabled == "ClearML's default"
    assert "report_use_subprocess=true" in caplog.text


def test_no_clearml_thread_is_left_behind() -> None:
    import threading

    before = set(threading.enumerate())
    exp = tracelet.start_logging(exp_name="n", project="p", backend="clearml")
    exp.log_metric("loss", 1.0)
    exp.end()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def test_a_process_started_after_the_run_gets_a_real_task(tmp_path: Path) -> None:
    """ClearML leaves CLEARML_PROC_MASTER_ID behind; a child inheriting it gets a stub task."""
    import os
    import subprocess
    import sys

    exp = tracelet.start_logging(exp_name="parent", project="p", backend="clearml")
    exp.end()
    assert "CLEARML_PROC_MASTER_ID" not in os.environ
    child = (
        "import tracelet; exp = tracelet.start_logging(exp_name='child', project='p', "
        "backend='clearml', settings=tracelet.TraceletSettings(close_timeout=20)); "
        "exp.log_metric('loss', 1.0); r = exp.end(); assert r.complete, r"
    )
    subprocess.run([sys.executable, "-c", child], cwd=tmp_path, check=True, timeout=120)


def test_a_stub_task_is_an_error_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARML_PROC_MASTER_ID", "1:")  # as inherited from a ClearML parent
    exp = tracelet.start_logging(
        exp_name="n", project="p", backend="clearml", settings=TraceletSettings(close_timeout=1)
    )
    exp.log_metric("loss", 1.0)
    (report,) = exp.end().backends
    assert not report.closed
    assert "CLEARML_PROC_MASTER_ID='1:'" in (report.error or "")


def _points(n: int) -> list[Any]:
    from tracelet.export import MetricPoint

    return [MetricPoint("loss", float(step), step, 10**18 + step) for step in range(n)]


def test_an_exit_caught_before_the_task_opened_costs_it_no_points() -> None:
    """ClearML's exit hook outlives a task; an exit caught after one must not end the next.

    The first ``Task.init`` replaces ``sys.exit`` for the whole process, and the
    hook keeps the last exit code. A ``sys.exit(1)`` caught later (argparse,
    click, a test) made the next task's ``close()`` take ClearML's failed path:
    it dropped the events its reporter had not written yet.
    """
    from tracelet.export import Batch, RunInfo
    from tracelet.exporters.clearml import ClearMLExporter

    first = ClearMLExporter()
    first.start(RunInfo(run_id="first0001", project="p", name="first"))
    first.shutdown()
    with pytest.raises(SystemExit):
        sys.exit(1)
    exporter = ClearMLExporter()
    state = exporter.start(RunInfo(run_id="second001", project="p", name="second"))
    exporter.export(Batch(metrics=_points(200)))
    exporter.shutdown()  # no force_flush first: shutdown alone stores what was exported
    stored = read_clearml_session(state["offline_folder"]).scalars[("loss", "loss")]
    assert stored == [(step, float(step)) for step in range(200)]


def test_a_task_ended_while_sys_exit_1_unwinds_keeps_its_last_points() -> None:
    """The run ends FAILED by ``sys.exit(1)``: ClearML's hook saw it, the points still land."""
    from tracelet.export import Batch, RunInfo, RunStatus
    from tracelet.exporters.clearml import ClearMLExporter

    exporter = ClearMLExporter()
    state = exporter.start(RunInfo(run_id="exiting01", project="p", name="exiting"))
    exporter.export(Batch(metrics=_points(200)))
    with pytest.raises(SystemExit):
        try:
            sys.exit(1)
        finally:  # tracelet's `with` ends the run as the exit unwinds
            exporter.shutdown(status=RunStatus.FAILED)
    session = read_clearml_session(state["offline_folder"])
    assert session.scalars[("loss", "loss")] == [(step, float(step)) for step in range(200)]
    assert session.properties["tracelet_status"] == "FAILED"
