"""Hugging Face Trainer on the CPU (a 2-layer BERT built from its config): TraceletCallback.

Two trainings of the same model (same seed, same data):

- explicit: ``callbacks=[TraceletCallback(exp_name=..., backend=[mlflow, wandb, clearml])]``
  next to transformers' own ``MLflowCallback`` (the reference); then
  ``evaluate()`` after ``train()``;
- automatic: ``report_to=["tracelet", "tensorboard"]`` inside ``start_logging``,
  TensorBoard capture on: each value reaches tracelet once.

What MLflow, W&B and ClearML stored is read back and compared with what
``MLflowCallback`` recorded: the same steps, keys renamed as W&B's callback does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._frameworks import close, mlflow_process_state, points, quiet_settings, stored
from tests._trackers import Stored, wandb_written
from tracelet.testing import offline_env

pytestmark = pytest.mark.slow

SAMPLES, BATCH, EPOCHS, EVERY = 24, 4, 2, 2


def build(tmp: Path, name: str, report_to: list[str], callbacks: list[Any]) -> Any:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (SAMPLES, 8), generator=g)
    labels = (ids[:, 0] % 2).long()
    data = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": labels[i],
        }
        for i in range(SAMPLES)
    ]
    args = TrainingArguments(
        output_dir=str(tmp / name),
        run_name=name,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=8,
        num_train_epochs=EPOCHS,
        logging_steps=EVERY,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-3,
    )
    return Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data[:8], callbacks=callbacks
    )


def read_experiment(uri: str, name: str) -> Stored:
    """Every run of MLflow experiment `name`, merged (MLflowCallback opens one per call)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    out = Stored(name=name)
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        for key in run.data.metrics:
            out.series.setdefault(key, []).extend(
                (m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)
            )
        out.params = out.params or dict(run.data.params)
        out.tags.add(run.info.run_id)
    return out


@pytest.fixture(scope="module")
def trainings(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hf")
    out: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in offline_env(tmp).items():
            mp.setenv(key, value)
        for key in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
            mp.delenv(key, raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        ref_uri = mlflow_store(tmp / "reference.db")
        mp.setenv("MLFLOW_TRACKING_URI", ref_uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "reference")
        for key in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):  # MLflowCallback sets them
            mp.setenv(key, "")  # so that leaving the context removes them again
            mp.delenv(key)
        mp.chdir(tmp)
        with mlflow_process_state():
            import mlflow

            mlflow.set_tracking_uri(ref_uri)  # MLflowCallback's store, whatever ran before
            try:
                train_both(tmp, out, ref_uri, mlflow_store)
            finally:  # a failed training leaves no run to end after the environment is restored
                tracelet.stop_logging()
    return out


def train_both(
    tmp: Path, out: dict[str, Any], ref_uri: str, mlflow_store: Callable[[Path], str]
) -> None:
    from transformers.integrations import MLflowCallback, integration_utils

    from tracelet.integrations.transformers import TraceletCallback

    settings = quiet_settings(tmp)
    # 1. explicit callback, its own run; then evaluate() after train()
    uri = mlflow_store(tmp / "explicit.db")
    callback = TraceletCallback(
        project="hf",
        backend=["mlflow", "wandb", "clearml"],
        config={"mlflow": {"tracking_uri": uri}},
        settings=settings,
    )
    trainer = build(tmp, "explicit", [], [MLflowCallback, callback])
    trainer.train()
    trainer.evaluate()
    exp = callback.experiment
    out["explicit_global_step"] = trainer.state.global_step
    out["explicit_active_after_evaluate"] = exp.active
    tracelet.stop_logging()  # the run the callback started stays open until then
    out["explicit_report"] = exp.report
    out["explicit"] = {b: stored(exp.run_dir, b) for b in ("mlflow", "clearml")}
    wandb_written()
    out["explicit"]["wandb"] = stored(exp.run_dir, "wandb")
    out["explicit_runs"] = len(read_experiment(uri, "hf").tags)
    out["reference"] = read_experiment(ref_uri, "reference")

    # 2. automatic: report_to="tracelet" during a run, beside TensorBoard
    os.environ.pop("MLFLOW_TRACKING_URI")  # restored by the MonkeyPatch context
    uri = mlflow_store(tmp / "auto.db")
    exp = tracelet.start_logging(
        "auto", "hf", backend="mlflow", config={"tracking_uri": uri}, settings=settings
    )
    trainer = build(tmp, "auto", ["tracelet", "tensorboard"], [])
    out["auto_callbacks"] = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    trainer.train()
    out["auto_active_after_train"] = exp.active
    out["auto_report"] = exp.end()
    out["auto"] = stored(exp.run_dir)
    out["auto_tb_files"] = list((tmp / "auto").rglob("events.out.tfevents.*"))
    out["registered_after_run"] = "tracelet" in integration_utils.INTEGRATION_TO_CALLBACK


def renamed(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """MLflowCallback's keys as W&B's callback names them; a point once per step."""
    from tracelet.integrations.transformers import rename

    out: dict[str, list[tuple[int, float]]] = {}
    for key, pts in series.items():
        (new,) = rename({key: 0.0})
        out[new] = points(set(pts))
    return out


def test_explicit_callback_matches_mlflowcallback(trainings: dict[str, Any]) -> None:
    ref = renamed(trainings["reference"].series)
    run = trainings["explicit"]["mlflow"]
    assert trainings["explicit_report"].complete
    assert "train/loss" in ref and "eval/loss" in ref and "train_runtime" in ref
    assert set(run.series) == set(ref)
    for name, pts in run.series.items():
        assert len(pts) == len(set(pts)), name
        assert close(pts, ref[name]), name
    steps = trainings["explicit_global_step"]
    assert [s for s, _ in run.series["train/loss"]] == list(range(EVERY, steps + 1, EVERY))


def test_params_are_training_arguments_and_model_config(trainings: dict[str, Any]) -> None:
    params = trainings["explicit"]["mlflow"].params
    ref = trainings["reference"].params
    assert params["learning_rate"] == "0.001" and params["num_hidden_layers"] == "2"
    assert params["run_name"] == "explicit"
    assert params["hub_token"] == "***"  # masked by tracelet, as by transformers
    same = {k for k, v in ref.items() if not v.startswith("{") and k in params} - {"hub_token"}
    assert len(same) > 100
    assert {k: params[k] for k in same} == {k: ref[k] for k in same}


def test_evaluate_after_train_opens_no_second_run(trainings: dict[str, Any]) -> None:
    assert trainings["explicit_runs"] == 1
    assert trainings["explicit_active_after_evaluate"] is True
    eval_steps = [s for s, _ in trainings["explicit"]["mlflow"].series["eval/loss"]]
    assert eval_steps == sorted(set(eval_steps)) and len(eval_steps) == EPOCHS  # last one merged


@pytest.mark.parametrize("backend", ["wandb", "clearml"])
def test_explicit_run_reaches_wandb_and_clearml(trainings: dict[str, Any], backend: str) -> None:
    mlflow = trainings["explicit"]["mlflow"]
    run = trainings["explicit"][backend]
    assert set(run.series) == set(mlflow.series)
    for name, pts in run.series.items():
        assert close(pts, mlflow.series[name]), (backend, name)
    assert run.params["learning_rate"] == "0.001"


def test_report_to_tracelet_during_a_run_records_once(trainings: dict[str, Any]) -> None:
    assert "TraceletCallback" in trainings["auto_callbacks"]
    assert "TensorBoardCallback" in trainings["auto_callbacks"]
    assert trainings["auto_tb_files"]
    assert trainings["auto_active_after_train"] is True  # a joined run is left to its owner
    explicit = trainings["explicit"]["mlflow"].series
    run = trainings["auto"].series
    assert trainings["auto_report"].complete
    assert set(run) == set(explicit)
    for name, pts in run.items():
        assert len(pts) == len(set(pts)), name
        if name.startswith(("train/", "eval/")) and not name.endswith(("runtime", "per_second")):
            assert close(pts, explicit[name], rel=1e-4), name
    assert trainings["registered_after_run"] is False


def test_only_world_process_zero_records(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tests._helpers import QUIET
    from tracelet.integrations.transformers import TraceletCallback

    exp = tracelet.start_logging("ranks", "t", backend="memory", settings=QUIET)
    callback = TraceletCallback()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state = TrainerState(global_step=5, is_world_process_zero=False)
    callback.on_train_begin(args, state, TrainerControl())
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    assert exp.params == {} and exp.step is None
    state.is_world_process_zero = True
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0, "note": "text"})
    assert exp.step == 5 and exp._run.points == 1
