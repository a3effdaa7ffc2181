"""The automatic framework hooks, without any framework: installed at start, gone at the end.

A stand-in ``SummaryWriter`` module (written to a temporary directory) takes
the place of torch's: the hooks patch it when it is imported during the run
or was imported before, record nothing outside a run, and leave no trace.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracelet
from tests._helpers import QUIET
from tracelet import TraceletSettings
from tracelet.integrations import _auto, _quiet
from tracelet.integrations import tensorboard as tb
from tracelet.testing import InMemoryExporter

WRITER = textwrap.dedent(
    """
    class SummaryWriter:
        def __init__(self):
            self.events = []
        def add_scalar(self, tag, scalar_value, global_step=None, walltime=None):
            self.events.append((tag, scalar_value, global_step))
        def add_scalars(self, main_tag, tag_scalar_dict, global_step=None, walltime=None):
            for k, v in tag_scalar_dict.items():
                self.events.append((main_tag + "_" + k, v, global_step))
        def add_hparams(self, hparam_dict, metric_dict, hparam_domain_discrete=None,
                        run_name=None, global_step=None):
            inner = SummaryWriter()  # as torch does: a second writer for the metrics
            for k, v in metric_dict.items():
                inner.add_scalar(k, v, global_step)
            self.events.extend(inner.events)
    """
)


@pytest.fixture
def fake_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module ``fake_tb_writer`` with a ``SummaryWriter``, watched like torch's."""
    name = "fake_tb_writer"
    (tmp_path / "fakepkgs").mkdir()
    (tmp_path / "fakepkgs" / f"{name}.py").write_text(WRITER)
    monkeypatch.syspath_prepend(str(tmp_path / "fakepkgs"))
    monkeypatch.setitem(tb.HOOKS, name, tb.patch_writer)
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    tracelet.stop_logging()
    sys.modules.pop(name, None)


def history(exp: tracelet.Experiment) -> list[tuple[str, int, float]]:
    return [(p.name, p.step, p.value) for p in InMemoryExporter.runs[exp.run_id].metrics]


def test_module_imported_during_the_run_is_captured(fake_writer: str) -> None:
    exp = tracelet.start_logging("auto", "t", backend="memory", settings=QUIET)
    module = __import__(fake_writer)
    w = module.SummaryWriter()
    w.add_scalar("loss", 0.5, 3)
    w.add_scalar("loss", 0.25)
    w.add_scalars("g", {"a": 1, "b": 2}, 7)
    w.add_hparams({"lr": 0.1}, {"hp/acc": 0.9}, global_step=9)
    exp.end()
    assert history(exp) == [
        ("loss", 3, 0.5),
        ("loss", 4, 0.25),
        ("g/a", 7, 1.0),
        ("g/b", 7, 2.0),
        ("hp/acc", 9, 0.9),
    ]
    assert InMemoryExporter.runs[exp.run_id].params == {"lr": 0.1}
    assert w.events == [
        ("loss", 0.5, 3),
        ("loss", 0.25, None),
        ("g_a", 1, 7),
        ("g_b", 2, 7),
        ("hp/acc", 0.9, 9),
    ]


def test_writer_created_before_the_run_is_captured_and_released(fake_writer: str) -> None:
    module = __import__(fake_writer)
    original = module.SummaryWriter.add_scalar
    w = module.SummaryWriter()
    w.add_scalar("before", 1.0, 0)
    exp = tracelet.start_logging("auto", "t", backend="memory", settings=QUIET)
    assert module.SummaryWriter.add_scalar is not original
    w.add_scalar("during", 2.0, 1)
    tracelet.stop_logging()
    assert module.SummaryWriter.add_scalar is original
    assert _auto._finder is None and not any(
        isinstance(f, _auto._PostImportFinder) for f in sys.meta_path
    )
    w.add_scalar("after", 3.0, 2)
    assert history(exp) == [("during", 1, 2.0)]
    assert [e[0] for e in w.events] == ["before", "during", "after"]


def test_track_tensorboard_off_patches_nothing(fake_writer: str) -> None:
    module = __import__(fake_writer)
    original = module.SummaryWriter.add_scalar
    tracelet.start_logging(
        "off",
        "t",
        backend="memory",
        settings=TraceletSettings(**{**QUIET.model_dump(), "track_tensorboard": False}),
    )
    assert module.SummaryWriter.add_scalar is original


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_TRACK_TENSORBOARD", "false")
    monkeypatch.setenv("TRACELET_TRACK_LIGHTNING", "0")
    s = TraceletSettings()
    assert (s.track_tensorboard, s.track_lightning, s.track_transformers) == (False, False, True)


def test_quiet_nests_per_thread() -> None:
    assert not _quiet.is_quiet()
    with _quiet.quiet():
        with _quiet.quiet():
            assert _quiet.is_quiet()
        assert _quiet.is_quiet()
    assert not _quiet.is_quiet()


def test_a_run_imports_no_framework() -> None:
    """start_logging and stop_logging import none of the frameworks they can hook."""
    code = textwrap.dedent(
        """
        import sys, tracelet
        from tracelet import TraceletSettings
        before = list(sys.meta_path)
        s = TraceletSettings(track_system=False, track_git=False, track_env=False)
        tracelet.start_logging("x", "y", backend="memory", settings=s)
        tracelet.stop_logging()
        heavy = {"torch", "lightning", "pytorch_lightning", "transformers", "tensorboardX",
                 "tensorboard", "accelerate", "keras"} & set(sys.modules)
        assert not heavy, heavy
        assert sys.meta_path == before
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_run_handle_joins_owns_and_never_ends_a_joined_run() -> None:
    from tracelet.integrations._runs import RunHandle

    joined = RunHandle()
    exp = tracelet.start_logging("owner", "t", backend="memory", settings=QUIET)
    assert joined.experiment() is exp and not joined.owns and joined.live
    joined.end()
    assert exp.active  # left to its owner
    exp.end()
    assert joined.experiment() is None and not joined.live  # ended, none active: nothing

    own = RunHandle(exp_name="own", backend="memory", settings=QUIET)
    mine = own.experiment()
    assert own.owns and mine.name == "own" and own.live
    own.end("FAILED")
    assert not mine.active and mine.report.status.value == "FAILED"
    assert own.experiment() is None

    alone = RunHandle()  # no run active at first use: starts one and owns it
    started = alone.experiment(backend="memory", settings=QUIET)
    assert alone.owns and started.active
    alone.end()
    assert not started.active


def test_params_changed_by_a_framework_keep_the_first_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tracelet.integrations._runs import log_params

    exp = tracelet.start_logging("p", "t", backend="memory", settings=QUIET)
    warned: set[str] = set()
    log_params(exp, {"lr": 0.1, "id2label": {0: "a", 1: "b"}}, warned)
    log_params(exp, {"lr": 0.2, "depth": 3}, warned)
    log_params(exp, {"lr": 0.3}, warned)
    assert exp.params == {"lr": 0.1, "id2label/0": "a", "id2label/1": "b", "depth": 3}
    assert warned == {"lr"}
    assert sum("keeps the first value" in r.message for r in caplog.records) == 1


def test_module_imported_during_the_run_keeps_its_own_loader(fake_writer: str) -> None:
    tracelet.start_logging("auto", "t", backend="memory", settings=QUIET)
    module = __import__(fake_writer)
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert module.__spec__.loader is module.__loader__


def test_a_value_tracelet_refuses_is_left_to_tensorboard(
    fake_writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    exp = tracelet.start_logging("auto", "t", backend="memory", settings=QUIET)
    w = __import__(fake_writer).SummaryWriter()
    w.add_scalar("bad", "not a number", 0)
    w.add_scalar("bad", "still not", 1)
    w.add_scalar("good", 1.0, 0)
    exp.end()
    assert history(exp) == [("good", 0, 1.0)]
    assert [e[0] for e in w.events] == ["bad", "bad", "good"]
    assert sum("did not record TensorBoard scalar 'bad'" in r.message for r in caplog.records) == 1
