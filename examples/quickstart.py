"""Quickstart: train a softmax classifier on scikit-learn's digits and track it with tracelet.

Runs in a few seconds on a CPU, with no server: every point lands in MLflow's
local store (./mlflow.db). Run it with `make quickstart`.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tracelet

logging.basicConfig(level=logging.INFO, format="%(message)s")
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

CONFIG = {"lr": 0.5, "epochs": 30, "batch_size": 64, "l2": 1e-4, "seed": 0}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grad(w: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float):
    p = softmax(x @ w)
    n = len(y)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean() + 0.5 * l2 * (w * w).sum()
    p[np.arange(n), y] -= 1
    return loss, x.T @ p / n + l2 * w


def main() -> None:
    digits = load_digits()
    x = np.hstack([digits.data / 16.0, np.ones((len(digits.data), 1))])  # features + bias
    x_train, x_val, y_train, y_val = train_test_split(
        x, digits.target, test_size=0.2, random_state=CONFIG["seed"], stratify=digits.target
    )
    rng = np.random.default_rng(CONFIG["seed"])
    w = np.zeros((x.shape[1], 10))

    with tracelet.start_logging(exp_name="softmax-digits", project="quickstart") as exp:
        exp.log_params({**CONFIG, "data": {"name": "sklearn digits", "train": len(y_train)}})
        step = 0
        for epoch in range(CONFIG["epochs"]):
            order = rng.permutation(len(y_train))
            for start in range(0, len(order), CONFIG["batch_size"]):
                idx = order[start : start + CONFIG["batch_size"]]
                loss, grad = loss_and_grad(w, x_train[idx], y_train[idx], CONFIG["l2"])
                w -= CONFIG["lr"] * grad
                exp.log_metric("train/loss", loss, iteration=step)
                step += 1
            val_loss, _ = loss_and_grad(w, x_val, y_val, CONFIG["l2"])
            val_acc = float((np.argmax(x_val @ w, axis=1) == y_val).mean())
            exp.log_metrics({"val/loss": val_loss, "val/acc": val_acc}, iteration=epoch)
            if epoch % 10 == 9:
                print(f"epoch {epoch + 1:3d}  val/loss {val_loss:.4f}  val/acc {val_acc:.3f}")

    report = exp.report
    assert report is not None
    print(f"\nlogged {report.points} points in run {exp.name!r} (tracelet run id {exp.run_id})")
    for b in report.backends:
        print(f"  {b.backend}: {b.delivered} delivered, {b.undelivered} undelivered")
    print(
        "\nOpen the run in the MLflow UI:\n  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
    )
    print("then browse http://127.0.0.1:5000 (experiment 'quickstart').")


if __name__ == "__main__":
    main()
