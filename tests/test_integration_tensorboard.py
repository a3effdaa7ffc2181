"""TensorBoard capture on a real training loop: what MLflow got equals the event files.

One training (a linear model on synthetic data, torch on the CPU) writes with
``torch.utils.tensorboard.SummaryWriter`` (created before the run) and with
``tensorboardX.SummaryWriter``; every scalar TensorBoard wrote is read back
from its event files with ``EventAccumulator`` and compared with what tracelet
delivered to a real MLflow store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._frameworks import close, event_scalars, quiet_settings, stored
from tests._trackers import Stored

pytestmark = pytest.mark.slow

STEPS = 40


@pytest.fixture(scope="module")
def training(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    import tensorboardX
    import torch
    from torch.utils.tensorboard import SummaryWriter

    tmp = tmp_path_factory.mktemp("tb")
    uri = mlflow_store(tmp / "mlflow.db")
    early = SummaryWriter(str(tmp / "torch"))  # created before the run: captured too
    early.add_scalar("before/run", 1.0, 0)  # no run yet: TensorBoard only
    exp = tracelet.start_logging(
        exp_name="tb",
        project="integrations",
        backend="mlflow",
        config={"tracking_uri": uri},
        settings=quiet_settings(tmp),
    )
    late = tensorboardX.SummaryWriter(str(tmp / "tbx"))
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        early.add_scalar("train/loss", loss.detach(), step)  # a 0-d tensor
        early.add_scalar("lr", opt.param_groups[0]["lr"])  # no step
        early.add_scalars(
            "weights", {"w0": model.weight[0, 0].item(), "b": model.bias.item()}, step
        )
        late.add_scalar("tbx/loss", loss.item(), step)
        if step == 7:
            early.add_scalar("train/diverged", math.nan, step)
    early.add_hparams({"lr": 0.1, "features": 3}, {"hparam/final_loss": loss.item()})
    late.add_hparams({"optimizer": "sgd"}, {"hparam/tbx_loss": loss.item()}, global_step=STEPS)
    early.flush()
    late.flush()
    report = exp.end()
    early.add_scalar("after/run", 1.0, 0)  # the run ended: TensorBoard only
    early.close()
    late.close()
    return {
        "tmp": tmp,
        "report": report,
        "run": stored(exp.run_dir),
        "torch": event_scalars(tmp / "torch"),
        "tbx": event_scalars(tmp / "tbx"),
    }


def test_every_scalar_reaches_mlflow_once(training: dict[str, Any]) -> None:
    report, run = training["report"], training["run"]
    assert report.complete, report
    tb = {**training["torch"], **{k: v for k, v in training["tbx"].items()}}
    expected: dict[str, list[tuple[int, float]]] = {}
    for (sub, tag), pts in tb.items():
        if tag in ("before/run", "after/run"):
            continue
        if sub.startswith("weights_"):  # add_scalars: one sub-directory per key
            expected.setdefault(f"{tag}/{sub[len('weights_') :]}", []).extend(pts)
        else:
            expected.setdefault(tag, []).extend(pts)
    assert "lr" in expected and "train/loss" in expected
    lr = expected.pop("lr")  # TensorBoard writes no step as 0; tracelet continues the metric
    assert {s for s, _ in lr} == {0}
    assert close(run.series["lr"], [(s, v) for s, (_, v) in enumerate(lr)])
    hp = {k: expected.pop(k) for k in ("hparam/final_loss", "hparam/tbx_loss")}
    assert close(run.series["hparam/final_loss"], [(0, hp["hparam/final_loss"][0][1])])
    assert close(run.series["hparam/tbx_loss"], hp["hparam/tbx_loss"])  # at step STEPS
    for name, pts in expected.items():
        assert close(run.series[name], pts), name
    assert set(run.series) == {*expected, "lr", *hp}
    assert sum(map(len, run.series.values())) == report.points == 5 * STEPS + 3


def test_hparams_are_params(training: dict[str, Any]) -> None:
    run: Stored = training["run"]
    assert run.params == {"lr": "0.1", "features": "3", "optimizer": "sgd"}


def test_event_files_written_as_without_tracelet(training: dict[str, Any]) -> None:
    tb = training["torch"]
    assert len(tb[(".", "train/loss")]) == STEPS
    assert tb[(".", "before/run")] == [(0, 1.0)] and tb[(".", "after/run")] == [(0, 1.0)]
    assert math.isnan(tb[(".", "train/diverged")][0][1])


def test_patch_removed_at_the_end(training: dict[str, Any]) -> None:
    import tensorboardX.writer
    import torch.utils.tensorboard.writer as tw

    for cls in (tw.SummaryWriter, tensorboardX.writer.SummaryWriter):
        for name in ("add_scalar", "add_scalars", "add_hparams"):
            assert getattr(cls, name).__qualname__ == f"{cls.__name__}.{name}"


def test_summarywriter_imported_during_the_run_is_captured(tmp_path: Path) -> None:
    """A fresh process: torch's SummaryWriter is first imported after start_logging."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys
        import tracelet
        from tracelet import TraceletSettings
        from tracelet.testing import InMemoryExporter

        settings = TraceletSettings(track_system=False, track_git=False, track_env=False)
        exp = tracelet.start_logging("late", "t", backend="memory", settings=settings)
        assert "torch" not in sys.modules
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter({str(tmp_path / "tb")!r})
        for step in range(5):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.close()
        exp.end()
        run = InMemoryExporter.runs[exp.run_id]
        print(sorted((p.step, p.value) for p in run.metrics))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str([(s, 1.0 / (s + 1)) for s in range(5)])
