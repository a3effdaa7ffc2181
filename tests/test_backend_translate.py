"""The pure translations of the W&B and ClearML exporters: names, rows, values, options."""

from __future__ import annotations

import logging
import math

import pytest

from tracelet.export import MetricPoint
from tracelet.exporters._clearml_translate import (
    FLOAT32_MAX,
    FRAMEWORKS,
    frameworks,
    hyperparameters,
    scalar_value,
    title_series,
)
from tracelet.exporters._translate import tag_labels
from tracelet.exporters._wandb_translate import STEP_KEY, KeyMapper, pack_rows, wandb_key


def P(name: str, value: float, step: int, t: int = 1_000_000_000) -> MetricPoint:
    return MetricPoint(name, value, step, t)


# -- W&B ---------------------------------------------------------------------------


def test_points_at_one_step_share_a_row() -> None:
    rows = pack_rows([P("loss", 1.0, 5, 2_500_000_000), P("acc", 0.5, 5, 2_600_000_000)])
    assert rows == [{STEP_KEY: 5, "_timestamp": 2.5, "loss": 1.0, "acc": 0.5}]


def test_a_metric_twice_at_one_step_gets_two_rows_in_order() -> None:
    rows = pack_rows([P("loss", 1.0, 5), P("loss", 2.0, 5)])
    assert [(r[STEP_KEY], r["loss"]) for r in rows] == [(5, 1.0), (5, 2.0)]


def test_interleaved_and_backwards_steps_all_kept_in_order() -> None:
    points = [
        P("train/loss", 1.0, 0),
        P("train/loss", 0.9, 1),
        P("val/loss", 0.8, 0),
        P("train/loss", 0.7, 2),
        P("train/loss", 0.6, 1),  # backwards
        P("val/loss", 0.5, 1),
        P("val/loss", 0.4, 0),  # backwards
    ]
    rows = pack_rows(points)
    for name in ("train/loss", "val/loss"):
        got = [(r[STEP_KEY], r[name]) for r in rows if name in r]
        assert got == [(p.step, p.value) for p in points if p.name == name]
    assert sum(len(r) - 2 for r in rows) == len(points)  # nothing merged away


def test_nan_and_inf_pass_through_rows() -> None:
    rows = pack_rows([P("a", math.nan, 0), P("b", math.inf, 0), P("c", -math.inf, 0)])
    assert math.isnan(rows[0]["a"]) and rows[0]["b"] == math.inf and rows[0]["c"] == -math.inf


@pytest.mark.parametrize("name", ["_step", "_runtime", "_timestamp", "_wandb", STEP_KEY])
def test_keys_wandb_writes_itself_are_renamed(name: str) -> None:
    assert wandb_key(name) == "metric/" + name


@pytest.mark.parametrize("name", ["loss", "train/loss", "a.b", "_private", "x y"])
def test_other_names_are_kept(name: str) -> None:
    assert wandb_key(name) == name


def test_renamed_keys_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    key = KeyMapper()
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        assert [key("_step"), key("_step"), key("loss")] == ["metric/_step", "metric/_step", "loss"]
    assert len(caplog.records) == 1
    assert "'_step'" in caplog.records[0].getMessage()


def test_a_renamed_key_never_merges_two_metrics() -> None:
    key = KeyMapper()
    assert [key("metric/_step"), key("_step"), key("metric/_step")] == [
        "metric/_step",
        "metric/_step_2",
        "metric/_step",
    ]


def test_rows_use_the_key_mapper() -> None:
    assert pack_rows([P("_step", 3.0, 1)])[0]["metric/_step"] == 3.0


# -- ClearML -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("train/loss", ("train", "loss")),
        ("a/b/c", ("a/b", "c")),
        ("loss", ("loss", "loss")),
        ("/loss", ("/loss", "/loss")),
        ("train/", ("train/", "train/")),
    ],
)
def test_title_series(name: str, expected: tuple[str, str]) -> None:
    assert title_series(name) == expected


def test_finite_values_are_sent_as_they_are() -> None:
    assert scalar_value(0.25, None, FLOAT32_MAX) == 0.25
    assert scalar_value(-1e300, None, FLOAT32_MAX) == -1e300


def test_nan_is_left_out_unless_a_value_is_given() -> None:
    assert scalar_value(math.nan, None, FLOAT32_MAX) is None
    assert scalar_value(math.nan, -1.0, FLOAT32_MAX) == -1.0


def test_inf_keeps_its_sign() -> None:
    assert scalar_value(math.inf, None, FLOAT32_MAX) == FLOAT32_MAX
    assert scalar_value(-math.inf, None, FLOAT32_MAX) == -FLOAT32_MAX
    assert scalar_value(-math.inf, None, 1e9) == -1e9


def test_float32_max_is_the_largest_finite_float32() -> None:
    import struct

    assert struct.unpack("<f", struct.pack("<f", FLOAT32_MAX))[0] == FLOAT32_MAX
    with pytest.raises(OverflowError):
        struct.pack("<f", FLOAT32_MAX * (1 + 1e-7))


def test_hyperparameters_go_to_one_section() -> None:
    assert hyperparameters({"lr": 0.1, "opt/name": "adam"}, "General") == {
        "General/lr": 0.1,
        "General/opt/name": "adam",
    }


def test_frameworks_off_names_every_framework_and_the_repository_scan() -> None:
    off = frameworks(False, detect_repository=False)
    assert off == {**dict.fromkeys(FRAMEWORKS, False), "detect_repository": False}


def test_frameworks_on_still_does_not_scan_the_repository() -> None:
    on = frameworks(True, detect_repository=False)
    assert on["pytorch"] is True and on["detect_repository"] is False


def test_frameworks_dict_is_clearmls_own() -> None:
    assert frameworks({"pytorch": False}, detect_repository=False) == {
        "pytorch": False,
        "detect_repository": False,
    }
    assert frameworks({"detect_repository": True}, detect_repository=False) == {
        "detect_repository": True
    }


# -- tags as labels ----------------------------------------------------------------


def test_tags_become_labels() -> None:
    assert tag_labels("W&B", {"stage": "x", "baseline": ""}) == ["stage:x", "baseline"]


def test_long_labels_are_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        (label,) = tag_labels("W&B", {"k": "v" * 100}, max_len=64)
    assert label == "k:" + "v" * 62
    assert "W&B keeps the first 64" in caplog.text


# -- registration ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["wandb", "clearml"])
def test_backends_are_registered_and_a_missing_sdk_names_the_extra(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from tracelet import _registry
    from tracelet.errors import BackendNotInstalledError

    assert backend in _registry.available()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == backend else real_find_spec(name, *a),
    )
    with pytest.raises(BackendNotInstalledError, match=rf"pip install 'tracelet\[{backend}\]'"):
        _registry.resolve([backend])


def test_importing_the_exporters_does_not_import_the_sdks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tracelet, tracelet.exporters.wandb, tracelet.exporters.clearml, "
        "tracelet.testing; print(sorted(m for m in ('wandb', 'clearml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_options_reject_unknown_keys_and_bad_values() -> None:
    from tracelet import _registry
    from tracelet.errors import ConfigError

    classes = _registry.resolve(["wandb", "clearml"])
    with pytest.raises(ConfigError, match="entitty"):
        _registry.build_options(classes, {"entitty": "x"})
    with pytest.raises(ConfigError, match="task_type"):
        _registry.build_options(classes, {"clearml": {"task_type": "trainig"}})
    with pytest.raises(ConfigError, match="mode"):
        _registry.build_options(classes, {"wandb": {"mode": "offlne"}})
    options = _registry.build_options(
        classes, {"tags": {"team": "core"}, "entity": "me", "clearml": {"nan_value": -1}}
    )
    assert options["wandb"].tags == {"team": "core"} == options["clearml"].tags  # type: ignore[attr-defined]
    assert options["wandb"].entity == "me"  # type: ignore[attr-defined]
    assert options["clearml"].nan_value == -1.0  # type: ignore[attr-defined]
