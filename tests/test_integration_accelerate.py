"""Accelerate on the CPU: ``Accelerator(log_with=[TraceletTracker(...), "tensorboard"])``.

A small training loop logs through ``accelerator.log``; MLflow must hold
every point once (TensorBoard capture is on, and Accelerate's TensorBoard
tracker writes the same values: they reach tracelet through the tracker
only), the configuration as params, and the run must end with
``end_training()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._frameworks import event_scalars, quiet_settings, stored

pytestmark = pytest.mark.slow

STEPS = 12


@pytest.fixture(scope="module")
def training(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from tracelet.integrations.accelerate import TraceletTracker

    tmp = tmp_path_factory.mktemp("accelerate")
    uri = mlflow_store(tmp / "mlflow.db")
    tracker = TraceletTracker(
        exp_name="accelerate",
        project="integrations",
        backend="mlflow",
        config={"tracking_uri": uri},
        settings=quiet_settings(tmp),
    )
    accelerator = Accelerator(
        log_with=[tracker, "tensorboard"], project_dir=str(tmp / "tb"), cpu=True
    )
    accelerator.init_trackers("integrations", config={"lr": 0.1, "opt": "sgd"})
    # TensorBoard's hparams take no nested dict: the tracker's own call takes one
    tracker.store_init_configuration({"model": {"depth": 2}})
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    x, y = torch.randn(32, 3), torch.randn(32)
    logged = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        accelerator.backward(loss)
        opt.step()
        values = {"train/loss": loss.item(), "grad": {"norm": 1.0 + step}, "note": "text"}
        accelerator.log(values, step=step)
        logged.append(loss.item())
    exp = tracker.tracker
    accelerator.end_training()
    try:
        return {
            "exp": exp,
            "logged": logged,
            "run": stored(exp.run_dir),
            "tb": event_scalars(tmp / "tb"),
        }
    finally:
        tracelet.stop_logging()


def test_every_logged_value_reaches_mlflow_once(training: dict[str, Any]) -> None:
    run, exp = training["run"], training["exp"]
    assert exp.report.complete and exp.report.points == 2 * STEPS
    assert run.series["train/loss"] == [(i, v) for i, v in enumerate(training["logged"])]
    assert run.series["grad/norm"] == [(i, 1.0 + i) for i in range(STEPS)]
    assert set(run.series) == {"train/loss", "grad/norm"}


def test_config_as_flattened_params(training: dict[str, Any]) -> None:
    assert training["run"].params == {"lr": "0.1", "model/depth": "2", "opt": "sgd"}


def test_end_training_ends_the_run(training: dict[str, Any]) -> None:
    assert training["run"].status == "FINISHED" and not training["exp"].active


def test_tensorboard_tracker_still_writes(training: dict[str, Any]) -> None:
    tb = {tag: pts for (_, tag), pts in training["tb"].items()}
    assert len(tb["train/loss"]) == STEPS
