"""One delivery thread per tracker exporter: journal → exporter, retried, acknowledged.

Each thread keeps its own cursor (a byte offset into the journal) and moves it
only after the exporter accepted a batch. The cursor it saves in the run
directory (``<backend>.state.json``, with the exporter's resume state) is the
*durable* one: it moves past a batch only once ``exporter.force_flush()``
returned True after it (at most every `DURABLE_EVERY` seconds, and at close),
because some SDKs buffer what they accepted (ClearML holds events in memory
until it flushes). A later ``tracelet sync`` resumes there, so nothing an SDK
had not yet written is lost with the process.

The journal is opened once, when the delivery is made, and read through that
descriptor: if a cleanup script deletes the run directory, the unlinked
journal stays readable and every point is still delivered (saving the cursor
then fails; that is logged once and does not stop delivery).

A failing backend is retried with exponential backoff (0.5 s doubling to
30 s); it never holds up the training loop or the other backends, and its
points wait in the journal, not in memory.

Exactly once: in a live process a batch is sent again only after its export
failed; an exporter must make that retry harmless (MLflow's SQL store ignores
a metric it already holds; the W&B exporter skips the rows a failed attempt
wrote). After a crash, ``tracelet sync`` re-sends what follows the durable
cursor: at most `DURABLE_EVERY` seconds of points, some of which the backend
may hold already. MLflow ignores those. The W&B and ClearML exporters skip
them: with each durable cursor they save where their backend's stored data
stood (``exporter.resume_state()``), and when resumed they read back what was
stored past that mark (`tracelet.exporters._replay`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

from tracelet import _artifacts, _secrets
from tracelet._journal import read_batches
from tracelet._launch import rank_batch
from tracelet._logs import brief
from tracelet._rundir import save_json
from tracelet.export import ExportResult, RunInfo, RunStatus, TrackerExporter

_log = logging.getLogger("tracelet")

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
#: Longest a delivered batch waits for ``force_flush`` before the saved cursor passes it.
DURABLE_EVERY = 1.0
#: Longest one `export` call is told it may take.
_EXPORT_TIMEOUT_MS = 10_000.0

__all__ = ["Delivery", "JournalSource", "save_json"]


class JournalSource(Protocol):
    """What a delivery reads: `_history.History` in a live run, a finished file in ``sync``."""

    path: Path
    committed: int  # bytes of whole frames written so far
    written: threading.Condition  # notified when `committed` grows


class Delivery:
    """Delivers a run's journal to one exporter on a thread of its own."""

    #: Called after an artifact was uploaded and made durable (frees captured files).
    on_artifact: Callable[[], None] | None = None

    def __init__(
        self,
        backend: str,
        exporter: TrackerExporter,
        run: RunInfo,
        history: JournalSource,
        state_path: Path,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self.exporter = exporter
        self.run = run
        self.history = history
        self.state_path = state_path
        self._on_started = on_started
        self.offset = 0  # the durable cursor: the exporter flushed everything before it
        self.delivered = 0  # metric points before `offset`
        self._sent_offset = 0  # where reading goes on: accepted, maybe not yet flushed
        self._sent = 0
        self._last_durable = time.monotonic()
        self.started = False
        self.closed = False  # shutdown() returned
        self.error: BaseException | None = None  # the last failure, if unresolved
        self.failures = 0
        self.resume: dict[str, Any] | None = run.resume
        self._status: RunStatus | None = None
        self._deadline = float("inf")
        self._patience: float | None = None  # progress moves the deadline this far ahead
        self._hard_deadline = float("inf")  # never moved (a SIGTERM's grace period)
        self._kick = threading.Event()  # cuts a backoff sleep short when the run closes
        self._secrets: list[str] | None = None  # masked in the saved resume state
        self._save_failed = False
        # Opened now, not by path later: a deleted run directory leaves it readable.
        opener = getattr(history, "open_reader", None)
        self._journal = opener() if opener is not None else history.path.open("rb")
        self._thread = threading.Thread(
            target=self._run, name=f"tracelet-export-{backend}", daemon=True
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved ``<backend>.state.json`` (``tracelet sync``)."""
        self.offset = self._sent_offset = int(state.get("offset", 0))
        self.delivered = self._sent = int(state.get("delivered", 0))
        self.closed = bool(state.get("closed", False))

    def start(self) -> None:
        self._thread.start()

    def finish(self, status: RunStatus, deadline: float, patience: float | None = None) -> None:
        """Deliver what is journaled, then close the tracker run, by `deadline` (monotonic).

        With `patience`, every batch the exporter accepts moves the deadline
        to at least `patience` seconds ahead: a backend that keeps taking
        points is given the time it needs, one that stops answering is given
        up on `patience` seconds after its last progress.
        """
        self._patience = patience
        self._deadline = min(deadline, self._hard_deadline)
        self._status = status
        self._wake()

    def stop_by(self, deadline: float) -> None:
        """Give up at `deadline` (monotonic) at the latest, progress or not."""
        self._hard_deadline = deadline
        self._deadline = min(self._deadline, deadline)
        self._wake()

    def _wake(self) -> None:
        self._kick.set()
        with self.history.written:
            self.history.written.notify_all()

    def _progressed(self) -> None:
        if self._patience is not None:
            ahead = time.monotonic() + self._patience
            if ahead > self._deadline:
                self._deadline = min(ahead, self._hard_deadline)

    @property
    def deadline(self) -> float:
        """When (monotonic) the delivery gives up, as it stands (progress moves it)."""
        return self._deadline

    @property
    def sent(self) -> int:
        """Metric points the exporter accepted (`delivered` counts only the flushed ones)."""
        return self._sent

    def join(self, timeout: float) -> None:
        self._thread.join(max(0.0, timeout))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        # As the OTel SDK's own readers do around exports: an instrumented HTTP
        # client (requests, urllib3, grpc) does not trace the exporters' uploads.
        token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self._loop()
        except BaseException as exc:  # a bug here must be reported, not kill the run silently
            self.error = exc
            _log.exception("delivery to %r stopped: %r", self.backend, exc)
        finally:
            otel_context.detach(token)
            self._journal.close()

    def _loop(self) -> None:
        if not self._retry("start", self._start):
            return
        while True:
            with self.history.written:
                while self._sent_offset >= self.history.committed and self._status is None:
                    if self._sent_offset == self.offset:
                        self.history.written.wait()
                        continue
                    wait = self._last_durable + DURABLE_EVERY - time.monotonic()
                    if wait <= 0:
                        break  # idle with an unflushed tail: flush it now
                    self.history.written.wait(wait)
                finishing = self._status is not None
                end = self.history.committed
            if not self._deliver_to(end):
                return
            if finishing and self._sent_offset >= self.history.committed:
                break
            if (
                self._sent_offset > self.offset
                and time.monotonic() - self._last_durable >= DURABLE_EVERY
                and not self._retry("flush", self._make_durable)
            ):
                return
        self._retry("close", self._close)

    def _start(self) -> None:
        self._secrets = _secrets.known_secrets()
        self.resume = self.exporter.start(self.run)
        self.started = True
        self._save()
        if self._on_started is not None:
            self._on_started()

    def _make_durable(self) -> None:
        """Flush the exporter; then the saved cursor may pass what it accepted."""
        remaining_ms = min(_EXPORT_TIMEOUT_MS, (self._deadline - time.monotonic()) * 1000)
        if not self.exporter.force_flush(max(1000.0, remaining_ms)):
            raise RuntimeError("force_flush did not complete")
        self.offset, self.delivered = self._sent_offset, self._sent
        self._last_durable = time.monotonic()
        self._checkpoint()
        self._save()

    def _checkpoint(self) -> None:
        state = self.exporter.resume_state()
        if state is not None:
            self.resume = state

    def _close(self) -> None:
        assert self._status is not None
        remaining_ms = max(0.0, self._deadline - time.monotonic()) * 1000
        if not self.exporter.force_flush(remaining_ms):
            raise RuntimeError("force_flush did not complete")
        self.offset, self.delivered = self._sent_offset, self._sent
        self._checkpoint()
        self.exporter.shutdown(timeout_millis=remaining_ms, status=self._status)
        self.closed = True
        self._save()

    def _deliver_to(self, end: int) -> bool:
        f = self._journal
        while self._sent_offset < end:
            if not self._retry("export", lambda: self._export_from(f, end)):
                return False
        return True

    def _export_from(self, f: Any, end: int) -> None:
        for batch, offset, points in read_batches(
            f,
            self._sent_offset,
            end,
            self.exporter.max_batch_points,
            getattr(self.history, "cache", None),
        ):
            if self.run.rank is not None:  # all-ranks mode: rank<N>/ names
                batch = rank_batch(batch, self.run.rank)
            remaining_ms = (self._deadline - time.monotonic()) * 1000
            longest = _EXPORT_TIMEOUT_MS
            if batch.artifacts:  # captured files, in the run directory; time to upload them
                batch.artifacts = _artifacts.located(batch.artifacts, self.history.path.parent)
                longest = _artifacts.upload_timeout_ms(batch.artifacts, _EXPORT_TIMEOUT_MS)
            timeout_ms = min(longest, max(1000.0, remaining_ms))
            result = self.exporter.export(batch, timeout_millis=timeout_ms)
            if result is not ExportResult.SUCCESS:
                raise RuntimeError(f"exporter returned {result}")
            self._sent_offset, self._sent = offset, self._sent + points
            self._progressed()
            # An uploaded artifact is made durable at once: never uploaded again after a crash.
            if batch.artifacts or time.monotonic() - self._last_durable >= DURABLE_EVERY:
                self._make_durable()
            if batch.artifacts and self.on_artifact is not None:
                try:
                    self.on_artifact()
                except Exception as exc:  # freeing disk must never stop delivery
                    _log.warning("could not free delivered artifact files: %r", exc)
        if self._sent_offset < end:  # only a damaged tail was left: nothing more to read
            self._sent_offset = end

    def _retry(self, what: str, action: Any) -> bool:
        """Run `action` until it succeeds; False once the close deadline has passed."""
        backoff = _BACKOFF_FIRST
        while True:
            try:
                action()
            except Exception as exc:
                self.failures += 1
                if self.error is None:
                    _log.warning(
                        "backend %r failed to %s (%s); retrying with backoff, "
                        "every point stays in %s",
                        self.backend,
                        what,
                        brief(exc),
                        self.history.path,
                    )
                    _log.debug("backend %r: %s failed", self.backend, what, exc_info=exc)
                else:
                    _log.debug("backend %r failed again: %r", self.backend, exc)
                self.error = exc
            else:
                if self.error is not None:
                    _log.warning(
                        "backend %r recovered (%s) after %d failures",
                        self.backend,
                        what,
                        self.failures,
                    )
                    self.error = None
                return True
            wait = min(backoff, self._deadline - time.monotonic())
            if wait <= 0:
                return False
            self._kick.wait(wait)
            self._kick.clear()
            if time.monotonic() >= self._deadline:
                return False
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _save(self) -> None:
        """Save the cursor; a failure (run directory deleted, disk full) is logged, not raised.

        The cursor only serves a later ``tracelet sync``; delivery must not stop for it.
        """
        try:
            save_json(
                self.state_path,
                {
                    "backend": self.backend,
                    "offset": self.offset,
                    "delivered": self.delivered,
                    "closed": self.closed,
                    "resume": _secrets.scrub(self.resume, self._secrets),
                },
            )
        except OSError as exc:
            if not self._save_failed:
                _log.warning(
                    "cannot save the %r cursor in %s (%s); delivery goes on",
                    self.backend,
                    self.state_path,
                    brief(exc),
                )
            self._save_failed = True
        else:
            self._save_failed = False
