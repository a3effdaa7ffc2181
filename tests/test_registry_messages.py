"""What a user reads when a backend name is wrong or its extra is missing.

The suite installs every extra, so a missing one is simulated the way Python
reports it: `importlib.util.find_spec` imports a dotted name's parents, and
raises `ModuleNotFoundError` when one of them is absent. The real core-only
install is checked in test_core_install.py.
"""

from __future__ import annotations

import importlib.util

import pytest

import tracelet
from tracelet import _registry
from tracelet.errors import BackendNotFoundError, BackendNotInstalledError
from tracelet.testing import InMemoryExporter


def without(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make `packages` (and everything under them) look uninstalled, as find_spec does."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        for package in packages:
            if name == package:
                return None
            if name.startswith(package + "."):  # the parent is imported first, and fails
                raise ModuleNotFoundError(f"No module named {package!r}", name=package)
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("backend", ["otlp", "prometheus"])
def test_a_missing_otel_exporter_package_names_the_extra(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without(monkeypatch, "opentelemetry.exporter", "prometheus_client")
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'tracelet\[otlp\]'$"):
        _registry.resolve([backend])
    with pytest.raises(BackendNotInstalledError, match=rf"^backend '{backend}' needs "):
        tracelet.start_logging(exp_name="x", project="p", backend=backend)


def test_unknown_backend_lists_what_is_usable_and_what_needs_an_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without(monkeypatch, "opentelemetry.exporter", "prometheus_client", "wandb")
    with pytest.raises(BackendNotFoundError) as info:
        tracelet.start_logging(exp_name="x", project="p", backend="mlfow")
    assert str(info.value) == (
        "unknown backend 'mlfow'; available backends: clearml, mlflow; "
        "known backends that need an extra: otlp, prometheus (pip install 'tracelet[otlp]'); "
        "wandb (pip install 'tracelet[wandb]')"
    )


def test_unknown_backend_with_every_extra_lists_every_tracker_but_not_the_test_double() -> None:
    with pytest.raises(BackendNotFoundError) as info:
        _registry.resolve(["nope"])
    assert str(info.value) == (
        "unknown backend 'nope'; available backends: clearml, mlflow, otlp, prometheus, wandb"
    )
    # the test double is left out of the list, yet still works when named
    assert "memory" in _registry.available()
    with tracelet.start_logging(exp_name="x", project="p", backend="memory") as exp:
        exp.log_metric("loss", 1.0)
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [(0, 1.0)]
