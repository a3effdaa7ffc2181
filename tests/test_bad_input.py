"""Bad input, table-driven: a clear error or a documented outcome; nothing logged before is lost."""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import tracelet
from tests._helpers import QUIET
from tests._reliability import mlflow_history, mlflow_run
from tracelet.errors import ExperimentClosedError, ParamConflictError
from tracelet.testing import InMemoryExporter


class Tensor0d:
    """What a 0-d torch tensor offers: ``.item()`` and no ``__float__`` of its own."""

    def __init__(self, value: float) -> None:
        self._value = value

    def item(self) -> float:
        return self._value


class Tensor2:
    """A tensor of two elements: ``.item()`` refuses."""

    def item(self) -> float:
        raise RuntimeError("a Tensor with 2 elements cannot be converted to Scalar")


BAD_VALUES: list[tuple[str, Any, type[Exception], str]] = [
    ("str", "0.5", TypeError, r"'loss'.*real number.*str"),
    ("None", None, TypeError, r"'loss'.*NoneType"),
    ("list", [0.5], TypeError, r"'loss'.*list"),
    ("dict", {"v": 0.5}, TypeError, r"'loss'.*dict"),
    ("bytes", b"0.5", TypeError, r"'loss'.*bytes"),
    ("complex", 1 + 2j, TypeError, r"'loss'.*complex"),
    ("object", object(), TypeError, r"'loss'.*object"),
    ("numpy 2-vector", np.array([1.0, 2.0]), TypeError, r"'loss'.*single number.*ndarray"),
    ("tensor of 2", Tensor2(), TypeError, r"'loss'.*single number.*Tensor2"),
    ("int beyond float", 10**400, ValueError, r"'loss'.*does not fit a float"),
]

GOOD_VALUES: list[tuple[str, Any, float]] = [
    ("int", 3, 3.0),
    ("bool", True, 1.0),
    ("numpy float32", np.float32(0.5), 0.5),
    ("numpy int64", np.int64(7), 7.0),
    ("numpy bool", np.bool_(False), 0.0),
    ("numpy 0-d array", np.array(2.5), 2.5),
    ("0-d tensor (.item())", Tensor0d(0.125), 0.125),
    ("Decimal", Decimal("0.25"), 0.25),
    ("Fraction", Fraction(1, 4), 0.25),
    ("inf", math.inf, math.inf),
]

BAD_STEPS: list[tuple[str, Any, type[Exception], str]] = [
    ("negative", -1, ValueError, r"'loss'.*>= 0.*-1"),
    ("beyond int64", 2**63, ValueError, r"'loss'.*too large"),
    ("float", 1.5, TypeError, r"'loss'.*int >= 0.*float"),
    ("integral float", 2.0, TypeError, r"pass int\(2\.0\)"),
    ("bool", True, TypeError, r"'loss'.*bool"),
    ("str", "3", TypeError, r"'loss'.*str"),
    ("numpy float", np.float64(3.0), TypeError, r"'loss'.*float"),
]

BAD_NAMES: list[tuple[str, Any, type[Exception], str]] = [
    ("empty", "", ValueError, r"non-empty string.*''"),
    ("None", None, TypeError, r"must be a str, not NoneType"),
    ("int", 3, TypeError, r"must be a str, not int"),
    ("bytes", b"loss", TypeError, r"must be a str, not bytes"),
]


def ids(table: list[tuple[Any, ...]]) -> list[str]:
    return [row[0] for row in table]


def start() -> tracelet.Experiment:
    return tracelet.start_logging("bad-input", backend="memory", settings=QUIET)


def delivered(exp: tracelet.Experiment, name: str) -> list[tuple[int, float]]:
    return InMemoryExporter.runs[exp.run_id].history(name)


@pytest.mark.parametrize(("case", "value", "error", "match"), BAD_VALUES, ids=ids(BAD_VALUES))
def test_a_bad_value_raises_and_loses_nothing(
    case: str, value: Any, error: type[Exception], match: str
) -> None:
    exp = start()
    exp.log_metric("loss", 1.0, iteration=0)
    with pytest.raises(error, match=match):
        exp.log_metric("loss", value, iteration=1)
    with pytest.raises(error, match=match):
        exp.log_metrics({"acc": 0.5, "loss": value}, iteration=1)  # checked before any is kept
    exp.log_metric("loss", 2.0, iteration=1)
    report = exp.end()
    assert report.complete and report.points == 2
    assert delivered(exp, "loss") == [(0, 1.0), (1, 2.0)]
    assert delivered(exp, "acc") == []


@pytest.mark.parametrize(("case", "value", "expected"), GOOD_VALUES, ids=ids(GOOD_VALUES))
def test_a_real_number_in_any_form_is_accepted(case: str, value: Any, expected: float) -> None:
    exp = start()
    exp.log_metric("v", value, iteration=4)
    exp.log_metrics({"w": value}, iteration=5)
    exp.end()
    assert delivered(exp, "v") == [(4, expected)]
    assert delivered(exp, "w") == [(5, expected)]
    assert all(type(p.value) is float for p in InMemoryExporter.runs[exp.run_id].metrics)


def test_nan_is_kept() -> None:
    exp = start()
    exp.log_metric("v", np.float64("nan"), iteration=0)
    exp.end()
    [(step, value)] = delivered(exp, "v")
    assert step == 0 and math.isnan(value)


@pytest.mark.parametrize(("case", "step", "error", "match"), BAD_STEPS, ids=ids(BAD_STEPS))
def test_a_bad_iteration_raises_and_loses_nothing(
    case: str, step: Any, error: type[Exception], match: str
) -> None:
    exp = start()
    exp.log_metric("loss", 1.0, iteration=0)
    with pytest.raises(error, match=match):
        exp.log_metric("loss", 1.5, iteration=step)
    with pytest.raises(error):
        exp.log_metrics({"loss": 1.5}, iteration=step)
    exp.log_metric("loss", 2.0)  # the next automatic step is unaffected
    exp.end()
    assert delivered(exp, "loss") == [(0, 1.0), (1, 2.0)]


def test_integer_like_iterations_are_accepted() -> None:
    exp = start()
    exp.log_metric("s", 1.0, iteration=np.int64(5))
    exp.log_metric("s", 2.0, iteration=2**63 - 1)
    exp.end()
    assert delivered(exp, "s") == [(5, 1.0), (2**63 - 1, 2.0)]
    assert all(type(p.step) is int for p in InMemoryExporter.runs[exp.run_id].metrics)


@pytest.mark.parametrize(("case", "name", "error", "match"), BAD_NAMES, ids=ids(BAD_NAMES))
def test_a_bad_name_raises_and_loses_nothing(
    case: str, name: Any, error: type[Exception], match: str
) -> None:
    exp = start()
    exp.log_metric("ok", 1.0)
    with pytest.raises(error, match=match):
        exp.log_metric(name, 1.0)
    with pytest.raises(error, match=match):
        exp.log_metrics({name: 1.0, "ok": 2.0})
    exp.log_metric("ok", 2.0)
    exp.end()
    assert delivered(exp, "ok") == [(0, 1.0), (1, 2.0)]


def test_param_conflicts_raise_and_keep_what_was_logged() -> None:
    exp = start()
    exp.log_params({"lr": 0.1, "nan": math.nan, "np": np.float64(0.5), "opt": {"name": "adam"}})
    exp.log_params({"lr": 0.1, "nan": math.nan, "np": 0.5})  # the same values: no-ops
    with pytest.raises(ParamConflictError, match=r"'lr' was logged as 0\.1.*0\.2.*'lr_2'"):
        exp.log_params({"epochs": 10, "lr": 0.2})
    with pytest.raises(ParamConflictError, match=r"'lr'.*'0\.1'"):
        exp.log_param("lr", "0.1")  # a different type is a different value
    with pytest.raises(ParamConflictError):
        exp.log_params({"opt": {"name": "sgd"}})
    with pytest.raises(TypeError, match="non-empty strings"):
        exp.log_params({"": 1})
    with pytest.raises(TypeError, match="must be a dict"):
        exp.log_params([("lr", 0.1)])  # type: ignore[arg-type]
    exp.log_metric("loss", 0.5)
    exp.end()
    run = InMemoryExporter.runs[exp.run_id]
    assert set(run.params) == {"lr", "nan", "np", "opt/name"}  # nothing of the rejected calls
    assert run.params["lr"] == 0.1 and run.params["opt/name"] == "adam"
    assert run.history("loss") == [(0, 0.5)]


def test_closed_experiment_raises() -> None:
    exp = start()
    exp.end()
    with pytest.raises(ExperimentClosedError, match="has ended"):
        exp.log_metric("loss", 1.0)
    with pytest.raises(ExperimentClosedError):
        exp.log_params({"a": 1})


def test_names_mlflow_cannot_store_are_mapped_with_one_warning_and_long_values_cut(
    mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracelet")
    exp = tracelet.start_logging(
        "names", "bad-input", backend="mlflow", config={"tracking_uri": mlflow_uri}, settings=QUIET
    )
    names = {
        "/abs/loss": "abs/loss",
        "a//b": "a/b",
        "acc/./top1": "acc/top1",
        "up/../x": "up/__/x",
        "trail/": "trail",
        "loss@gpu#0": "loss_gpu_0",
        "loss_gpu_0": "loss_gpu_0_2",  # would collide with the one above: kept apart
        "x" * 300: "x" * 250,
        "ok/name-1.5: fine": "ok/name-1.5: fine",
    }
    for i in range(3):
        for name in names:
            exp.log_metric(name, float(i), iteration=i)
        with pytest.raises(TypeError):
            exp.log_metric("abs", "bad")  # type: ignore[arg-type]
    exp.log_params({"long": "p" * 7000, "bad key!": 1})
    exp.set_tags({"note": "t" * 9000})
    report = exp.end()
    assert report.complete

    run = mlflow_run(mlflow_uri, exp.run_id)
    for name, key in names.items():
        assert [(s, v) for s, v, _ in mlflow_history(mlflow_uri, run.info.run_id, key)] == [
            (0, 0.0),
            (1, 1.0),
            (2, 2.0),
        ], name
        changed = name != key
        warnings = [r for r in caplog.records if f"the name {name!r}" in r.getMessage()]
        assert len(warnings) == (1 if changed else 0), name
    assert run.data.params["long"] == "p" * 6000
    assert run.data.params["bad key_"] == "1"
    assert run.data.tags["note"] == "t" * 8000
    cut = [r for r in caplog.records if "characters; MLflow keeps the first" in r.getMessage()]
    assert len(cut) == 2
