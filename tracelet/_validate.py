"""Checks of what training code passes in, with errors that name the value.

The fast paths (a `str` name, a `float`/`int` value, an `int` step) are
inlined in `Experiment.log_metric`; everything else comes here. A rejected
call raises before anything is recorded, so it never costs what was logged
before it.

- value ``str``, ``bytes``, ``None``, list, dict, complex: `TypeError` naming
  the metric and the type;
- value with ``.item()`` (numpy scalar, 0-d array or tensor): accepted as
  ``float(value.item())``; ``bool``: accepted as 0.0 / 1.0; NaN and ±inf kept;
- value an ``int`` beyond float range: `ValueError`;
- iteration ``bool``, ``float``, ``str``: `TypeError`; below 0 or above
  2**63-1: `ValueError`;
- name not a ``str``: `TypeError`; empty: `ValueError`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

from tracelet import _secrets

PARAM_SEP = "/"
#: Largest step: trackers store steps as signed 64-bit integers.
MAX_STEP = 2**63 - 1


def metric_name(name: Any) -> str:
    """A metric name: any non-empty ``str`` (backends map what they cannot store)."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, not {type(name).__name__} ({name!r})")
    if not name:
        raise ValueError(f"metric name must be a non-empty string, not {name!r}")
    return str(name)  # a str subclass (numpy.str_) as a plain str


def metric_value(name: str, value: Any) -> float:
    """A real number as a float; numpy scalars and 0-d tensors through ``.item()``."""
    if isinstance(value, (str, bytes, bytearray)) or value is None:
        raise TypeError(
            f"metric {name!r}: value must be a real number, not {type(value).__name__} ({value!r})"
        )
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float)):
        try:
            value = item()
        except (ValueError, RuntimeError, TypeError) as exc:  # arrays with more than one element
            raise TypeError(
                f"metric {name!r}: value must be a single number; got {type(value).__name__} "
                f"that .item() cannot convert ({exc})"
            ) from exc
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(
                f"metric {name!r}: value must be a real number, not {type(value).__name__} "
                f"({value!r})"
            )
    if isinstance(value, complex) or not hasattr(value, "__float__"):
        raise TypeError(
            f"metric {name!r}: value must be a real number, not {type(value).__name__} ({value!r})"
        )
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ValueError(f"metric {name!r}: value {value!r} does not fit a float") from exc


def step(name: str, iteration: Any) -> int:
    """A step in 0 .. 2**63-1 (numpy integers accepted, bools and floats not)."""
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
    if value > MAX_STEP:
        raise ValueError(
            f"metric {name!r}: iteration {value!r} is too large; trackers store steps as "
            f"64-bit integers (at most {MAX_STEP})"
        )
    return int(value)


def same_param(old: Any, new: Any) -> bool:
    """True when re-logging `new` over `old` changes nothing (NaN equals NaN)."""
    if type(old) is not type(new):
        return False
    if isinstance(old, float) and math.isnan(old) and math.isnan(new):
        return True
    return bool(old == new)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with ``/`` (``{"opt": {"lr": 1}}`` → ``{"opt/lr": 1}``).

    Values stay as they are when JSON can hold them exactly (str, int, float,
    bool, None); anything else (lists, objects) is stored as its ``str()``.
    A string holding a known secret is stored with the secret masked, and so is
    a string under a secret-looking key (`tracelet._secrets.secret_name`).

    Raises:
        TypeError: a name that is not a non-empty string, or a value whose
            ``str()`` raises (the error names the param).
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, not {type(params).__name__} ({params!r})")
    secrets = _secrets.known_secrets() if not prefix else None
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"param names must be non-empty strings, not {key!r}")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + PARAM_SEP))
        else:
            flat[full] = param_value(value, full)
    if secrets is not None:
        for key, value in flat.items():
            if isinstance(value, str):
                flat[key] = _secrets.redact(value, secrets)
        _secrets.mask_secret_keys(flat, "param")
    return flat


def param_value(value: Any, name: str = "") -> Any:
    """A param value as JSON holds it: scalars as they are, anything else as ``str()``."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    for kind in (bool, int, float, str):  # subclasses (numpy.float64, IntEnum) as the plain type
        if isinstance(value, kind):
            return kind(value)
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars, 0-d tensors
        try:
            return param_value(item(), name)
        except (ValueError, RuntimeError, TypeError):
            pass
    return as_text(value, f"param {name!r}")


def as_text(value: Any, what: str) -> str:
    """``str(value)``; when that raises, a `TypeError` that names `what` (a param, a tag)."""
    try:
        return str(value)
    except Exception as exc:
        raise TypeError(
            f"{what}: its value of type {type(value).__name__} cannot be shown as text "
            f"(str() raised {type(exc).__name__}: {exc}); pass a str, a number or a bool"
        ) from exc


def tags(values: Mapping[str, Any]) -> dict[str, str]:
    """Tag values as strings, with known secrets and values under secret-looking keys masked."""
    if not isinstance(values, Mapping):
        raise TypeError(f"tags must be a dict, not {type(values).__name__} ({values!r})")
    secrets = _secrets.known_secrets()
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"tag names must be non-empty strings, not {key!r}")
        text = value if isinstance(value, str) else as_text(value, f"tag {key!r}")
        out[key] = _secrets.redact(text, secrets)
    return _secrets.mask_secret_keys(out, "tag")
