"""`Experiment`: the handle training code logs into.

Where a point travels: `log_metric` validates it and puts
``(name, value, step, time_ns)`` through the run's door (`_run.Run.put`) into
the history queue (`_history.History`), updating the latest value the OTel
gauges read (`_otel.Telemetry`). The journal
thread writes the queue to the run journal; one delivery thread per backend
(`_delivery.Delivery`) reads the journal and calls its exporter, e.g.
`tracelet.exporters.mlflow.MLflowExporter.export` → ``MlflowClient.log_batch``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tracelet import _artifacts, _lifecycle, _validate
from tracelet._agentlink import AgentBackend
from tracelet._delivery import Delivery
from tracelet._history import History
from tracelet._otel import Telemetry
from tracelet._run import BackendReport, Run, RunReport, RunState
from tracelet._tracing import SpanScope
from tracelet.export import Artifact, RunStatus
from tracelet.integrations import _auto

__all__ = ["BackendReport", "Experiment", "RunReport"]

# Read on log_metric's hot path.
_ACTIVE = RunState.ACTIVE
_MAX_STEP = _validate.MAX_STEP
_time_ns = time.time_ns


class Experiment:
    """A run being tracked. Create it with `tracelet.start_logging`.

    Thread-safe: any thread may log into it; the points of one metric are
    delivered in the order of the calls. The run itself (its threads, journal
    and backends) is owned by a `tracelet._run.Run`; this is its handle.
    """

    def __init__(self, run: Run) -> None:
        self.run_id = run.run_id
        self.name = run.name
        self.project = run.project
        self.run_dir: Path = run.run_dir
        self._run = run
        self._queue = run.queue  # bound once: log_metric's hot path
        self._wake_at = run.wake_at
        self._artifacts = _artifacts.ArtifactStore(run.run_dir)

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
        # The hot path of training code; see "the doors into the history queue"
        # in tracelet._run for the protocol (no lock; settled against `end`).
        if type(name) is not str or not name:
            name = _validate.metric_name(name)
        if type(value) is not float:
            try:
                value = float(value) if type(value) is int else _validate.metric_value(name, value)
            except OverflowError:  # an int beyond float range
                value = _validate.metric_value(name, value)
        if iteration is None:
            self._run.put_next(name, value)
            return
        if type(iteration) is not int or iteration < 0 or iteration > _MAX_STEP:
            iteration = _validate.step(name, iteration)
        run = self._run
        if run.state is not _ACTIVE:
            run._refuse()
            return
        run.last_step[name] = iteration
        record = (name, value, iteration, _time_ns())
        self._queue.append(record)
        if run.state is not _ACTIVE:  # the run began to end since the check
            run.raced(record)
        if len(self._queue) >= self._wake_at:
            run.history.wake()

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
        self._run.put_params(_validate.flatten(params))

    def log_param(self, key: str, value: Any) -> None:
        """Record one hyperparameter (see `log_params`)."""
        self.log_params({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values become strings); a tag set again is overwritten."""
        self._run.put_tags(_validate.tags(tags))

    def set_tag(self, key: str, value: Any) -> None:
        """Set one run tag (see `set_tags`)."""
        self.set_tags({key: value})

    # -- artifacts and media (tracelet._artifacts) -----------------------------------

    def log_artifact(
        self, path: str | os.PathLike[str], name: str | None = None
    ) -> Artifact | None:
        """Record a file or a directory as it is now; uploaded to every backend.

        Its content is captured before the call returns (a copy-on-write clone
        or a streamed copy into the run directory, hashed), so rewriting or
        deleting the file afterwards changes nothing that is delivered. The
        upload happens off the training thread, retried until it succeeds.

        Args:
            path: a file or a directory (its files, recursively).
            name: its path inside the run (default: the file or directory name),
                e.g. ``"model/weights.pt"``.

        Returns:
            What was recorded (name, files, hashes, sizes); None in a forked child.

        Raises:
            FileNotFoundError: nothing at `path`.
            PermissionError: a file cannot be read.
            ValueError: `name` is empty, absolute or escapes the run (``..``).
            ExperimentClosedError: the experiment has ended.
        """
        if not _artifacts.accepting(self._run):
            return None
        return _artifacts.log_artifact(self._run, self._artifacts, path, name)

    def log_text(self, text: str, name: str) -> Artifact | None:
        """Record `text` as the UTF-8 file `name` inside the run (e.g. ``"notes/summary.md"``)."""
        if not _artifacts.accepting(self._run):
            return None
        return _artifacts.log_text(self._run, self._artifacts, text, name)

    def log_dict(self, data: dict[str, Any], name: str) -> Artifact | None:
        """Record `data` as the file `name`: YAML for ``.yaml``/``.yml`` (needs PyYAML), else JSON.

        Raises:
            TypeError: `data` cannot be written in that format.
            ImportError: YAML asked for and PyYAML is not installed.
        """
        if not _artifacts.accepting(self._run):
            return None
        return _artifacts.log_dict(self._run, self._artifacts, data, name)

    def log_figure(self, figure: Any, name: str, iteration: int | None = None) -> Artifact | None:
        """Record a matplotlib figure as a PNG (rendered now); ``.png`` is added to a bare name.

        With `iteration`, trackers show it as an image at that step.
        """
        if not _artifacts.accepting(self._run):
            return None
        step = None if iteration is None else _validate.step(str(name), iteration)
        return _artifacts.log_figure(self._run, self._artifacts, figure, name, step)

    def log_image(self, image: Any, name: str, iteration: int | None = None) -> Artifact | None:
        """Record an image: a numpy array, a PIL image, or an image file.

        An array is HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA), uint8 or float
        in [0, 1]; arrays and PIL images are stored as PNG (``.png`` added to
        a bare name), an image file as it is. With `iteration`, trackers show
        it as an image at that step.

        Raises:
            ValueError: a wrong shape, float values outside [0, 1], a file that
                is not an image.
            TypeError: a wrong dtype or type.
        """
        if not _artifacts.accepting(self._run):
            return None
        step = None if iteration is None else _validate.step(str(name), iteration)
        return _artifacts.log_image(self._run, self._artifacts, image, name, step)

    def log_checkpoint(
        self, path: str | os.PathLike[str], *, best: bool = False
    ) -> Artifact | None:
        """Log a checkpoint a framework saved, as the ``log_checkpoints`` setting asks.

        For framework integrations (Lightning's ``after_save_checkpoint``, the
        transformers callback's ``on_save``): ``off`` logs nothing, ``all``
        every checkpoint as ``checkpoints/<name>``, ``last`` each one as
        ``checkpoints/last<suffix>`` (replacing the previous), ``best`` only
        those called with ``best=True``, as ``checkpoints/best<suffix>``.

        Returns:
            What was recorded, or None when the setting leaves it out.
        """
        name = _artifacts.checkpoint_name(Path(path), self._run.log_checkpoints, best)
        if name is None:
            return None
        return self.log_artifact(path, name)

    @property
    def artifact_bytes(self) -> int:
        """Bytes this run's artifacts captured into the run directory so far.

        Each copy is removed once every tracker backend has it
        (``docs/concepts/artifacts.md``), so the disk held is at most this.
        """
        return self._artifacts.bytes

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
        return self._run.telemetry.span(name, attributes)

    @property
    def trace_id(self) -> str:
        """The run's OTel trace id, 32 hex digits.

        When a backend exports traces (``otlp``), every tracker run carries it
        as the tag ``tracelet.trace_id``.
        """
        return self._run.telemetry.trace_id

    @property
    def step(self) -> int | None:
        """The highest step logged so far (``None`` before the first point)."""
        step = self._run.step
        return None if step < 0 else step

    @property
    def params(self) -> dict[str, Any]:
        """The params logged so far (flattened)."""
        return dict(self._run.params)

    @property
    def active(self) -> bool:
        """True until the run starts ending."""
        return self._run.state is RunState.ACTIVE

    @property
    def report(self) -> RunReport | None:
        """The run's account, once it has ended (what `end` returned)."""
        return self._run.report

    @property
    def telemetry(self) -> Telemetry:
        """The run's OTel side (providers, instruments)."""
        return self._run.telemetry

    @property
    def _history(self) -> History:  # the run's parts, for tests and benchmarks
        return self._run.history

    @property
    def _deliveries(self) -> Sequence[Delivery | AgentBackend]:
        return self._run.deliveries

    # -- ending -----------------------------------------------------------------

    def end(self, status: RunStatus | str = RunStatus.FINISHED) -> RunReport:
        """End the run: deliver every point, close the tracker runs, report.

        Waits at most the `close_timeout` setting for the backends. What a
        backend has not received by then stays in the run's journal and is
        reported (``tracelet sync`` delivers it later). Calling it again
        returns the same report. Afterwards `tracelet.get_active_experiment`
        no longer returns this experiment.

        Every way a run ends comes here: `tracelet.stop_logging`, leaving the
        ``with`` block, a new `tracelet.start_logging`, SIGTERM and
        interpreter exit.
        """
        report = self._run.end(RunStatus(status))
        _deactivate(self)
        if _active is None:  # the framework capture of the run ends with it
            _auto.uninstall()
        _lifecycle.after_end()  # a SIGTERM that arrived while this thread was ending the run
        return report

    def __enter__(self) -> Experiment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(_exit_status(exc_type, exc))

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Experiment {self.name!r} project={self.project!r} run_id={self.run_id} {state}>"


def _exit_status(exc_type: type[BaseException] | None, exc: BaseException | None) -> RunStatus:
    """How leaving a ``with`` block ends the run.

    Ctrl-C is KILLED. ``sys.exit()``, ``sys.exit(0)`` and ``sys.exit(None)``
    are a clean exit (FINISHED); another code or a message (the process exits
    with a non-zero status) and any other exception are FAILED.
    """
    if exc_type is None:
        return RunStatus.FINISHED
    if issubclass(exc_type, KeyboardInterrupt):
        return RunStatus.KILLED
    if isinstance(exc, SystemExit) and (exc.code is None or exc.code == 0):
        return RunStatus.FINISHED
    return RunStatus.FAILED


# -- the active experiment -------------------------------------------------------
# One per process: the one started last and not yet ended. Kept here, beside
# `Experiment.end`, which every way of ending a run goes through.

#: Held while `tracelet.start_logging` replaces the active run, and to change the slot.
slot_lock = threading.RLock()
_active: Experiment | None = None


def active() -> Experiment | None:
    """The active experiment, or ``None`` (also while its run is ending)."""
    exp = _active
    return exp if exp is not None and exp.active else None


def activate(exp: Experiment) -> None:
    global _active
    with slot_lock:
        _active = exp


def _deactivate(exp: Experiment) -> None:
    global _active
    with slot_lock:
        if _active is exp:
            _active = None


def end_active(status: RunStatus) -> bool:
    """End the active run with `status`; harmless when there is none.

    `tracelet.stop_logging`, a new `tracelet.start_logging`, SIGTERM and
    interpreter exit come here. A run another thread is ending is waited for.
    Returns False, ending nothing, when the calling thread is itself inside
    that run's end (a signal handler interrupted it): the caller finishes it.
    """
    exp = _active
    if exp is None:
        return True
    if exp._run.ending_here():
        return False
    exp.end(status)
    return True


def _forget_active_in_child() -> None:
    """In a forked child: no active run (its copy is inert), a fresh lock."""
    global slot_lock, _active
    slot_lock = threading.RLock()
    _active = None


_lifecycle.on_fork_child(_forget_active_in_child)
