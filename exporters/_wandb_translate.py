"""Pure translation from tracelet's history to W&B ``run.log`` rows.

W&B keeps one global, increasing ``_step`` per run and silently drops a row
whose step is lower than one it has seen. tracelet points carry their own,
per-metric steps that may interleave or go backwards (train loss per batch,
val loss per epoch, a restarted loop). So the exporter never hands W&B a
tracelet step as ``_step``:

- every row is written at the next ``_step`` of tracelet's own row counter
  (0, 1, 2, ...), with ``commit=True``, so W&B never merges or drops a row;
- the tracelet step travels in the row as the value of `STEP_KEY`, and
  ``define_metric("*", step_metric=STEP_KEY)`` makes it the x-axis of every
  chart. This is the pattern W&B documents for custom x-axes, and the one
  Lightning's W&B logger uses with ``trainer/global_step``.

One shared step key (rather than a hidden ``<name>/step`` per metric) keeps the
W&B UI to one x-axis choice and the history table to one extra column; points
of different metrics logged at the same step share a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tracelet.export import MetricPoint
from tracelet.exporters._translate import UniqueNames, suffix

_log = logging.getLogger("tracelet")

#: The history key that carries each point's tracelet step (the charts' x-axis).
STEP_KEY = "tracelet/step"
#: Keys W&B writes itself in every history row; a metric of that name would clash.
RESERVED_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb", STEP_KEY})
#: W&B refuses run tags longer than this.
MAX_TAG = 64

Row = dict[str, Any]


def wandb_key(name: str) -> str:
    """The W&B history key of a tracelet metric name.

    Names are kept as they are (``train/loss`` groups under ``train`` in the
    W&B UI), except the keys W&B or tracelet write into every row, which get a
    ``metric/`` prefix (``_step`` → ``metric/_step``).
    """
    if name in RESERVED_KEYS:
        return "metric/" + name
    return name


class KeyMapper:
    """`wandb_key` with a cache, warning once for each renamed metric.

    Never merges two metrics: when a renamed key is also the name of another
    metric (``_step`` and ``metric/_step``), the later one gets a suffix
    (``metric/_step_2``).
    """

    def __init__(self) -> None:
        self._keys = UniqueNames[str](suffix)

    def __call__(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys.claim(name, wandb_key(name))
            if key != name:
                _log.warning(
                    "W&B cannot keep the key %r apart; metric %r is stored as %r",
                    name,
                    name,
                    key,
                )
        return key


def pack_rows(points: Sequence[MetricPoint], key: Callable[[str], str] = wandb_key) -> list[Row]:
    """Group consecutive points into W&B history rows, losing none.

    A point joins the current row when it has the row's step and its metric is
    not in the row yet; otherwise it starts a new row. So the order of each
    metric's points is kept and no value overwrites another. Each row holds
    `STEP_KEY` (the tracelet step) and ``_timestamp`` (the wall-clock time, in
    seconds, of the row's first point, which W&B keeps as given).

    Args:
        points: metric points in logging order.
        key: maps a metric name to its W&B key.

    Returns:
        The rows, in order; log each at the next W&B ``_step``.
    """
    rows: list[Row] = []
    row: Row | None = None
    step = -1
    for name, value, point_step, time_ns in points:
        k = key(name)
        if row is None or point_step != step or k in row:
            step = point_step
            row = {STEP_KEY: point_step, "_timestamp": time_ns / 1e9}
            rows.append(row)
        row[k] = value
    return rows
