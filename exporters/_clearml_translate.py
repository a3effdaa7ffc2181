"""Pure translation from tracelet's history to ClearML scalars and hyperparameters.

- A metric name becomes a ClearML (title, series) pair, split at the last
  ``/``: ``train/loss`` → title ``train``, series ``loss`` (one chart per
  title, one line per series); ``a/b/c`` → ``a/b``, ``c``; a name without
  ``/`` (``loss``) → title and series ``loss``.
- The step is the ClearML iteration, unchanged.
- NaN and ±inf: a ClearML server keeps scalar values in a 32-bit float field
  (Elasticsearch), which cannot hold them, and the SDK by default turns both
  into 0.0. tracelet sends ±inf as ±`FLOAT32_MAX` (the largest value that field
  holds, so the spike keeps its sign) and leaves NaN out of the plot (a gap, as
  MLflow and W&B charts show NaN), unless the options give other values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The largest finite 32-bit float: where ±inf land on a ClearML server.
FLOAT32_MAX = 3.4028234663852886e38

#: Frameworks ``Task.init(auto_connect_frameworks=...)`` knows (ClearML 2.1).
#: A framework missing from the dict ClearML receives is switched ON, so an
#: "all off" dict has to name each.
FRAMEWORKS = (
    "hydra",
    "scikit",
    "joblib",
    "matplotlib",
    "tensorflow",
    "tensorboard",
    "tfdefines",
    "pytorch",
    "megengine",
    "xgboost",
    "catboost",
    "fastai",
    "lightgbm",
    "gradio",
)


def title_series(name: str) -> tuple[str, str]:
    """ClearML (title, series) of a metric name, split at its last ``/``."""
    title, sep, series = name.rpartition("/")
    if not sep or not title or not series:
        return name, name
    return title, series


def scalar_value(value: float, nan_value: float | None, inf_value: float) -> float | None:
    """The value ClearML receives for `value`; ``None`` means the point is left out.

    Args:
        value: the logged value.
        nan_value: what NaN becomes (``None``: left out of the plot).
        inf_value: what +inf becomes; -inf becomes ``-inf_value``.
    """
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return nan_value
    return inf_value if value > 0 else -inf_value


def hyperparameters(params: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Params as ``Task.update_parameters`` keys: ``{"<section>/<name>": value}``.

    ClearML splits at the first ``/``, so ``opt/lr`` in section ``General`` is
    the parameter ``opt/lr`` of section ``General``. ClearML stores every value
    as text (``0.1`` → ``"0.1"``, ``True`` → ``"True"``, ``None`` → ``""``).
    """
    return {f"{section}/{key}": value for key, value in params.items()}


def frameworks(value: bool | Mapping[str, Any], detect_repository: bool) -> dict[str, Any]:
    """The ``auto_connect_frameworks`` dict for ``Task.init``.

    ClearML scans the git repository unless this argument is a dict that says
    ``detect_repository: False`` (even ``False`` leaves the scan on), and that
    scan raced with ClearML's fork and hung ``close()`` for minutes on the
    machines tracelet is tested on. So the result is always a dict, and says
    whether to scan explicitly.

    Args:
        value: ``True``/``False`` for every framework, or ClearML's own dict
            (``{"pytorch": True, "matplotlib": False}``); frameworks it does
            not name follow ClearML's default (on).
        detect_repository: used unless `value` is a dict that names it.
    """
    if isinstance(value, bool):
        out: dict[str, Any] = dict.fromkeys(FRAMEWORKS, value)
    else:
        out = dict(value)
    out.setdefault("detect_repository", detect_repository)
    return out
