"""The history channel: from `log_metric`'s in-memory queue to the run journal.

`log_metric` appends a tuple to `History.queue` (a deque: no I/O, no lock shared
with any other thread but producers). The journal thread moves what is queued
to the journal file every `flush_interval`, or sooner when the queue passes
`wake_at`, and wakes the delivery threads (`_delivery.py`) that read the
journal on. So memory holds at most `max_buffered` records however slow a
backend is: everything else is on disk, replayed from there in order.

Only when the journal writer itself cannot keep up (or the disk refuses the
journal) does a producer wait for room, counted in `blocked`; nothing is ever
dropped.

Each write goes straight to the OS (``os.write`` on an ``O_APPEND`` descriptor,
no user-space buffer), so what was written survives the process being killed,
and a forked child holds no half-filled buffer it could flush into the
parent's journal at its exit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tracelet._journal import Record, encode

_log = logging.getLogger("tracelet")

#: Records the journal thread encodes per write.
_CHUNK = 50_000


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
        self.points = 0  # metric points written to the journal
        self.blocked = 0  # times a producer waited for room
        self.write_errors = 0  # failed journal writes (each retried)
        self.error: BaseException | None = None
        self.written = threading.Condition()  # notified when `committed` grows
        self._flush_interval = flush_interval
        self._on_names = on_names
        self._names: set[str] = set()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._stop = False
        self._closed = False
        self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.committed = os.fstat(self._fd).st_size  # bytes of whole frames on disk
        self._thread = threading.Thread(target=self._run, name="tracelet-journal", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Records queued in memory, not yet in the journal."""
        return len(self.queue)

    def wake(self) -> None:
        """Ask the journal thread to write now; wait while the queue is full."""
        self._wake.set()
        if len(self.queue) >= self.max_buffered and threading.current_thread() is not self._thread:
            self.blocked += 1
            with self._room:
                while (
                    len(self.queue) >= self.max_buffered
                    and not self._stop
                    and self._thread.is_alive()
                ):
                    self._room.wait(0.05)

    def close(self) -> None:
        """Write everything queued, sync the file to disk and stop the thread. Idempotent."""
        if self._closed:
            return
        self._stop = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for _ in range(3):  # whatever raced in after the thread's last pass
            if not self.queue or self._drain():
                break
        if self.queue:
            _log.error(
                "tracelet: %d records could not be written to the journal %s: %r",
                len(self.queue),
                self.path,
                self.error,
            )
        self._closed = True
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)

    def forget_in_child(self) -> None:
        """In a forked child: drop the inherited queue and descriptor, write nothing ever.

        The journal thread does not exist in the child and the parent keeps
        writing the file; closing the child's copy of the descriptor leaves
        the parent's untouched.
        """
        self._stop = self._closed = True
        self.queue = deque()
        self._room = threading.Condition()
        self.written = threading.Condition()
        try:
            os.close(self._fd)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                if not self._drain():
                    time.sleep(0.5)  # the disk refused: retry later, the records are kept
            except Exception as exc:  # never let the writer die: producers would wait forever
                _log.exception("tracelet: journal thread error: %r", exc)
                time.sleep(0.5)

    def _drain(self) -> bool:
        """Write what is queued; False when a write failed (the records are queued again)."""
        queue, popleft = self.queue, self.queue.popleft
        while queue:
            records = [popleft() for _ in range(min(len(queue), _CHUNK))]
            # Wake waiting producers, but never block on them: a producer
            # interrupted by a signal handler that ends the run may hold this.
            if self._room.acquire(blocking=False):
                try:
                    self._room.notify_all()
                finally:
                    self._room.release()
            try:
                data = encode(records)
                self._write(data)
            except BaseException as exc:  # disk full, unencodable value: keep the records
                queue.extendleft(reversed(records))
                self.write_errors += 1
                if self.error is None:
                    _log.error(
                        "tracelet: cannot write the journal %s: %r; retrying, "
                        "points are held in memory meanwhile",
                        self.path,
                        exc,
                    )
                self.error = exc
                return False
            if self.error is not None:
                _log.warning("tracelet: the journal %s is writable again", self.path)
                self.error = None
            points = sum(1 for r in records if len(r) == 4)
            if self._on_names is not None:
                new = {r[0] for r in records if len(r) == 4} - self._names
                if new:
                    self._names |= new
                    try:
                        self._on_names(new)
                    except Exception as exc:  # telemetry must never stop the journal
                        _log.warning("tracelet: new-metric callback failed: %r", exc)
            with self.written:
                self.committed += len(data)
                self.points += points
                self.written.notify_all()
        return True

    def _write(self, data: bytes) -> None:
        """Append `data` whole, or leave the file as it was (no torn frame in the middle)."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BaseException:
            try:  # cut a partial write, so the retried frames follow whole ones
                os.ftruncate(self._fd, self.committed)
            except OSError:
                pass
            raise
