"""What a closing run shows while its backends take what is left.

On a terminal: one line, redrawn in place twice a second (after the first
second of waiting), cleared when delivery is done::

    tracelet: delivering run 3f2a9c1d: mlflow 450,000/1,000,000 (12,000/s, 46 s left)

Elsewhere (a batch job's log file): the same text as a log record of the
``tracelet.progress`` logger every `LOG_EVERY` seconds. That logger is at INFO
of its own, so the line shows wherever tracelet's warnings show.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_progress_log = logging.getLogger("tracelet.progress")
_progress_log.setLevel(logging.INFO)

#: Seconds between progress records when stderr is not a terminal.
LOG_EVERY = 10.0
#: Seconds of waiting before anything is shown.
QUIET_FOR = 1.0


class Progress:
    """Shows delivery progress toward `total` points, per backend."""

    def __init__(self, run_id: str, total: int, stream: TextIO | None = None) -> None:
        self.run_id = run_id
        self.total = total
        self._stream = stream if stream is not None else sys.stderr
        try:
            self._tty = self._stream.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._started = time.monotonic()
        self._last_log = self._started
        self._first: dict[str, tuple[float, int]] = {}
        self._shown = False

    def line(self, sent: Mapping[str, int], now: float) -> str:
        parts = []
        for backend, n in sent.items():
            t0, n0 = self._first.setdefault(backend, (now, n))
            if n >= self.total:
                parts.append(f"{backend} {n:,}/{self.total:,} done")
                continue
            rate = (n - n0) / (now - t0) if now > t0 else 0.0
            left = f", {(self.total - n) / rate:.0f} s left" if rate > 0 else ""
            parts.append(f"{backend} {n:,}/{self.total:,} ({rate:,.0f}/s{left})")
        return f"delivering run {self.run_id[:8]}: " + ", ".join(parts)

    def update(self, sent: Mapping[str, int]) -> None:
        now = time.monotonic()
        text = self.line(sent, now)
        if now - self._started < QUIET_FOR:
            return
        if self._tty:
            self._stream.write(f"\rtracelet: {text}\x1b[K")
            self._stream.flush()
            self._shown = True
        elif now - self._last_log >= LOG_EVERY:
            self._last_log = now
            _progress_log.info(text)

    def close(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
