"""The public surface is pinned, and importing it stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tracelet


def test_public_names_are_pinned() -> None:
    assert set(tracelet.__all__) == {
        "BackendNotFoundError",
        "BackendNotInstalledError",
        "BackendReport",
        "ConfigError",
        "Experiment",
        "ExperimentClosedError",
        "ParamConflictError",
        "RunReport",
        "RunStatus",
        "TraceletError",
        "TraceletSettings",
        "__version__",
        "get_active_experiment",
        "start_logging",
        "stop_logging",
    }
    for name in tracelet.__all__:
        assert hasattr(tracelet, name), name


def test_import_tracelet_imports_no_backend_sdk() -> None:
    code = (
        "import sys, json, tracelet, tracelet.exporters.mlflow;"
        "print(json.dumps([m for m in ('mlflow', 'wandb', 'clearml', 'grpc') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


#: What `import tracelet` must not load: the heavy parts load at `start_logging`.
HEAVY = (
    "pydantic",
    "pydantic_settings",
    "opentelemetry",
    "psutil",
    "pynvml",
    "mlflow",
    "wandb",
    "clearml",
    "grpc",
    "asyncio",
)


@pytest.mark.parametrize("module", ["tracelet", "tracelet.errors", "tracelet.export"])
def test_import_tracelet_loads_the_standard_library_only(module: str) -> None:
    """The import budget: a fresh interpreter loads no third-party package for it."""
    code = (
        "import sys, json; before = set(sys.modules);"
        f"import {module};"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == [], heavy
    stdlib = set(sys.stdlib_module_names)
    assert [m for m in loaded if m.split(".")[0] not in stdlib | {"tracelet"}] == []


def test_lazy_names_are_the_real_objects() -> None:
    """`tracelet.X` loaded on first use is the very object its module defines."""
    from tracelet import _experiment, export, interface, settings

    assert tracelet.TraceletSettings is settings.TraceletSettings
    assert tracelet.Experiment is _experiment.Experiment
    assert tracelet.RunStatus is export.RunStatus
    assert tracelet.start_logging is interface.start_logging
    assert isinstance(tracelet.TraceletSettings(backend="memory"), settings.TraceletSettings)
    with pytest.raises(AttributeError, match="no_such_name"):
        tracelet.no_such_name  # noqa: B018
    assert set(tracelet.__all__) <= set(dir(tracelet))


def test_exporters_are_part_of_the_package_tree() -> None:
    """`tracelet.exporters` is found inside the package, with no import hook (editable or wheel)."""
    import tracelet.exporters.mlflow

    package = Path(tracelet.__file__).parent
    where = Path(tracelet.exporters.mlflow.__file__).parent
    assert where == package / "exporters", (
        f"tracelet.exporters imported from {where}, not {package / 'exporters'}: "
        "an install made before exporters/ was linked into tracelet/? pip install -e . again"
    )


def test_exporters_use_no_private_core_module() -> None:
    """Exporters use `tracelet.export` and `tracelet.toolkit`, never the core's `tracelet._*`."""
    folder = Path(tracelet.__file__).parent / "exporters"
    private = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            private += [f"{path.name}: {n}" for n in names if n.startswith("tracelet._")]
    assert private == []
