"""Keras 3 (torch backend, CPU): TraceletCallback counts its own global step.

``model.fit`` with a ``TraceletCallback`` and a callback that writes down
what Keras hands to callbacks; MLflow must hold one ``batch/*`` point per
batch at a global step that goes on across epochs (Keras restarts its batch
index), and the epoch logs equal ``fit``'s ``History``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._frameworks import close, quiet_settings, stored

pytestmark = pytest.mark.slow

EPOCHS, SAMPLES, BATCH = 3, 64, 16


@pytest.fixture(scope="module")
def training(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # keras imports tensorflow otherwise
    import keras
    import numpy as np

    from tracelet.integrations.keras import TraceletCallback

    assert keras.backend.backend() == "torch"
    tmp = tmp_path_factory.mktemp("keras")
    uri = mlflow_store(tmp / "mlflow.db")
    exp = tracelet.start_logging(
        "keras",
        "integrations",
        backend="mlflow",
        config={"tracking_uri": uri},
        settings=quiet_settings(tmp),
    )
    seen: list[tuple[int, float]] = []

    class Witness(keras.callbacks.Callback):  # what Keras hands every callback
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            seen.append((batch, float(logs["loss"])))

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5], dtype="float32"))[:, None]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    callback = TraceletCallback()
    history = model.fit(
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        validation_data=(x[:16], y[:16]),
        callbacks=[callback, Witness()],
        verbose=0,
    )
    model.evaluate(x, y, verbose=0, callbacks=[callback])
    active_after = exp.active
    report = exp.end()
    return {
        "report": report,
        "run": stored(exp.run_dir),
        "seen": seen,
        "history": history.history,
        "active_after": active_after,
        "global_step": callback.global_step,
    }


def test_batch_logs_at_a_global_step(training: dict[str, Any]) -> None:
    run, seen = training["run"], training["seen"]
    batches = SAMPLES // BATCH
    assert [b for b, _ in seen] == list(range(batches)) * EPOCHS  # Keras restarts the index
    assert training["global_step"] == batches * EPOCHS
    assert close(run.series["batch/loss"], [(i, v) for i, (_, v) in enumerate(seen)])


def test_epoch_logs_equal_history(training: dict[str, Any]) -> None:
    run, history = training["run"], training["history"]
    for key in ("loss", "val_loss"):
        assert close(run.series[f"epoch/{key}"], list(enumerate(history[key]))), key


def test_evaluate_params_and_counts(training: dict[str, Any]) -> None:
    run = training["run"]
    assert len(run.series["evaluate/loss"]) == 1
    assert training["report"].complete
    assert training["report"].points == sum(map(len, run.series.values()))
    assert run.params["keras/epochs"] == str(EPOCHS) and run.params["keras/optimizer"] == "SGD"
    assert training["active_after"] is True  # a joined run is left to its owner
