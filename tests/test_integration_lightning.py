"""Lightning on the CPU: TraceletLogger in its three ways of use, against MLFlowLogger.

One small regression model is trained three times (same seed, same data):

- own run: ``TraceletLogger(exp_name=..., backend=[mlflow, wandb, clearml])``
  next to Lightning's ``MLFlowLogger`` (the reference) and a ``TensorBoardLogger``;
- joined run: ``TraceletLogger()`` inside ``tracelet.start_logging``, with a
  ``TensorBoardLogger``;
- automatic: a plain ``Trainer()`` (its default ``TensorBoardLogger``) built
  inside ``tracelet.start_logging``, with ``lightning.pytorch`` and with the
  older ``pytorch_lightning``.

TensorBoard capture is on in all three: each value must still reach tracelet
once. What MLflow, W&B and ClearML stored is read back and compared with
what ``MLFlowLogger`` recorded of the same training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._frameworks import close, mlflow_process_state, points, quiet_settings, stored
from tests._trackers import Stored, wandb_written
from tracelet.testing import offline_env

pytestmark = pytest.mark.slow

EPOCHS, BATCHES, EVERY = 3, 8, 2


def lightning_package(name: str) -> Any:
    """``lightning.pytorch``, or the older package of the same code, ``pytorch_lightning``."""
    import importlib

    return importlib.import_module(name)


def make_module(package: str = "lightning.pytorch") -> Any:
    import torch

    pl = lightning_package(package)

    class Regressor(pl.LightningModule):
        def __init__(self, lr: float = 0.05, hidden: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
            )

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
            self.log("train/loss", loss)
            self.log("train/loss_epoch_mean", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Regressor()


def data() -> tuple[Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES * 4, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(BATCHES * 4, generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=16)


def fit(root: Path, logger: Any, package: str = "lightning.pytorch") -> Any:
    pl = lightning_package(package)
    pl.seed_everything(0, verbose=False)
    kwargs = {} if logger is None else {"logger": logger}
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_epochs=EPOCHS,
        log_every_n_steps=EVERY,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    train, val = data()
    trainer.fit(make_module(package), train, val)
    return trainer


@pytest.fixture(scope="module")
def trainings(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    from tracelet.integrations.lightning import TraceletLogger

    tmp = tmp_path_factory.mktemp("lightning")
    out: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp, mlflow_process_state():
        for key, value in offline_env(tmp).items():
            mp.setenv(key, value)
        for key in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
            mp.delenv(key, raising=False)
        mp.chdir(tmp)
        settings = quiet_settings(tmp)

        # 1. own run, next to the reference MLFlowLogger and a TensorBoardLogger
        ref_uri = mlflow_store(tmp / "reference.db")
        uri = mlflow_store(tmp / "own.db")
        reference = MLFlowLogger(experiment_name="reference", tracking_uri=ref_uri)
        own = TraceletLogger(
            exp_name="own",
            project="lightning",
            backend=["mlflow", "wandb", "clearml"],
            config={"mlflow": {"tracking_uri": uri}},
            settings=settings,
        )
        fit(tmp / "own", [TensorBoardLogger(str(tmp / "own")), reference, own])
        exp = own.experiment
        out["own_active_after_fit"] = exp.active
        out["own"] = {b: stored(exp.run_dir, b) for b in ("mlflow", "clearml")}
        wandb_written()
        out["own"]["wandb"] = stored(exp.run_dir, "wandb")
        out["own_report"] = exp.report
        out["reference"] = read_reference(ref_uri, reference.run_id)

        # 2. joined run
        uri = mlflow_store(tmp / "joined.db")
        exp = tracelet.start_logging(
            "joined", "lightning", backend="mlflow", config={"tracking_uri": uri}, settings=settings
        )
        fit(tmp / "joined", [TensorBoardLogger(str(tmp / "joined")), TraceletLogger()])
        out["joined_active_after_fit"] = exp.active
        exp.log_metric("after/fit", 1.0, 0)  # the owner still logs into its run
        out["joined_report"] = exp.end()
        out["joined"] = stored(exp.run_dir)

        # 3. automatic: a plain Trainer, its default TensorBoardLogger
        uri = mlflow_store(tmp / "auto.db")
        exp = tracelet.start_logging(
            "auto", "lightning", backend="mlflow", config={"tracking_uri": uri}, settings=settings
        )
        trainer = fit(tmp / "auto", None)
        out["auto_loggers"] = [type(lg).__name__ for lg in trainer.loggers]
        out["auto_report"] = exp.end()
        out["auto"] = stored(exp.run_dir)
        out["auto_tb_files"] = list((tmp / "auto").rglob("events.out.tfevents.*"))
        # 4. automatic, with the older package name
        uri = mlflow_store(tmp / "pl.db")
        exp = tracelet.start_logging(
            "pl", "lightning", backend="mlflow", config={"tracking_uri": uri}, settings=settings
        )
        trainer = fit(tmp / "pl", None, package="pytorch_lightning")
        out["pl_loggers"] = [type(lg).__name__ for lg in trainer.loggers]
        out["pl_report"] = exp.end()
        out["pl"] = stored(exp.run_dir)
        # after the run: a Trainer gets no TraceletLogger
        out["after_loggers"] = [type(lg).__name__ for lg in fit(tmp / "after", None).loggers]
    return out


def read_reference(uri: str, run_id: str) -> Stored:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    series = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in run.data.metrics
    }
    return Stored(name=run.info.run_name, series=series, params=dict(run.data.params))


def unique(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """MLFlowLogger records ``epoch`` again at a step where several calls log: once each."""
    return {k: points(set(v)) for k, v in series.items()}


def test_reference_logs_what_is_expected(trainings: dict[str, Any]) -> None:
    ref = trainings["reference"].series
    steps = EPOCHS * BATCHES
    assert len(ref["train/loss"]) == steps // EVERY
    assert len(ref["val/loss"]) == EPOCHS and len(ref["train/loss_epoch_mean"]) == EPOCHS


@pytest.mark.parametrize("mode", ["own", "joined", "auto", "pl"])
def test_mlflow_holds_what_mlflowlogger_recorded_once(trainings: dict[str, Any], mode: str) -> None:
    ref = unique(trainings["reference"].series)
    run = trainings[mode]["mlflow"] if mode == "own" else trainings[mode]
    report = trainings[f"{mode}_report"]
    assert report.complete, report
    series = {k: v for k, v in run.series.items() if k != "after/fit"}
    assert set(series) == set(ref)
    for name, pts in series.items():
        assert len(pts) == len(set(pts)), f"{mode}: {name} recorded twice at a step"
        assert close(pts, ref[name]), (mode, name)
    assert run.params == trainings["reference"].params == {"lr": "0.05", "hidden": "4"}


@pytest.mark.parametrize("backend", ["wandb", "clearml"])
def test_own_run_reaches_wandb_and_clearml(trainings: dict[str, Any], backend: str) -> None:
    ref = unique(trainings["reference"].series)
    run = trainings["own"][backend]
    assert set(run.series) == set(ref)
    for name, pts in run.series.items():
        assert close(pts, ref[name]), (backend, name)
    assert run.params == {"lr": "0.05", "hidden": "4"}
    assert run.status == "FINISHED"


def test_own_run_ends_in_finalize_joined_run_does_not(trainings: dict[str, Any]) -> None:
    assert trainings["own_active_after_fit"] is False
    assert trainings["own"]["mlflow"].status == "FINISHED"
    assert trainings["joined_active_after_fit"] is True
    assert trainings["joined"].series["after/fit"] == [(0, 1.0)]


def test_automatic_logger_added_only_during_a_run(trainings: dict[str, Any]) -> None:
    assert trainings["auto_loggers"] == ["TensorBoardLogger", "TraceletLogger"]
    assert trainings["auto_tb_files"]  # TensorBoard still wrote its event files
    assert trainings["after_loggers"] == ["TensorBoardLogger"]
    assert trainings["pl_loggers"] == ["TensorBoardLogger", "TraceletLogger"]


def test_own_run_of_a_failed_training_ends_failed(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from tracelet.integrations.lightning import TraceletLogger
    from tracelet.testing import InMemoryExporter

    class Failing(type(make_module())):  # type: ignore[misc]
        def training_step(self, batch: Any, index: int) -> Any:
            if self.global_step == 3:
                raise RuntimeError("diverged")
            return super().training_step(batch, index)

    logger = TraceletLogger(exp_name="fails", backend="memory", settings=quiet_settings(tmp_path))
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        log_every_n_steps=1,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    train, _ = data()
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.fit(Failing(), train)
    exp = logger.experiment
    assert exp.report.status.value == "FAILED" and exp.report.complete
    run = InMemoryExporter.runs[exp.run_id]
    assert [p.step for p in run.metrics if p.name == "train/loss"] == [0, 1, 2]


def test_only_rank_zero_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from tests._helpers import QUIET
    from tracelet.integrations.lightning import TraceletLogger

    exp = tracelet.start_logging("ranks", "t", backend="memory", settings=QUIET)
    logger = TraceletLogger()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, 0)
    assert exp.params == {} and exp.step is None
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"loss": 1.0, "epoch": 0}, 0)
    logger.log_metrics({"val": 2.0, "epoch": 0}, 0)  # epoch again at this step: once
    assert exp.step == 0 and exp._run.points == 3
