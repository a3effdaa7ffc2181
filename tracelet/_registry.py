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


#: Entry points that are test doubles rather than trackers (``tracelet.testing``):
#: they work when named, but an error listing the backends to choose from leaves
#: them out.
TEST_DOUBLES = frozenset({"memory"})


def available() -> list[str]:
    """Names of every registered backend, whether or not its extra is installed."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def is_installed(module: str) -> bool:
    """True when `module` can be imported, without importing it.

    `importlib.util.find_spec` imports a dotted name's parents first, so for
    ``opentelemetry.exporter.otlp`` without ``opentelemetry.exporter`` it
    raises `ModuleNotFoundError` instead of returning None.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing(cls: BackendClass) -> list[str]:
    """The modules of `cls.requires` that are not installed."""
    return [mod for mod in cls.requires if not is_installed(mod)]


def choices() -> tuple[list[str], dict[str, list[str]]]:
    """The backends a user can name now, and the extra each other known one needs.

    Returns:
        The usable names (test doubles left out), sorted, and a mapping from
        an extra to the backends that need it (``{"otlp": ["otlp", "prometheus"]}``).
    """
    usable: list[str] = []
    needs: dict[str, list[str]] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        if ep.name in TEST_DOUBLES or ep.name in usable:
            continue
        try:
            cls = ep.load()
        except Exception:  # a broken third-party plug-in: it cannot be offered
            continue
        if missing(cls):
            needs.setdefault(cls.extra or ep.name, []).append(ep.name)
        else:
            usable.append(ep.name)
    return usable, needs


def unknown_backend_message(name: object) -> str:
    """What `resolve` says about a backend name no exporter provides: what to choose instead."""
    usable, needs = choices()
    message = f"unknown backend {name!r}; available backends: {', '.join(usable) or 'none'}"
    if needs:
        extras = "; ".join(
            f"{', '.join(names)} (pip install 'tracelet[{extra}]')"
            for extra, names in sorted(needs.items())
        )
        message += f"; known backends that need an extra: {extras}"
    return message


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
            raise BackendNotFoundError(unknown_backend_message(name))
        if name in classes:
            raise ConfigError(f"backend {name!r} is listed twice")
        cls = found[name].load()
        absent = missing(cls)
        if absent:
            extra = cls.extra or name
            raise BackendNotInstalledError(
                f"backend {name!r} needs {', '.join(absent)}, "
                f"which {'is' if len(absent) == 1 else 'are'} not installed: "
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
