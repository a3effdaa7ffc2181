"""Backend names → exporter classes, through the ``tracelet.exporters`` entry points."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from tracelet import _secrets
from tracelet.errors import BackendNotFoundError, BackendNotInstalledError, ConfigError
from tracelet.export import ExporterOptions, TelemetryBackend, TrackerExporter

GROUP = "tracelet.exporters"

#: What a backend name resolves to: a tracker exporter (fed the run's history
#: by a delivery thread) or a telemetry backend (readers and span processors
#: on the run's OTel providers).
BackendClass = type[TrackerExporter] | type[TelemetryBackend]


def available() -> list[str]:
    """Names of every installed backend."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def resolve(names: Sequence[str]) -> dict[str, BackendClass]:
    """Load the exporter class of each backend name, checking its SDK is installed.

    A class is either a `TelemetryBackend` or, otherwise, a `TrackerExporter`
    (see `is_telemetry`).

    Raises:
        BackendNotFoundError: a name no installed exporter provides.
        BackendNotInstalledError: the backend's extra is not installed.
    """
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    classes: dict[str, BackendClass] = {}
    for name in names:
        if not isinstance(name, str) or name not in found:
            raise BackendNotFoundError(
                f"unknown backend {name!r}; available backends: {', '.join(sorted(found))}"
            )
        if name in classes:
            raise ConfigError(f"backend {name!r} is listed twice")
        cls = found[name].load()
        missing = [mod for mod in cls.requires if importlib.util.find_spec(mod) is None]
        if missing:
            extra = cls.extra or name
            raise BackendNotInstalledError(
                f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
                f"pip install 'tracelet[{extra}]'"
            )
        classes[name] = cls
    return classes


def is_telemetry(cls: BackendClass) -> bool:
    """True for a telemetry backend (``otlp``, ``prometheus``), False for a tracker."""
    return isinstance(cls, type) and issubclass(cls, TelemetryBackend)


def route_config(
    classes: Mapping[str, BackendClass],
    config: Mapping[str, Any] | None,
    shares: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Split `config` between the backends, onto `shares` (each backend's options so far).

    A key that names a selected backend holds options for that backend alone
    (``{"mlflow": {"tracking_uri": ...}}``); any other key goes to every
    selected backend that has that option (``tags`` goes to all of them,
    ``entity`` only to W&B). A key no selected backend accepts is an error.
    """
    if shares is None:
        shares = {name: {} for name in classes}
    for key, value in (config or {}).items():
        if key in classes:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config[{key!r}] must be a dict of {key} options, not {type(value).__name__}"
                )
            shares[key].update(value)
            continue
        takers = [name for name, cls in classes.items() if key in cls.options.model_fields]
        if not takers:
            allowed = sorted({f for cls in classes.values() for f in cls.options.model_fields})
            raise ConfigError(
                f"config option {key!r} is not accepted by backend(s) {', '.join(classes)}; "
                f"allowed options: {', '.join(allowed) or 'none'}"
            )
        for name in takers:
            shares[name][key] = value
    return shares


def build_options(
    classes: Mapping[str, BackendClass], config: Mapping[str, Any] | None
) -> dict[str, ExporterOptions]:
    """Split `config` between the backends (`route_config`) and validate each share."""
    shares = route_config(classes, config)
    options: dict[str, ExporterOptions] = {}
    for name, cls in classes.items():
        try:
            options[name] = cls.options(**shares[name])
        except ValidationError as exc:
            raise ConfigError(_describe(name, cls, exc)) from None
    return options


def _describe(name: str, cls: BackendClass, exc: ValidationError) -> str:
    """What is wrong with a backend's options, never echoing a secret.

    pydantic's own message quotes every bad value (``input_value='...'``),
    which for ``api_key`` or ``headers`` is the secret itself. Here a value is
    quoted only when neither its option's name nor its type says secret, and
    known secrets are masked in it; the exception is raised ``from None`` so
    the pydantic error (and its values) is not chained into the traceback.
    """
    fields = cls.options.model_fields
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        option = ".".join([name, *loc])
        field = fields.get(loc[0]) if loc else None
        secret = any(_secrets.secret_option(part) for part in loc) or (
            field is not None and "Secret" in repr(field.annotation)
        )
        text = f"{option}: {error['msg']}"
        if not secret and "input" in error and error["type"] != "missing":
            shown = _secrets.redact(repr(error["input"]))
            text += f" (got {shown[:200]})"
        problems.append(text)
    return f"invalid config for backend {name!r}: " + "; ".join(problems)
