"""`Experiment`: the handle training code logs into.

Where a point travels: `log_metric` validates and appends
``(name, value, step, time_ns)`` to the history queue (`_history.History`) and
updates the latest value the OTel gauges read (`_otel.Telemetry`). The journal
thread writes the queue to the run journal; one delivery thread per backend
(`_delivery.Delivery`) reads the journal and calls its exporter, e.g.
`tracelet.exporters.mlflow.MLflowExporter.export` → ``MlflowClient.log_batch``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tracelet import _lifecycle, _rundir, _secrets, _validate
from tracelet._delivery import Delivery
from tracelet._history import History
from tracelet._otel import Telemetry
from tracelet._tracing import SpanScope
from tracelet.errors import ExperimentClosedError, ParamConflictError
from tracelet.export import RunStatus

__all__ = ["BackendReport", "Experiment", "RunReport"]

_log = logging.getLogger("tracelet")


@dataclass(frozen=True)
class BackendReport:
    """What one backend received."""

    backend: str
    delivered: int
    undelivered: int
    closed: bool
    error: str | None = None


@dataclass(frozen=True)
class RunReport:
    """The account of a run, made when it ends (`Experiment.report`)."""

    run_id: str
    status: RunStatus
    points: int
    run_dir: Path
    backends: list[BackendReport] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every backend received every point and closed its run."""
        return all(b.undelivered == 0 and b.closed for b in self.backends)


class Experiment:
    """A run being tracked. Create it with `tracelet.start_logging`.

    Thread-safe: any thread may log into it; the points of one metric are
    delivered in the order of the calls.
    """

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        project: str,
        run_dir: Path,
        history: History,
        deliveries: list[Delivery],
        telemetry: Telemetry,
        latest: dict[str, float],
        close_timeout: float,
        keep_journal: bool,
        run_lock: _rundir.RunLock | None = None,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.project = project
        self.run_dir = run_dir
        self.report: RunReport | None = None
        self.telemetry = telemetry
        self._history = history
        self._queue = history.queue
        self._wake_at = history.wake_at
        self._deliveries = deliveries
        self._latest = latest
        self._next_step: dict[str, int] = {}
        self._params: dict[str, Any] = {}
        self._step = -1
        self._points = 0
        self._lock = threading.Lock()
        self._closed = False
        self._end_lock = threading.Lock()
        self._close_timeout = close_timeout
        self._keep_journal = keep_journal
        self._run_lock = run_lock
        self._ending: int | None = None  # the thread running `end`, while it runs
        _lifecycle.track(self)
        #: Stops the threads that feed the history besides the callers of
        #: log_metric (the system sampler); run by `end` before the history closes.
        self._feeders: list[Callable[[], None]] = []

    # -- logging ----------------------------------------------------------------

    def log_metric(self, name: str, value: float, iteration: int | None = None) -> None:
        """Record one value of a metric.

        Args:
            name: metric name, e.g. ``"train/loss"``.
            value: a real number: int, float, a numpy scalar or a 0-d tensor.
                NaN and inf are kept.
            iteration: the step (an int >= 0). When ``None``, the step is one
                past this metric's previous step (0 for its first point), so
                points logged without a step never collide.

        Raises:
            TypeError: `value` is not a real number, or `iteration` not an int.
            ValueError: an empty name, an iteration outside 0 .. 2**63-1, or
                an int value too large for a float.
            ExperimentClosedError: the experiment has ended.
        """
        if type(name) is not str or not name:
            name = _validate.metric_name(name)
        if type(value) is not float:
            try:
                value = float(value) if type(value) is int else _validate.metric_value(name, value)
            except OverflowError:  # an int beyond float range
                value = _validate.metric_value(name, value)
        if iteration is not None and (
            type(iteration) is not int or iteration < 0 or iteration > _validate.MAX_STEP
        ):
            iteration = _validate.step(name, iteration)
        with self._lock:
            if self._closed:
                raise ExperimentClosedError(f"experiment {self.name!r} has ended; start a new one")
            step = self._next_step.get(name, 0) if iteration is None else iteration
            self._next_step[name] = step + 1
            self._queue.append((name, value, step, time.time_ns()))
            self._latest[name] = value
            self._points += 1
            if step > self._step:
                self._step = step
        if len(self._queue) >= self._wake_at:
            self._history.wake()

    def log_metrics(self, metrics: dict[str, float], iteration: int | None = None) -> None:
        """Record several metrics at one step (each gets its own step when `iteration` is None).

        Every value is checked before any is recorded, so a bad one records none.
        """
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, not {type(metrics).__name__} ({metrics!r})")
        checked = []
        for name, value in metrics.items():
            _validate.metric_name(name)
            checked.append((name, _validate.metric_value(name, value)))
        if iteration is not None:
            iteration = _validate.step(",".join(metrics), iteration)
        for name, value in checked:
            self.log_metric(name, value, iteration)

    def log_params(self, params: dict[str, Any]) -> None:
        """Record hyperparameters; nested dicts are flattened with ``/``.

        Logging a param again with the same value does nothing.

        Raises:
            ParamConflictError: a param already logged with a different value
                (MLflow forbids changing it); none of this call's params are
                recorded.
        """
        flat = _validate.flatten(params)
        with self._lock:
            self._check_open()
            for key, value in flat.items():
                old = self._params.get(key, value)
                if not _validate.same_param(old, value):
                    raise ParamConflictError(
                        f"param {key!r} was logged as {old!r}; it cannot change to {value!r}. "
                        f"Log it under a new name, e.g. {key + '_2'!r}"
                    )
            new = {k: v for k, v in flat.items() if k not in self._params}
            if new:
                self._params.update(new)
                self._queue.append(("p", new))

    def log_param(self, key: str, value: Any) -> None:
        """Record one hyperparameter (see `log_params`)."""
        self.log_params({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values become strings); a tag set again is overwritten."""
        checked = _validate.tags(tags)
        with self._lock:
            self._check_open()
            self._queue.append(("t", checked))

    def set_tag(self, key: str, value: Any) -> None:
        """Set one run tag (see `set_tags`)."""
        self.set_tags({key: value})

    def span(self, name: str, **attributes: Any) -> SpanScope:
        """Record a phase of the run (an epoch, an evaluation, a checkpoint) as an OTel span.

        A context manager and a decorator; the span is a child of the run span
        (or of the enclosing ``exp.span`` on the same thread), ends with status
        ERROR when an exception leaves it, and is exported by the ``otlp``
        backend. Keep `name` low-cardinality (``"epoch"``, not ``"epoch 3"``)
        and put the rest in attributes::

            with exp.span("epoch", epoch=3):
                ...

            @exp.span("evaluate", split="val")
            def evaluate(model): ...

        Costs some tens of µs per span: fine per epoch or evaluation, not per batch.

        Args:
            name: the phase.
            **attributes: span attributes; values that are not bool, int,
                float, str (or a list of one of them) are stored as strings.
        """
        return self.telemetry.span(name, attributes)

    @property
    def trace_id(self) -> str:
        """The run's OTel trace id, 32 hex digits.

        When a backend exports traces (``otlp``), every tracker run carries it
        as the tag ``tracelet.trace_id``.
        """
        return self.telemetry.trace_id

    @property
    def step(self) -> int | None:
        """The highest step logged so far (``None`` before the first point)."""
        return None if self._step < 0 else self._step

    @property
    def params(self) -> dict[str, Any]:
        """The params logged so far (flattened)."""
        return dict(self._params)

    @property
    def active(self) -> bool:
        return not self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ExperimentClosedError(f"experiment {self.name!r} has ended; start a new one")

    # -- ending -----------------------------------------------------------------

    def end(self, status: RunStatus | str = RunStatus.FINISHED) -> RunReport:
        """End the run: deliver every point, close the tracker runs, report.

        Waits at most the `close_timeout` setting for the backends. What a
        backend has not received by then stays in the run's journal and is
        reported (``tracelet sync`` delivers it later). Calling it again
        returns the same report.
        """
        status = RunStatus(status)
        if self._ending == threading.get_ident():  # a signal handler interrupted this thread's end
            return self.report if self.report is not None else self._make_report(status)
        with self._end_lock:
            if self.report is not None:
                return self.report
            self._ending = threading.get_ident()
            # A signal handler may run `end` while this thread holds the producer
            # lock (inside log_metric): wait for it briefly, never forever.
            locked = self._lock.acquire(timeout=1.0)
            self._closed = True
            if locked:
                self._lock.release()
            deadline = time.monotonic() + self._close_timeout
            for stop_feeder in self._feeders:  # their last points go in the journal too
                try:
                    stop_feeder()
                except Exception as exc:
                    _log.warning("tracelet: stopping %r failed: %r", stop_feeder, exc)
            self._history.close(deadline)  # a refusing disk is retried until the deadline
            for delivery in self._deliveries:
                delivery.finish(status, deadline)
            for delivery in self._deliveries:
                delivery.join(deadline - time.monotonic())
            try:
                self.telemetry.shutdown(max(1.0, deadline - time.monotonic()) * 1000, status.value)
            except Exception as exc:  # never let telemetry cost the run its report
                _log.warning("tracelet: OTel shutdown failed: %r", exc)
            self.report = self._make_report(status)
            self._ending = None
            self._record_end(self.report)
        self._log_report(self.report)
        if self.report.complete and not self._keep_journal:
            self._history.path.unlink(missing_ok=True)
        return self.report

    def _make_report(self, status: RunStatus) -> RunReport:
        # Every point the run accepted, journaled or not: a lost one is undelivered.
        points = self._history.points + self._history.lost
        backends = [
            BackendReport(
                backend=d.backend,
                delivered=d.delivered,
                undelivered=points - d.delivered,
                closed=d.closed,
                error=None if d.error is None else _secrets.redact(repr(d.error)),
            )
            for d in self._deliveries
        ]
        return RunReport(self.run_id, status, points, self.run_dir, backends)

    def _record_end(self, report: RunReport) -> None:
        """Keep the final status in run.json (``tracelet sync`` closes runs with it).

        The run directory is unlocked for ``tracelet sync`` unless a delivery
        thread is still inside an export call past the deadline (then it
        stays locked until this process exits).
        """
        try:
            _rundir.update_run(
                self.run_dir,
                status=report.status.value,
                points=report.points,
                complete=report.complete,
            )
        except OSError as exc:
            _log.warning("tracelet: cannot record the end of run %s: %r", self.run_id, exc)
        for delivery in self._deliveries:  # one leaving its last backoff at the deadline
            if delivery.alive:
                delivery.join(0.5)
        if self._run_lock is not None and not any(d.alive for d in self._deliveries):
            self._run_lock.release()

    def _forget_in_child(self) -> None:
        """In a forked child: make this copy inert (see `tracelet._lifecycle`).

        Logging calls become no-ops that warn once, `end` does nothing, and
        the copy never touches the parent's journal, backends or locks.
        """
        self._closed = True
        self._lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._history.forget_in_child()
        if self._run_lock is not None:
            self._run_lock.forget_in_child()
        warned: list[bool] = []
        name, pid = self.name, os.getpid()

        def ignored(*args: Any, **kwargs: Any) -> None:
            if not warned:
                warned.append(True)
                _log.warning(
                    "tracelet: process %d is a fork of the process running experiment %r; "
                    "what it logs is not recorded (log from the parent process)",
                    pid,
                    name,
                )

        def child_end(status: RunStatus | str = RunStatus.FINISHED) -> RunReport:
            return RunReport(self.run_id, RunStatus(status), 0, self.run_dir, [])

        for method in ("log_metric", "log_metrics", "log_params", "log_param"):
            setattr(self, method, ignored)
        self.set_tags = self.set_tag = ignored  # type: ignore[method-assign]
        self.end = child_end  # type: ignore[method-assign]

    def _log_report(self, report: RunReport) -> None:
        history = self._history
        lost = (
            f"; {history.lost} points could not be written to the journal "
            f"({history.error!r}) and are lost"
            if history.lost
            else ""
        )
        for b in report.backends:
            if b.undelivered or not b.closed:
                if history.deleted:
                    where = (
                        f"; the run directory {report.run_dir} was deleted during the run, "
                        "so the rest is lost (nothing is left for tracelet sync)"
                    )
                elif b.undelivered > history.lost or not b.closed:
                    where = (
                        f"; the rest is kept in {report.run_dir}; deliver it with: "
                        f"tracelet sync {report.run_dir}"
                    )
                else:
                    where = ""
                _log.error(
                    "tracelet: run %s: backend %r received %d of %d points%s%s%s",
                    report.run_id,
                    b.backend,
                    b.delivered,
                    report.points,
                    f" (last error: {b.error})" if b.error else "",
                    lost,
                    where,
                )
            else:
                _log.info(
                    "tracelet: run %s: backend %r received all %d points (%s)",
                    report.run_id,
                    b.backend,
                    b.delivered,
                    report.status.value,
                )

    def __enter__(self) -> Experiment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from tracelet import interface

        failed = exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt,))
        status = (
            RunStatus.FAILED
            if failed
            else (RunStatus.KILLED if exc_type is not None else RunStatus.FINISHED)
        )
        interface._end(self, status)

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Experiment {self.name!r} project={self.project!r} run_id={self.run_id} {state}>"
