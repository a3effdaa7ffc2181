"""ClearML exporter: one ClearML task per tracelet run, written with ``Logger.report_scalar``.

- ``project`` → project_name, ``exp_name`` → task_name; ``config`` takes what
  ClearML users pass to ``Task.init`` (task type, tags, output_uri, the
  ``auto_*`` switches, ``continue_last_task``).
- Metric ``a/b`` → title ``a``, series ``b`` (split at the last ``/``); the
  step is the iteration, unchanged (see `tracelet.exporters._clearml_translate`).
- Params → hyperparameters in section ``General`` (stored as text by ClearML);
  tags → task tags (``key:value`` labels). The user property
  ``tracelet_run_id`` links the task to the run, ``tracelet_status`` records
  how it ended; a FAILED run is marked failed, a KILLED one stopped.
- Artifacts (`tracelet.export.Artifact`) go up with ``Task.upload_artifact``
  under their name (a directory as ClearML packs folders, a zip), waiting for
  the upload; an image or figure logged with an iteration is also a debug
  image (``Logger.report_image``, title/series split like metric names) at that
  iteration. An artifact uploaded again replaces itself; a debug image
  replayed after a crash is skipped like the points (`tracelet.exporters._replay`).
- NaN is left out of the plot and ±inf is sent as ±3.4e38, unless
  ``nan_value``/``inf_value`` say otherwise: ClearML cannot store either, and
  would otherwise turn both into 0.0.

Defaults that differ from ``Task.init``'s, each because of a measured cost
(``docs/backends/clearml.md``): reports are sent from a thread instead of a
forked subprocess (10,000 scalars took 15.8 s with the subprocess, and close
sometimes hung for minutes), no repository scan (the scan raced with that fork),
no resource monitor (tracelet samples the host itself), and no capture of
stdout/stderr, argparse or frameworks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tracelet.export import (
    Artifact,
    Batch,
    ExporterOptions,
    ExportResult,
    MetricPoint,
    RunInfo,
    RunStatus,
    TrackerExporter,
)
from tracelet.exporters._artifact_files import media_key, staged
from tracelet.exporters._clearml_translate import (
    FLOAT32_MAX,
    frameworks,
    hyperparameters,
    scalar_value,
    title_series,
)
from tracelet.exporters._replay import Entry, RetryMark, StoredTail, pending_entries
from tracelet.exporters._translate import TagLabels, UniqueNames, suffix
from tracelet.toolkit import line_start

_log = logging.getLogger("tracelet")

#: The offline session's file of metric events (one JSON list of events per line).
EVENTS_FILE = "metrics.jsonl"
#: Where ClearML marks the process that owns the task (its own name and the old one).
_MASTER_ENV = ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID")

TaskType = Literal[
    "training",
    "testing",
    "inference",
    "data_processing",
    "application",
    "monitor",
    "controller",
    "optimizer",
    "service",
    "qc",
    "custom",
]


class ClearMLOptions(ExporterOptions):
    """What ``config`` may carry for ClearML (most of it goes to ``Task.init``)."""

    #: ClearML task type.
    task_type: TaskType = "training"
    #: Task tags: a list of labels, or a dict (each item becomes ``key:value``).
    tags: dict[str, str] | list[str] | None = None
    #: Where ClearML uploads models and artifacts (``Task.init(output_uri=...)``).
    output_uri: str | bool | None = None
    #: Reuse the last task of this name that holds no data (ClearML's default is True).
    reuse_last_task_id: bool | str = False
    #: Continue a previous task (True: the last one of this name; or a task id).
    continue_last_task: bool | str | int = False
    #: ClearML's framework auto-logging (matplotlib, pytorch models, tensorboard ...).
    auto_connect_frameworks: bool | dict[str, Any] = False
    #: Let ClearML scan the git repository (slow, and raced with its fork).
    detect_repository: bool = False
    #: Let ClearML record argparse arguments as hyperparameters.
    auto_connect_arg_parser: bool | dict[str, bool] = False
    #: Let ClearML copy stdout/stderr/logging into the task's console.
    auto_connect_streams: bool | dict[str, bool] = False
    #: Let ClearML sample CPU/GPU itself (tracelet's system metrics do that).
    auto_resource_monitoring: bool | dict[str, Any] = False
    #: Hyperparameter section the params go to.
    params_section: str = "General"
    #: What NaN is reported as; None leaves NaN points out of the plot.
    nan_value: float | None = None
    #: What +inf is reported as (-inf as its negative).
    inf_value: float = FLOAT32_MAX


class ClearMLExporter(TrackerExporter):
    """Backend ``"clearml"``."""

    name = "clearml"
    options = ClearMLOptions
    requires = ("clearml",)
    extra = "clearml"
    config: ClearMLOptions

    def start(self, run: RunInfo) -> dict[str, Any]:
        from clearml import Task

        cfg = self.config
        _report_from_threads(Task)
        previous = (run.resume or {}).get("task_id")
        # After a crash, the replayed points this task's offline session stored
        # past the durable cursor are skipped (see tracelet.exporters._replay).
        try:
            stored = stored_events(run.resume or {})
        except Exception as exc:  # never fail the start for it: at worst, a point twice
            _log.warning("could not read what ClearML stored before: %r", exc)
            stored = []
        self._tags = TagLabels("ClearML", cfg.tags)
        current: Task | None = Task.current_task()
        self._owned = current is None or bool(previous)
        if current is not None and not previous:
            # ClearML allows one task per process: log into the one the code opened.
            _log.info("logging into ClearML task %s, opened by this process", current.id)
            self._task = current
            self._tags.base = [*(current.get_tags() or []), *self._tags.base]
            current.set_tags(self._tags.labels)
        else:
            resume = previous or cfg.continue_last_task
            _forget_earlier_exits(Task)
            self._master_env = {k: os.environ.get(k) for k in _MASTER_ENV}
            with _own_task(run.rank is not None):
                self._task = self._init(Task, run, resume)
            if not isinstance(self._task, Task):
                raise RuntimeError(
                    "ClearML returned a stub instead of a task: it takes this process for a "
                    "child of the process named in CLEARML_PROC_MASTER_ID="
                    f"{os.environ.get('CLEARML_PROC_MASTER_ID')!r} (inherited from the process "
                    "that started this one); remove that variable from this process's environment"
                )
            if resume:
                # ClearML offsets a continued task's iterations; tracelet's steps stay exact.
                self._task.set_initial_iteration(0)
        _stop_following_forks()
        self._task.set_user_properties(tracelet_run_id=run.run_id)
        if run.rank is not None:
            self._task.set_user_properties(tracelet_rank=str(run.rank))
        self._logger = self._task.get_logger()
        self._names = UniqueNames[tuple[str, str]](lambda pair, n: (pair[0], suffix(pair[1], n)))
        self._nan_seen: set[str] = set()
        self._retry = RetryMark[MetricPoint]()
        folder = self._task.get_offline_mode_folder() if Task.is_offline() else None
        self._events = Path(folder) / EVENTS_FILE if folder else None
        self._state = {
            "task_id": self._task.id,
            "offline": Task.is_offline(),
            "offline_folder": str(folder) if folder else None,
        }
        self._tail = StoredTail([*pending_entries(run.resume or {}), *stored], "ClearML")
        return self.resume_state()

    def _init(self, task_cls: Any, run: RunInfo, resume: Any) -> Any:
        cfg, Task = self.config, task_cls
        return Task.init(
            project_name=run.project,
            # All-ranks mode: each rank writes a task of its own (offline, a task
            # is a session folder with one writer).
            task_name=run.name if not run.rank else f"{run.name} rank{run.rank}",
            task_type=Task.TaskTypes(cfg.task_type),
            tags=self._tags.labels or None,
            reuse_last_task_id=cfg.reuse_last_task_id,
            continue_last_task=resume,
            output_uri=cfg.output_uri,
            auto_connect_arg_parser=cfg.auto_connect_arg_parser,
            auto_connect_frameworks=frameworks(cfg.auto_connect_frameworks, cfg.detect_repository),
            auto_resource_monitoring=cfg.auto_resource_monitoring,
            auto_connect_streams=cfg.auto_connect_streams,
        )

    def resume_state(self) -> dict[str, Any]:
        """The resume state, with the mark: events past `events_from` are past the cursor.

        Offline only: a ClearML server keeps one scalar per (iteration, title,
        series), so a replay there overwrites what it holds with the same values.
        """
        events = self._events
        mark = (events.stat().st_size if events.exists() else 0) if events else None
        return {**self._state, "events_from": mark, "pending": self._tail.pending()}

    @property
    def task(self) -> Any:
        """The ``clearml.Task`` (after `start`)."""
        return self._task

    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        cfg, task = self.config, self._task
        if batch.params:
            task.update_parameters(hyperparameters(batch.params, cfg.params_section))
        if batch.tags:
            task.set_tags(self._tags.update(batch.tags))
        for artifact in batch.artifacts:
            self._upload(artifact)
        points = batch.metrics
        if not points:
            return ExportResult.SUCCESS
        report, names = self._logger.report_scalar, self._names
        tail = self._tail if self._tail else None  # resumed after a crash: points to skip
        # A retried batch goes on at the point a failed attempt could not report.
        for name, value, step, _ in self._retry.items(points, list):
            pair = names.get(name) or self._pair(name)
            if not math.isfinite(value):
                converted = scalar_value(value, cfg.nan_value, cfg.inf_value)
                if converted is None:
                    self._left_out(name, step)
                    continue
                value = converted
            if tail is not None and tail.holds(event_key(*pair), step):
                continue  # the task stored it before the crash
            report(pair[0], pair[1], value, step)
        return ExportResult.SUCCESS

    def _upload(self, artifact: Artifact) -> None:
        """``upload_artifact`` under the artifact's name; an image at a step, a debug image too."""
        with staged(artifact) as path:
            if not self._task.upload_artifact(
                artifact.name,
                artifact_object=path,
                metadata={"sha256": artifact.files[0].sha256} if not artifact.is_dir else None,
                wait_on_upload=True,
            ):
                raise RuntimeError(f"ClearML did not upload artifact {artifact.name!r}")
            if not (artifact.is_image and artifact.step is not None):
                return
            title, series = title_series(media_key(artifact.name))
            if self._tail and self._tail.holds(event_key(title, series), artifact.step):
                return  # the task stored this image before a crash
            self._logger.report_image(title, series, iteration=artifact.step, local_path=str(path))
            self._task.flush(wait_for_uploads=True)

    def _pair(self, name: str) -> tuple[str, str]:
        """(title, series) of a metric, never shared with another (``loss`` vs ``loss/loss``)."""
        wanted = title_series(name)
        pair = self._names.claim(name, wanted)
        if pair != wanted:
            _log.warning(
                "ClearML title %r, series %r already holds another metric; "
                "metric %r is stored as series %r",
                wanted[0],
                wanted[1],
                name,
                pair[1],
            )
        return pair

    def _left_out(self, name: str, step: int) -> None:
        if name in self._nan_seen:
            return
        self._nan_seen.add(name)
        msg = (
            f"{name!r} is NaN at step {step}; ClearML cannot store NaN, so NaN points "
            "of this metric are left out of its plot (config nan_value=<float> reports them "
            "as that number instead)"
        )
        _log.warning("%s", msg)
        self._logger.report_text(msg, level=logging.WARNING, print_console=False)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush until ClearML's reporter holds no event: True once all are written.

        ``Task.flush(wait_for_uploads=True)`` can return while the reporter
        thread is between two writes, with events still queued (seen under
        load: the offline session's ``metrics.jsonl`` grew after it returned).
        So flush again until the reporter says nothing is waiting.
        """
        task = getattr(self, "_task", None)
        if task is None:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        while True:
            task.flush(wait_for_uploads=True)
            if not _events_waiting(task):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        task = getattr(self, "_task", None)
        if task is None:
            return
        task.set_user_properties(tracelet_status=status.value)
        if not self._owned:
            task.flush(wait_for_uploads=True)
            return
        # close() writes what the reporter still holds only when ClearML's exit
        # hook saw no failing exit; a sys.exit(1) the code caught (or the one
        # ending this run) would cost the last points. So flush first.
        self.force_flush(timeout_millis)
        # close() marks the task completed (and writes the offline zip); the
        # final status goes on top of it, forced.
        task.close()
        if status is RunStatus.FAILED:
            task.mark_failed(status_reason="tracelet: the run ended FAILED", force=True)
        elif status is RunStatus.KILLED:
            task.stopped(force=True, status_reason="tracelet: the run was interrupted (KILLED)")
        # Task.init marks this process as ClearML's "master" in the environment, and
        # close() leaves "<pid>:" there; a process started later inherits it and its
        # Task.init returns a stub. Put the environment back as it was.
        for key, value in getattr(self, "_master_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def event_key(title: str, series: str) -> str:
    """One string for a (title, series) pair, in a `StoredTail`."""
    return f"{title}\x1f{series}"


def stored_events(previous: dict[str, Any]) -> list[Entry]:
    """The scalars an offline session stored past the mark its resume state saved.

    A torn last line (the process killed while ClearML wrote it) is cut off
    first: it could not be read, and the events in it are sent again. Reading
    starts at the line that holds the mark.
    """
    folder, mark = previous.get("offline_folder"), previous.get("events_from")
    if not folder or mark is None:
        return []
    path = Path(folder) / EVENTS_FILE
    if not path.exists():
        return []
    with path.open("rb+") as f:
        start = line_start(f, int(mark))
        f.seek(start)
        data = f.read()  # about a second of events: what was written past the mark
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            _log.warning(
                "%s ends in a torn line (%d bytes); cut off, its events are sent again",
                path,
                len(data) - whole,
            )
            f.truncate(start + whole)
    entries = []
    for line in data[:whole].splitlines():
        try:
            events = json.loads(line)
        except ValueError:
            _log.warning("%s holds a line that is not JSON; skipped", path)
            continue
        for event in events:
            if event.get("type") in ("training_stats_scalar", "training_debug_image"):
                entries.append((event_key(event["metric"], event["variant"]), int(event["iter"])))
    return entries


def _forget_earlier_exits(task_cls: Any) -> None:
    """Clear what ClearML's exit hook recorded before this task: it is not this task's end.

    The first ``Task.init`` of a process replaces ``sys.exit`` for good, and the
    hook (one per process, kept after ``close()``) remembers the last exit code,
    exception and signal. A ``sys.exit(1)`` caught before this task opened
    (argparse, click, a test) made the next task's ``close()`` take the failed
    path: it marked the task failed and dropped the reporter's unwritten events.
    """
    hook = getattr(task_cls, "_Task__exit_hook", None)
    if hook is None:
        return
    try:
        hook.exit_code = hook.exception = hook.signal = None
    except Exception as exc:  # a ClearML without those attributes: nothing to clear
        _log.debug("could not clear ClearML's earlier exit: %r", exc)


def _events_waiting(task: Any) -> bool:
    """Whether ClearML's reporter still holds events it has not written or sent."""
    try:
        return bool(task._reporter.events_waiting())
    except Exception:  # a ClearML without that API: trust its flush
        return False


_own_task_lock = threading.Lock()
#: What ``clearml.task`` asks for the torchrun local rank (a test pins that it still does).
_LOCAL_RANK_LOOKUP = "get_torch_local_rank"


@contextmanager
def _own_task(own: bool) -> Iterator[None]:
    """While `own`: keep ClearML from making this rank report into another rank's task.

    Under torchrun, ``Task.init`` on a local rank > 0 waits for the task id
    local rank 0 left in a file (ClearML's torch-distributed anchor) and logs
    into that task. Several processes then write one offline session: under
    load their lines interleave in ``metrics.jsonl`` (seen: two events on one
    line, which no reader can parse). In the all-ranks mode each rank writes
    its own task, so ClearML's local-rank lookup is answered "none" meanwhile.
    """
    if not own:
        yield
        return
    try:
        import clearml.task as task_module
    except ImportError:  # pragma: no cover - ClearML is imported by start already
        yield
        return
    real = getattr(task_module, _LOCAL_RANK_LOOKUP, None)
    if real is None:  # a ClearML without the anchor: nothing to keep it from
        yield
        return
    with _own_task_lock:
        setattr(task_module, _LOCAL_RANK_LOOKUP, lambda: None)
        try:
            yield
        finally:
            setattr(task_module, _LOCAL_RANK_LOOKUP, real)


def _stop_following_forks() -> None:
    """Keep ClearML out of forked children (DataLoader and ``multiprocessing`` workers).

    With a task open, ClearML patches ``fork`` and, in every child, installs its
    own signal handlers; they swallow SIGTERM, so ``multiprocessing.Pool``'s
    ``terminate()`` (run when a ``with Pool(...)`` block ends) waits forever on
    its workers. tracelet's run is inert in children anyway, so the children
    need no ClearML task.
    """
    try:
        from clearml.binding.environ_bind import PatchOsFork

        PatchOsFork.patch_fork(None)  # type: ignore[arg-type]  # None (ClearML's own check) unpatches
    except Exception as exc:  # a ClearML without that hook: nothing to undo
        _log.debug("could not stop ClearML following forks: %r", exc)


def _report_from_threads(task_cls: Any) -> None:
    """Make ClearML report from threads in this process, not a forked subprocess.

    ClearML reads ``sdk.development.report_use_subprocess`` (default: True on
    Linux) only from its configuration files; no environment variable or
    ``Task.init`` argument sets it. Pointing ``CLEARML_CONFIG_FILE`` at a
    generated file would hide the user's own ``clearml.conf`` (credentials,
    server), and ``set_overrides`` would drop ClearML's server-side (vault)
    overrides. So tracelet sets the class attribute ClearML derives from that
    key, for this process only, and leaves every configuration file alone. A
    value the user set explicitly in ``clearml.conf`` is respected.
    """
    from clearml.config import config

    explicit = config.get("development.report_use_subprocess", None)
    if explicit is None:
        task_cls._report_subprocess_enabled = False
    elif explicit:
        _log.warning(
            "clearml.conf sets sdk.development.report_use_subprocess=true; "
            "ClearML will report from a forked subprocess (slower, and its close() has "
            "been seen to hang)"
        )
