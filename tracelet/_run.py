"""`Run`: the owner of one tracked run, from `tracelet.start_logging` to its end.

`tracelet.Experiment` is the handle training code holds; behind it one `Run`
builds the run's parts in one pass and owns them until they are shut:

- the **history** (`_history.History`): the in-memory queue and the journal thread;
- the **delivery agent** (`_agentlink.AgentLink`): a process of its own that
  delivers the journal to the trackers, so no tracker SDK runs here; or, with
  ``delivery="thread"`` (and for the in-memory test double), one **delivery**
  per tracker (`_delivery.Delivery`) on a thread of this process;
- the **telemetry** (`_otel.Telemetry`): the run's OTel providers and instruments,
  which read the run's progress from this object when a reader collects;
- the **sampler** (`_system.SystemMetrics`) when ``track_system`` is on.

It also holds what producers record (the step of each metric, the params)
and the run's one `RunState`:

``ACTIVE`` → ``ENDING`` → ``ENDED``, or ``FORKED`` for the inert copy a forked
child inherits (`tracelet._lifecycle`).

There are few doors into the history queue, and they share one state check
and one memory bound (`History.wake` waits while ``max_buffered`` records
are queued): `Experiment.log_metric` for a point with its step (the hot
path: no lock, settled against `end` by `raced`), and, under one producer
lock, `put_next` (a point without a step), `put_sample` (the system
sampler), `put_params`, `put_tags` and `put_artifact`. And there is one end
path, `end`, which ending the run by
`Experiment.end`, `tracelet.stop_logging`, leaving a ``with`` block, SIGTERM
and interpreter exit all go through.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracelet import (
    _artifacts,
    _launch,
    _lifecycle,
    _provenance,
    _registry,
    _resume,
    _rundir,
    _secrets,
    _validate,
)
from tracelet._agentlink import AgentBackend, AgentLink
from tracelet._delivery import Delivery
from tracelet._history import History
from tracelet._journal import SAMPLE, FrameCache, Record
from tracelet._logs import brief
from tracelet._otel import TRACE_ID_TAG, Telemetry, export_interval_millis, resource_attributes
from tracelet._system import SystemMetrics
from tracelet.errors import ExperimentClosedError, ParamConflictError
from tracelet.export import RunInfo, RunStatus, TelemetryContext
from tracelet.settings import TraceletSettings

__all__ = ["BackendReport", "Run", "RunReport", "RunState"]

_log = logging.getLogger("tracelet")


class RunState(enum.Enum):
    """Where a run stands. Only ``ACTIVE`` accepts what training code logs."""

    ACTIVE = "active"
    #: `Run.end` is running: producers are refused; the sampler's last sample still goes in.
    ENDING = "ending"
    ENDED = "ended"
    #: The copy of a run a forked child inherited: logging does nothing, `end` ends nothing.
    FORKED = "forked"


_ACTIVE = RunState.ACTIVE  # read on log_metric's hot path (`Experiment.log_metric`)
_time_ns = time.time_ns


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
    #: The delivery agent was still delivering when the run ended (SIGTERM, or
    #: ``wait_for_delivery=False``): it finishes in the background.
    background: bool = False

    @property
    def complete(self) -> bool:
        """True when every backend received every point and closed its run."""
        return all(b.undelivered == 0 and b.closed for b in self.backends)


class Run:
    """One run and its parts; see the module docstring.

    Args:
        settings: the resolved settings.
        classes: the selected backends' exporter classes, by name
            (`_registry.resolve`).
        options: each backend's checked options (`_registry.build_options`).
        on_started: called on a delivery thread once its exporter started.
    """

    def __init__(
        self,
        settings: TraceletSettings,
        classes: Mapping[str, type[Any]],
        options: Mapping[str, Any],
        *,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.state = RunState.ACTIVE
        #: The producer lock: held around every append to the history queue.
        self.lock = threading.Lock()
        self.params: dict[str, Any] = {}
        self.report: RunReport | None = None
        self.close_timeout = settings.close_timeout
        self._keep_journal = settings.keep_journal
        #: Which checkpoints integrations log as artifacts (`Experiment.log_checkpoint`).
        self.log_checkpoints = settings.log_checkpoints
        #: The previous step of each metric (producers write it; `put_next` reads it).
        self.last_step: dict[str, int] = {}
        self._end_lock = threading.Lock()
        self._ender: int | None = None  # the thread running `end`, while it runs
        self._warned_child = False

        # One run id for every rank and part of a job (tracelet._launch); the
        # trackers are written by the ranks the `ranks` policy names.
        self.launch = _launch.detect(os.environ)
        self.run_id, shared = _launch.resolve_run_id(settings.run_id, self.launch)
        if not self.launch.writes_trackers(settings.ranks):
            classes = {n: c for n, c in classes.items() if _registry.is_telemetry(c)}
        previous = (
            _resume.open_previous(settings.dir, self.run_id, self.launch.rank) if shared else None
        )
        self.project = settings.project or (previous.run["project"] if previous else "default")
        self.name = settings.exp_name or (
            previous.run["name"] if previous else time.strftime("run-%Y%m%d-%H%M%S")
        )
        if previous is not None:  # the next part of a run: same directory, journal, cursors
            self.run_dir = previous.run_dir
            self._run_lock = previous.lock
            _resume.record_backends(previous, list(classes))
        else:
            self.run_dir = _rundir.new_run_dir(
                settings.dir, self.run_id, _launch.dir_suffix(self.launch)
            )
            self.run_dir.mkdir(parents=True, exist_ok=False)
            # Held while this process owns the run (tracelet sync waits for it).
            self._run_lock = _rundir.RunLock(self.run_dir)
            self._run_lock.acquire()
            _rundir.write_run(  # what `tracelet sync` needs to finish the run elsewhere; no secrets
                self.run_dir,
                run_id=self.run_id,
                project=self.project,
                name=self.name,
                backends=list(classes),
                options={n: _secrets.public_options(options[n]) for n in classes},
                extra=_launch.run_fields(self.launch, settings.ranks, shared),
            )
        info = RunInfo(
            run_id=self.run_id,
            project=self.project,
            name=self.name,
            **_launch.info_fields(_launch.run_fields(self.launch, settings.ranks, shared)),
        )
        # Telemetry backends (otlp, prometheus) feed the OTel providers; the others
        # are trackers, fed the history by the delivery agent (or Delivery threads).
        telemetry_classes = {n: c for n, c in classes.items() if _registry.is_telemetry(c)}
        trackers = {n: c for n, c in classes.items() if n not in telemetry_classes}
        # Git and environment are read now: the vcs.* attributes belong on the
        # Resource, which is fixed when the provider is created.
        provenance = _provenance.capture(git=settings.track_git, env=settings.track_env)

        # The in-memory test double stays here: tests read what it received in this process.
        by_agent = [
            n for n in trackers if settings.delivery == "agent" and n not in _registry.TEST_DOUBLES
        ]
        self.history = History(
            self.run_dir / _rundir.JOURNAL_FILE,
            flush_interval=settings.flush_interval,
            max_buffered=settings.max_buffered_points,
            on_names=self._new_names,
            # Delivery threads here read the frames the writer made, not the file.
            cache=FrameCache() if len(by_agent) < len(trackers) else None,
        )
        #: Queue length at which a producer wakes the journal writer.
        self.wake_at = self.history.wake_at
        self._info = info
        self._classes, self._options = trackers, options
        # Captured artifact files go once every tracker has made them durable (the
        # agent frees them the same way for the backends it delivers).
        self._reaper = _artifacts.Reaper(
            self.run_dir, [_rundir.state_path(self.run_dir, n) for n in trackers]
        )
        self._wait = settings.wait_for_delivery
        self._fallback_lock = threading.Lock()
        self._fell_back = False
        # A run continued (`_resume`) starts each backend at its saved cursor.
        resumed = previous is not None
        self.deliveries: list[Delivery | AgentBackend] = [
            self._delivery(n, on_started, restore=resumed) for n in trackers if n not in by_agent
        ]
        self._agent: AgentLink | None = None
        if by_agent:
            try:
                self._agent = AgentLink(
                    self.run_dir,
                    {n: options[n] for n in by_agent},
                    lock_fd=self._run_lock.fileno(),
                    close_timeout=settings.close_timeout,
                    grace=settings.agent_grace,
                    keep_journal=settings.keep_journal,
                    trackers=list(trackers),
                    on_lost=self._agent_lost,
                )
            except Exception as exc:  # no process can be started here: threads instead
                _log.warning(
                    "cannot start the delivery agent (%s); delivering from this process",
                    brief(exc),
                )
                if self.history.cache is None:  # threads here now: they read the writer's frames
                    self.history.cache = FrameCache()
                self.deliveries += [
                    self._delivery(n, on_started, restore=resumed) for n in by_agent
                ]
            else:
                self.deliveries += [AgentBackend(self._agent, n) for n in by_agent]
        if previous is not None:
            self.history.points = previous.points  # what the journal holds already
        # No tracker to feed (a rank that writes none): nothing is journaled;
        # the metrics' names still get their OTel gauges.
        names_only = None if trackers else _launch.NamesOnly(self._new_names)
        #: What producers append their records to: the history queue.
        self.queue: Any = self.history.queue if names_only is None else names_only
        # Who keeps the telemetry view (`points`, `step`, `latest`): the journal
        # writer, from what it writes, so that log_metric keeps no counters.
        self._view: History | _launch.NamesOnly = self.history if names_only is None else names_only
        self.telemetry = Telemetry(
            {
                **resource_attributes(self.run_id, self.project, self.name),
                **_launch.resource(self.launch, self.run_id),
                **provenance.resource,
            },
            self._view.latest,
            self,
            backends={n: c(options[n]) for n, c in telemetry_classes.items()},
            context=TelemetryContext(
                info, export_interval_millis(settings.metrics_interval, os.environ)
            ),
        )
        self.sampler = (
            SystemMetrics(
                interval=settings.metrics_interval, put=self.put_sample, telemetry=self.telemetry
            )
            if settings.track_system and self.launch.samples_system()  # once per node
            else None
        )
        _lifecycle.track(self)

        if provenance.tags:
            self.put_tags(_validate.tags(provenance.tags))
        if self.telemetry.exports_traces:  # links each tracker run to the run's trace
            self.put_tags({TRACE_ID_TAG: self.telemetry.trace_id})
        if self.sampler is not None:
            self.sampler.start()
        for delivery in self._local():
            delivery.start()

    def _delivery(
        self, backend: str, on_started: Callable[[], None] | None = None, restore: bool = False
    ) -> Delivery:
        """A delivery thread of this process for `backend` (not started)."""
        path = _rundir.state_path(self.run_dir, backend)
        state = _rundir.read_state(path) if restore else {}
        info = self._info
        if state.get("resume"):
            info = dataclasses.replace(info, resume=state["resume"])
        delivery = Delivery(
            backend,
            self._classes[backend](self._options[backend]),
            info,
            self.history,
            path,
            on_started=on_started,
        )
        if state:
            delivery.restore(state)
        delivery.on_artifact = self._reaper
        return delivery

    def _local(self) -> list[Delivery]:
        return [d for d in self.deliveries if isinstance(d, Delivery)]

    def _agent_lost(self, code: int, ending: bool = False) -> None:
        """The agent stopped before it was done: deliver from here, from its saved cursors.

        Called by the agent link's watchdog (the agent died during the run) or
        by `end` (it died while the run was closing). Every point is in the
        journal, and each backend's cursor and resume state in the run
        directory: the deliveries made here go on where the agent stopped,
        each point once, as ``tracelet sync`` would.
        """
        with self._fallback_lock:
            link = self._agent
            if link is None or self._fell_back or self.state is RunState.FORKED:
                return
            self._fell_back = True
            _log.warning(
                "the delivery agent of run %s stopped (%s); delivering from this process "
                "instead (every point is in the journal)",
                self.run_id,
                link.failure(),
            )
            if self.history.cache is None:
                self.history.cache = FrameCache()
            moved = [self._delivery(n, restore=True) for n in link.backends]
            self.deliveries = [d for d in self.deliveries if not isinstance(d, AgentBackend)]
            self.deliveries += moved
            for delivery in moved:
                delivery.start()

    def _new_names(self, names: set[str]) -> None:
        """Metric names the journal saw for the first time: each gets its OTel gauge."""
        self.telemetry.observe(names)

    # -- the doors into the history queue ----------------------------------------

    # `Experiment.log_metric` queues a point with its step itself: the hot path
    # of training code, measured inside a training loop (`benchmarks/bench_loop.py`),
    # where each call frame, lock and counter counts. It takes no lock: it
    # checks `state`, records the step in `last_step`, appends its record to
    # `queue` (an atomic append), checks `state` again and, if the run began
    # to end meanwhile, hands the record to `raced`; then it wakes the journal
    # writer past `wake_at`. It keeps no counters: the writer does (`points`,
    # `step`, the latest values), from what it writes.

    @property
    def points(self) -> int:
        """Metric points logged so far (system samples aside), written or queued."""
        return self._view.view()[0]

    @property
    def step(self) -> int:
        """The highest step logged so far; -1 before the first point."""
        return self._view.view()[1]

    def put_next(self, name: str, value: float) -> None:
        """Queue a point without a step: one past the metric's previous step (0 at first).

        Under the producer lock, so the step is given and queued in one move:
        no two threads give one metric the same step, and steps follow the
        queue (the order points are delivered in).

        Raises:
            ExperimentClosedError: the run has ended or is ending.
        """
        lock = self.lock
        lock.acquire()  # not `with`: cheaper, and this path is hot too
        try:
            if self.state is not _ACTIVE:
                self._refuse()
                return
            step = self.last_step.get(name, -1) + 1
            self.last_step[name] = step
            self.queue.append((name, value, step, _time_ns()))
        finally:
            lock.release()
        if len(self.queue) >= self.wake_at:
            self.history.wake()

    def raced(self, record: Record) -> None:
        """A point queued as `end` began: accept it if it was journaled, else refuse it.

        The history's last pass (`History.close`) writes, or counts as lost,
        everything queued before it; a record queued after it is refused
        here, so the caller knows it was not recorded.

        Raises:
            ExperimentClosedError: `record` came too late to be journaled.
        """
        self.history.closed.wait(self.close_timeout + 10.0)
        if self.history.orphaned(record):
            self._refuse()

    def put_sample(self, series: Mapping[str, float], step: int) -> bool:
        """Queue one system sample (`_system.SystemMetrics`), all at `step`.

        The door for a feeder that is not training code: system
        series keep their own steps (the sample index) and count neither in
        the run's step nor in its points (``tracelet.step``,
        ``tracelet.points``), and the last sample is still taken while the run
        is ending (the sampler is stopped before the history closes). False
        when the run takes no more samples.
        """
        with self.lock:
            if self.state is not _ACTIVE and self.state is not RunState.ENDING:
                return False
            now = time.time_ns()
            points = [(name, value, step, now) for name, value in series.items()]
            if points:  # one record: the writer counts its points apart
                self.queue.append((SAMPLE, points))
        if len(self.queue) >= self.wake_at:
            self.history.wake()
        return True

    def put_params(self, flat: Mapping[str, Any]) -> None:
        """Queue the params of `flat` not logged before (`Experiment.log_params`).

        Raises:
            ParamConflictError: a param already logged with another value; none is queued.
            ExperimentClosedError: the run has ended.
        """
        with self.lock:
            if self.state is not _ACTIVE:
                self._refuse()
                return
            for key, value in flat.items():
                old = self.params.get(key, value)
                if not _validate.same_param(old, value):
                    raise ParamConflictError(
                        f"param {key!r} was logged as {old!r}; it cannot change to {value!r}. "
                        f"Log it under a new name, e.g. {key + '_2'!r}"
                    )
            new = {k: v for k, v in flat.items() if k not in self.params}
            if new:
                self.params.update(new)
                self.queue.append(("p", new))

    def put_tags(self, tags: dict[str, str]) -> None:
        """Queue checked tags (`Experiment.set_tags`).

        Raises:
            ExperimentClosedError: the run has ended.
        """
        with self.lock:
            if self.state is not _ACTIVE:
                self._refuse()
                return
            self.queue.append(("t", tags))

    def put_artifact(self, artifact: Any) -> None:
        """Queue a captured artifact (`tracelet._artifacts`); written at once.

        Raises:
            ExperimentClosedError: the run has ended.
        """
        with self.lock:
            if self.state is not _ACTIVE:
                self._refuse()
                return
            self.queue.append(("a", artifact.to_json()))
        self.history.wake()

    def _refuse(self) -> None:
        if self.state is RunState.FORKED:
            if not self._warned_child:
                self._warned_child = True
                _log.warning(
                    "process %d is a fork of the process running experiment %r; "
                    "what it logs is not recorded (log from the parent process)",
                    os.getpid(),
                    self.name,
                )
            return
        raise ExperimentClosedError(f"experiment {self.name!r} has ended; start a new one")

    # -- the end path ----------------------------------------------------------------

    def ending_here(self) -> bool:
        """True while the calling thread is inside `end` (a signal handler interrupted it)."""
        return self._ender == threading.get_ident()

    def end(self, status: RunStatus) -> RunReport:
        """End the run: deliver every point, close the tracker runs, report.

        Waits at most ``close_timeout`` for the backends. What a backend has
        not received by then stays in the run's journal and is reported
        (``tracelet sync`` delivers it later). Calling it again returns the
        same report.
        """
        if self.state is RunState.FORKED:
            return RunReport(self.run_id, status, 0, self.run_dir, [])
        if self.ending_here():  # a signal handler interrupted this thread's end
            return self.report if self.report is not None else self._make_report(status)
        with self._end_lock:
            if self.report is not None:
                return self.report
            self._ender = threading.get_ident()
            # A signal handler may run `end` while this thread holds the producer
            # lock (inside log_metric): wait for it briefly, never forever.
            locked = self.lock.acquire(timeout=1.0)
            self.state = RunState.ENDING
            if locked:
                self.lock.release()
            deadline = time.monotonic() + self.close_timeout
            if self.sampler is not None:  # its last sample goes in the journal too
                try:
                    self.sampler.stop()
                except Exception as exc:
                    _log.warning("stopping the system sampler failed: %r", exc)
            self.history.close(deadline)  # a refusing disk is retried until the deadline
            background = self._deliver_rest(status)
            try:
                self.telemetry.shutdown(max(1.0, deadline - time.monotonic()) * 1000, status.value)
            except Exception as exc:  # never let telemetry cost the run its report
                _log.warning("OTel shutdown failed: %r", exc)
            self.report = self._make_report(status, background)
            self._ender = None
            self._record_end(self.report)
            self.history.close_reader()
            self.state = RunState.ENDED
        self._log_report(self.report)
        if self.report.complete and not self._keep_journal:
            self.history.path.unlink(missing_ok=True)
        if not self.report.background:  # else the agent frees them once it is done
            _artifacts.release(self.run_dir, delivered=self.report.complete)
        return self.report

    def _deliver_rest(self, status: RunStatus) -> bool:
        """Let every backend take what is journaled and close its run; True if left to the agent.

        Each backend gets ``close_timeout`` seconds *without progress*: a slow
        but live one is waited for, a dead or hung one given up on. The
        agent is not waited for after SIGTERM (the trainer exits promptly; the
        agent delivers the rest) nor with ``wait_for_delivery=False``.
        """
        patience = self.close_timeout
        link = None if self._fell_back else self._agent
        if link is not None:
            try:  # what sync needs if the agent dies too; before "end", the agent's last word
                _rundir.update_run(
                    self.run_dir,
                    status=status.value,
                    points=self.history.points + self.history.lost,
                )
            except OSError as exc:
                _log.warning("cannot record the end of run %s: %r", self.run_id, exc)
            link.end(status, cleanup=not self._local())
        for delivery in self._local():
            delivery.finish(status, time.monotonic() + patience, patience)
        if link is not None:
            if not self._wait or _lifecycle.received is not None:
                self._join_local()
                return link.alive
            done = link.wait(self.run_id, self.history.points, patience)
            if not done:
                self._join_local()
                return True
            if link.status(fresh=True).get("state") != "done":  # it died while closing
                self._agent_lost(link.proc.returncode or 0)
                for delivery in self._local():
                    delivery.finish(status, time.monotonic() + patience, patience)
        self._join_local()
        return False

    def _join_local(self) -> None:
        for delivery in self._local():
            while delivery.alive and time.monotonic() < delivery.deadline:
                delivery.join(0.25)

    def _make_report(self, status: RunStatus, background: bool = False) -> RunReport:
        # Every point the run accepted, journaled or not: a lost one is undelivered.
        points = self.history.points + self.history.lost
        backends = [
            BackendReport(
                backend=d.backend,
                delivered=d.delivered,
                undelivered=points - d.delivered,
                closed=d.closed,
                error=_error(d.error),
            )
            for d in self.deliveries
        ]
        return RunReport(self.run_id, status, points, self.run_dir, backends, background)

    def _record_end(self, report: RunReport) -> None:
        """Keep the final status in run.json (``tracelet sync`` closes runs with it).

        The run directory is unlocked for ``tracelet sync`` unless a delivery
        thread is still inside an export call past the deadline (then it
        stays locked until this process exits).
        """
        if not report.background:  # else the agent is the last to write run.json
            try:
                _rundir.update_run(
                    self.run_dir,
                    status=report.status.value,
                    points=report.points,
                    complete=report.complete,
                )
            except OSError as exc:
                _log.warning("cannot record the end of run %s: %r", self.run_id, exc)
        local = self._local()
        for delivery in local:  # one leaving its last backoff at the deadline
            if delivery.alive:
                delivery.join(0.5)
        if not any(d.alive for d in local):  # the agent holds the lock on its own while it runs
            self._run_lock.release()

    def _log_report(self, report: RunReport) -> None:
        history = self.history
        if report.background:
            _log.warning(
                "run %s ended %s; the delivery agent goes on delivering in the background "
                "(%s) and then ends the tracker runs %s",
                report.run_id,
                report.status.value,
                ", ".join(f"{b.backend} {b.delivered} of {report.points}" for b in report.backends),
                report.status.value,
            )
            return
        lost = (
            f"; {history.lost} points could not be written to the journal "
            f"({brief(history.error)}) and are lost"
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
                    "run %s: backend %r received %d of %d points%s%s%s",
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
                    "run %s: backend %r received all %d points (%s)",
                    report.run_id,
                    b.backend,
                    b.delivered,
                    report.status.value,
                )

    # -- fork --------------------------------------------------------------------------

    def _forget_in_child(self) -> None:
        """In a forked child: make this copy inert (see `tracelet._lifecycle`).

        Logging calls do nothing and warn once, `end` ends nothing, and the
        copy never touches the parent's journal, backends or locks.
        """
        self.state = RunState.FORKED
        self.lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._ender = None
        self.history.forget_in_child()
        self._run_lock.forget_in_child()
        if self._agent is not None:
            self._agent.forget_in_child()


def _error(error: BaseException | str | None) -> str | None:
    """A backend's last error, in a line, secrets masked (the agent reports a line already)."""
    if error is None:
        return None
    return _secrets.redact(error if isinstance(error, str) else brief(error))
