"""The history channel: from `log_metric`'s in-memory queue to the run journal.

`log_metric` appends a tuple to `History.queue` (a deque: no I/O, no lock shared
with any other thread but producers). The journal thread moves what is queued
to the journal file every `flush_interval`, or sooner when the queue passes
`wake_at`, and wakes the delivery threads (`_delivery.py`) that read the
journal on. So memory holds at most `max_buffered` records however slow a
backend is: everything else is on disk, replayed from there in order.

Only when the journal writer itself cannot keep up (or the disk refuses the
journal) does a producer wait for room, counted in `blocked`. Records leave
the queue only once written, so the queue is all that memory holds and
`max_buffered` bounds it even while every write fails.

A full disk: the records are kept in memory and written again every 0.5 s;
producers wait once the bound is reached. If the disk still refuses after
`FULL_DISK_WAIT` seconds of waiting, the run goes on and the points logged
while the bound is reached are *shed*: counted in `dropped`, logged at ERROR,
and reported as lost (the run's report is not complete). Training is paused
for a bounded time, never hung by a disk, and no point is lost silently. At
close, writing is retried until the close deadline; what is still unwritten
then is counted in `lost` too.

A deleted run directory (a cleanup script): the journal's inode lives on while
a descriptor holds it, so the writer and the delivery threads (which opened
the journal when they were made) go on; `deleted` tells, and a warning says
that nothing will be left on disk for ``tracelet sync``.

Each write goes straight to the OS (``os.write`` on an ``O_APPEND`` descriptor,
no user-space buffer), so what was written survives the process being killed,
and a forked child holds no half-filled buffer it could flush into the
parent's journal at its exit.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tracelet._journal import SAMPLE, Encoded, FrameCache, Record, encode_frames

_log = logging.getLogger("tracelet")

#: Records the journal thread encodes per write.
_CHUNK = 50_000
#: Seconds between attempts to write a journal the disk refused.
RETRY_EVERY = 0.5
#: Seconds producers wait for a refusing disk, once memory is full, before points are shed.
FULL_DISK_WAIT = 60.0


class History:
    """Owns the queue, the journal file and the thread that writes it."""

    def __init__(
        self,
        journal: Path,
        *,
        flush_interval: float,
        max_buffered: int,
        on_names: Callable[[set[str]], None] | None = None,
        cache: FrameCache | None = None,
    ) -> None:
        self.path = journal
        self.queue: deque[Record] = deque()
        self.max_buffered = max_buffered
        #: Queue length at which a producer wakes the journal thread early.
        self.wake_at = max(1000, max_buffered // 4)
        self.points = 0  # metric points written to the journal
        # The run's view for its telemetry and `Experiment.step`, kept by the
        # writer so that log_metric keeps no counters (see `view`): what was
        # written of the points training code logged (system samples aside).
        self.logged = 0
        self.top_step = -1
        #: The latest written value of each metric (what its OTel gauge reports).
        self.latest: dict[str, float] = {}
        self.blocked = 0  # times a producer waited for room
        self.write_errors = 0  # failed journal writes (each retried)
        self.dropped = 0  # points shed while the disk refused and memory was full
        self.unwritten = 0  # points still unwritten when the history closed
        self.deleted = False  # the journal was unlinked (its run directory deleted)
        self.error: BaseException | None = None
        self._held = 0  # records at the queue's head that a write in progress holds
        self._full_since: float | None = None  # when producers began waiting on it
        self.written = threading.Condition()  # notified when `committed` grows
        self._flush_interval = flush_interval
        self._on_names = on_names
        #: The frames written last, as readers decode them, for the delivery
        #: threads of this process (the in-memory test double, or
        #: ``delivery="thread"``): they read the journal without decoding it.
        #: None when every reader is the delivery agent, in its own process.
        self.cache = cache
        self._names: set[str] = set()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._stop = False
        #: Set once the last pass over the queue is done (`close`).
        self.closed = threading.Event()
        self._final = 0  # queue length after that pass: records past it came too late
        self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # Kept for readers made later (delivery from this process after the agent
        # stopped): they can open the journal even once its directory is deleted.
        self._read_fd = os.open(journal, os.O_RDONLY)
        self.committed = os.fstat(self._fd).st_size  # bytes of whole frames on disk
        self._thread = threading.Thread(target=self._run, name="tracelet-journal", daemon=True)
        self._thread.start()

    def open_reader(self) -> BinaryIO:
        """A new reader of the journal, with its own offset; works after an unlink too."""
        try:
            return self.path.open("rb")
        except FileNotFoundError:  # the run directory was deleted: reopen the inode we hold
            proc = Path(f"/proc/self/fd/{self._read_fd}")
            if proc.exists():
                return proc.open("rb")
            return os.fdopen(os.dup(self._read_fd), "rb")  # shares the offset: one reader

    def close_reader(self) -> None:
        """Let go of the descriptor `open_reader` falls back on (the run has ended)."""
        fd, self._read_fd = self._read_fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def backlog(self) -> int:
        """Records held in memory, not yet in the journal."""
        return len(self.queue)

    @property
    def lost(self) -> int:
        """Points accepted by the run that never reached the journal (shed or unwritten)."""
        return self.dropped + self.unwritten

    def _full(self) -> bool:
        return len(self.queue) >= self.max_buffered

    def wake(self) -> None:
        """Ask the journal thread to write now; wait while memory is full.

        While the disk refuses the journal, the wait is bounded: after
        `FULL_DISK_WAIT` s the newest point is shed (counted) instead.
        """
        self._wake.set()
        if not self._full() or threading.current_thread() is self._thread:
            return
        if self._shed():
            return
        self.blocked += 1
        with self._room:
            while self._full() and not self._stop and self._thread.is_alive():
                if self._shed():
                    return
                self._room.wait(0.05)

    def _shed(self) -> bool:
        """Drop the newest metric point if the disk has refused long enough; True if done."""
        if self.error is None:
            self._full_since = None
            return False
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
            _log.error(
                "the journal %s cannot be written (%r) and %d points fill memory: "
                "log_metric waits up to %g s for the disk, then sheds new points (counted)",
                self.path,
                self.error,
                self.max_buffered,
                FULL_DISK_WAIT,
            )
        if now - self._full_since < FULL_DISK_WAIT:
            return False
        if len(self.queue) <= self._held:  # only what a write holds: never shed that
            return False
        record = self.queue.pop()
        if len(record) != 4:  # params and tags are few: keep them
            self.queue.append(record)
            return True
        if not self.dropped:
            _log.error(
                "the journal %s still cannot be written after %g s; shedding new "
                "points (the run report counts them as lost) until the disk accepts writes",
                self.path,
                FULL_DISK_WAIT,
            )
        self.dropped += 1
        return True

    def close(self, deadline: float | None = None) -> None:
        """Write everything queued, sync the file to disk and stop the thread. Idempotent.

        Args:
            deadline: `time.monotonic()` until which a refused write is retried
                (the run's close deadline); by default three tries.
        """
        if self.closed.is_set():
            return
        self._stop = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        tries = 0
        while self.queue and not self._drain():  # also whatever raced in after the last pass
            tries += 1
            left = (deadline if deadline is not None else 0.0) - time.monotonic()
            if (deadline is None and tries >= 3) or (deadline is not None and left <= 0):
                break
            threading.Event().wait(min(RETRY_EVERY, max(0.0, left)))
        self.unwritten = sum(
            1 if len(r) == 4 else len(r[1]) if r[0] == SAMPLE else 0 for r in self.queue
        )
        if self.queue:
            _log.error(
                "%d points (%d records) could not be written to the journal %s "
                "before the close deadline: %r; they are lost",
                self.unwritten,
                len(self.queue),
                self.path,
                self.error,
            )
        if self.dropped:
            _log.error(
                "%d points were shed while the journal %s could not be written",
                self.dropped,
                self.path,
            )
        self._check_deleted()
        self._final = len(self.queue)
        self.closed.set()
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)

    def view(self) -> tuple[int, int]:
        """``(points, highest step)`` logged by training code so far, written or queued.

        Exact at the moment it is taken: the records still queued are added to
        what the writer counted. Costs a pass over the queue (it is called by
        telemetry readers and `Experiment.step`, never per point).
        """
        while True:
            with self.written:
                try:  # one C call: under the GIL no producer appends meanwhile
                    queued = list(self.queue)
                except RuntimeError:  # "deque mutated during iteration" (free-threaded build)
                    continue
                points, top = self.logged, self.top_step
            break
        for record in queued:
            if len(record) == 4:
                points += 1
                if record[2] > top:
                    top = record[2]
        return points, top

    def orphaned(self, record: Record) -> bool:
        """True if `record` was queued after the history closed: it is not in the journal.

        Only for a closed history (`closed` is set): nothing leaves the queue
        then, and records reach it at its end only.
        """
        return any(r is record for r in itertools.islice(self.queue, self._final, None))

    def forget_in_child(self) -> None:
        """In a forked child: drop the inherited queue and descriptor, write nothing ever.

        The journal thread does not exist in the child and the parent keeps
        writing the file; closing the child's copy of the descriptor leaves
        the parent's untouched.
        """
        self._stop = True
        self.queue = deque()
        self.closed = threading.Event()
        self.closed.set()
        self._room = threading.Condition()
        self.written = threading.Condition()
        for fd in (self._fd, self._read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read_fd = -1

    def _check_deleted(self) -> None:
        """Notice (once) that the journal was unlinked, e.g. its run directory removed."""
        if self.deleted:
            return
        try:
            self.deleted = os.fstat(self._fd).st_nlink == 0
        except OSError:
            return
        if self.deleted:
            _log.error(
                "the run directory %s was deleted while the run is active; "
                "logging and delivery go on from the open journal, but nothing is left on "
                "disk for `tracelet sync` if a backend does not receive everything",
                self.path.parent,
            )

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._check_deleted()
            try:
                if not self._drain():
                    time.sleep(RETRY_EVERY)  # the disk refused: retry later, records are kept
            except Exception as exc:  # never let the writer die: producers would wait forever
                _log.exception("journal thread error: %r", exc)
                time.sleep(0.5)

    def _drain(self) -> bool:
        """Write what is queued; False when a write failed (the records are queued again)."""
        queue = self.queue
        while queue:
            # Written from the queue's head and removed only once on disk: the
            # queue is all that memory holds, and the bound counts it whole.
            n = self._held = min(len(queue), _CHUNK)
            try:  # one C call: under the GIL no producer appends meanwhile
                records = list(itertools.islice(queue, n))
            except RuntimeError:  # "deque mutated during iteration" (free-threaded build)
                continue
            try:
                encoded = encode_frames(records)
                self._write(encoded.lines)
            except _PartialWrite as part:  # the disk filled mid-write: keep the whole frames
                self._held = 0
                self._committed_part(records, part)
                self._failed(part.error)
                return False
            except BaseException as exc:  # unencodable value: the records stay queued
                self._held = 0
                self._failed(exc)
                return False
            if self.error is not None:
                _log.warning("the journal %s is writable again", self.path)
                self.error = None
                self._full_since = None
            self._commit(encoded, n)
        return True

    def _failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        if self.error is None:
            _log.error(
                "cannot write the journal %s: %r; retrying, points are held in memory meanwhile",
                self.path,
                exc,
            )
        self.error = exc

    def _committed_part(self, records: list[Record], part: _PartialWrite) -> None:
        """After a short write: the whole frames on disk are written; the rest stays queued."""
        n = sum(count for _, count in part.frames)
        if n:  # encoded again: the same frames, the view of these records only
            self._commit(encode_frames(records[:n]), n)

    def _commit(self, encoded: Encoded, n: int) -> None:
        """The first `n` queued records are whole in the journal, as `encoded`: tell its readers.

        They leave the queue as the run's view moves past them, under the
        `written` lock: `view` sees every record once, in the view or in the
        queue.
        """
        if self._on_names is not None:
            new = encoded.names - self._names
            if new:
                self._names |= new
                try:
                    self._on_names(new)
                except Exception as exc:  # telemetry must never stop the journal
                    _log.warning("new-metric callback failed: %r", exc)
        size = sum(len(line) for line, _ in encoded.lines)
        if self.cache is not None:  # readers in this process take the frames from here
            offset = self.committed
            for frame in encoded.frames:
                self.cache.put(offset, frame)
                offset += frame.size
        with self.written:
            _popleft(self.queue, n)
            self._held = 0
            self.committed += size
            self.points += encoded.points
            self.logged += encoded.logged
            if encoded.top_step > self.top_step:
                self.top_step = encoded.top_step
            self.latest.update(encoded.latest)
            self.written.notify_all()
        # Wake waiting producers, but never block on them: a producer
        # interrupted by a signal handler that ends the run may hold this.
        if self._room.acquire(blocking=False):
            try:
                self._room.notify_all()
            finally:
                self._room.release()

    def _write(self, frames: list[tuple[bytes, int]]) -> None:
        """Append `frames` whole; after a failure the file ends with whole frames only.

        A frame is final once whole on disk: a reader (a delivery thread, the
        delivery agent in another process) may already have delivered it, so
        a short write (a disk filling up) keeps the whole frames it wrote and
        cuts only the torn one (`_PartialWrite` tells which were written).
        """
        view = memoryview(b"".join(line for line, _ in frames))
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except BaseException as exc:
            whole, size = [], 0
            for line, count in frames:
                if size + len(line) > done:
                    break
                whole.append((line, count))
                size += len(line)
            try:  # cut the torn frame, so the retried frames follow whole ones
                os.ftruncate(self._fd, self.committed + size)
            except OSError:
                pass
            raise _PartialWrite(exc, whole) from exc


def _popleft(queue: deque[Record], n: int) -> None:
    """Remove `n` records from the head of `queue`, in one C loop."""
    deque(itertools.starmap(queue.popleft, itertools.repeat((), n)), maxlen=0)


class _PartialWrite(Exception):
    """A write that failed after `frames` (whole) reached the file."""

    def __init__(self, error: BaseException, frames: list[tuple[bytes, int]]) -> None:
        super().__init__(repr(error))
        self.error = error
        self.frames = frames
