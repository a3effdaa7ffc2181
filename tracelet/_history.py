"""The history channel: from `log_metric`'s in-memory queue to the run journal.

`log_metric` appends a tuple to `History.queue` (a deque: no I/O, no lock shared
with any other thread but producers). The journal thread moves what is queued
to the journal file every `flush_interval`, or sooner when the queue grows,
and wakes the delivery threads (`_delivery.py`) that read the journal on.
Memory is bounded: when `max_buffered` records are queued, the producer waits
for the journal thread (counted in `blocked`), never dropping anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tracelet._journal import Record, encode

_log = logging.getLogger("tracelet")


class History:
    """Owns the queue, the journal file and the thread that writes it."""

    def __init__(
        self,
        journal: Path,
        *,
        flush_interval: float,
        max_buffered: int,
        on_names: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.path = journal
        self.queue: deque[Record] = deque()
        self.max_buffered = max_buffered
        #: Queue length at which a producer wakes the journal thread early.
        self.wake_at = max(1000, max_buffered // 4)
        self.committed = 0  # bytes of whole frames on disk
        self.points = 0  # metric points written to the journal
        self.blocked = 0  # times a producer waited for room
        self.error: BaseException | None = None
        self.written = threading.Condition()  # notified when `committed` grows
        self._flush_interval = flush_interval
        self._on_names = on_names
        self._names: set[str] = set()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._stop = False
        self._file = journal.open("ab")
        self._thread = threading.Thread(target=self._run, name="tracelet-journal", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask the journal thread to write now; wait while the queue is full."""
        self._wake.set()
        if len(self.queue) >= self.max_buffered and threading.current_thread() is not self._thread:
            self.blocked += 1
            with self._room:
                while len(self.queue) >= self.max_buffered and not self._stop:
                    self._room.wait(0.05)

    def close(self) -> None:
        """Write everything queued and stop the thread. Idempotent."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._drain()  # whatever raced in after the thread's last pass
        self._file.close()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        queue, popleft = self.queue, self.queue.popleft
        while queue:
            records = [popleft() for _ in range(min(len(queue), 50_000))]
            with self._room:
                self._room.notify_all()
            points = sum(1 for r in records if len(r) == 4)
            try:
                data = encode(records)
                self._file.write(data)
                self._file.flush()  # to the OS: survives the process being killed
            except BaseException as exc:  # disk full, unencodable value: keep the records
                queue.extendleft(reversed(records))
                if self.error is None:
                    _log.error("tracelet: cannot write the journal %s: %r", self.path, exc)
                self.error = exc
                time.sleep(0.5)
                return
            self.error = None
            if self._on_names is not None:
                new = {r[0] for r in records if len(r) == 4} - self._names
                if new:
                    self._names |= new
                    self._on_names(new)
            with self.written:
                self.committed += len(data)
                self.points += points
                self.written.notify_all()
