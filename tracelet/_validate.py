"""Checks of what training code passes in, with errors that name the value.

The fast paths (a `str` name, a `float`/`int` value, an `int` step) are
inlined in `Experiment.log_metric`; everything else comes here.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

PARAM_SEP = "/"


def metric_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, not {type(name).__name__} ({name!r})")
    if not name or name.isspace():
        raise ValueError(f"metric name must be a non-empty string, not {name!r}")
    return name


def metric_value(name: str, value: Any) -> float:
    """A real number as a float; numpy scalars and 0-d tensors through ``.item()``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(
            f"metric {name!r}: value must be a real number, not {type(value).__name__} ({value!r})"
        )
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float)):
        try:
            value = item()
        except (ValueError, RuntimeError) as exc:  # arrays / tensors with more than one element
            raise TypeError(
                f"metric {name!r}: value must be a single number; got {type(value).__name__} "
                f"that .item() cannot convert ({exc})"
            ) from exc
    if isinstance(value, complex) or not hasattr(value, "__float__"):
        raise TypeError(
            f"metric {name!r}: value must be a real number, not {type(value).__name__} ({value!r})"
        )
    try:
        return float(value)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"metric {name!r}: value {value!r} does not fit a float") from exc


def step(name: str, iteration: Any) -> int:
    """A non-negative integer step (numpy integers accepted, bools and floats not)."""
    if isinstance(iteration, bool):
        raise TypeError(f"metric {name!r}: iteration must be an int >= 0, not bool ({iteration!r})")
    if isinstance(iteration, float) and iteration.is_integer():
        raise TypeError(
            f"metric {name!r}: iteration must be an int >= 0, not float ({iteration!r}); "
            f"pass int({iteration!r})"
        )
    try:
        value = operator.index(iteration)
    except TypeError:
        raise TypeError(
            f"metric {name!r}: iteration must be an int >= 0, "
            f"not {type(iteration).__name__} ({iteration!r})"
        ) from None
    if value < 0:
        raise ValueError(f"metric {name!r}: iteration must be >= 0, not {value!r}")
    return value


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with ``/`` (``{"opt": {"lr": 1}}`` → ``{"opt/lr": 1}``).

    Values stay as they are when JSON can hold them exactly (str, int, float,
    bool, None); anything else (lists, objects) is stored as its ``str()``.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, not {type(params).__name__} ({params!r})")
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"param names must be non-empty strings, not {key!r}")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + PARAM_SEP))
        else:
            flat[full] = param_value(value)
    return flat


def param_value(value: Any) -> Any:
    """A param value as JSON holds it: scalars as they are, anything else as ``str()``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars, 0-d tensors
        try:
            return param_value(item())
        except (ValueError, RuntimeError):
            pass
    return str(value)


def tags(values: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise TypeError(f"tags must be a dict, not {type(values).__name__} ({values!r})")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"tag names must be non-empty strings, not {key!r}")
        out[key] = value if isinstance(value, str) else str(value)
    return out
