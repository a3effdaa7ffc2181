"""Weights & Biases exporter: one W&B run per tracelet run, written with ``run.log``.

- ``project`` → W&B project, ``exp_name`` → run name; the W&B run id is
  tracelet's run id unless ``config["id"]`` names another.
- Every point keeps its own step: rows go to W&B at tracelet's own increasing
  ``_step`` and carry the point's step as ``tracelet/step``, the x-axis of
  every chart (see `tracelet.exporters._wandb_translate`). Interleaved and
  backwards-going steps all arrive; W&B's rule that drops a row whose
  ``_step`` went back never applies.
- Params → ``run.config``; tags → run tags (``key:value`` labels); a FAILED run
  finishes with exit code 1, a KILLED one with 255 (W&B's code for Ctrl-C).
- W&B's environment variables (``WANDB_MODE``, ``WANDB_DIR``,
  ``WANDB_API_KEY``, ...) apply to whatever ``config`` leaves unset.
- tracelet's run is its own (``reinit="create_new"``): it neither finishes nor
  becomes the ``wandb.run`` of code that uses W&B directly.
- Artifacts (`tracelet.export.Artifact`) become files of the run (``run.dir``,
  under their name, saved with ``run.save(policy="now")``), uploaded with the
  run (a name W&B keeps for its own files, like ``config.yaml``, under
  ``tracelet/``); an image or figure logged with an iteration is also a ``wandb.Image``
  in a row of its own at that step (on the ``tracelet/step`` axis). Writing a
  file again is harmless; an image row replayed after a crash is skipped like
  the points (`tracelet.exporters._replay`).
- A command line with secret-looking values (``--api-key X``) turns W&B's own
  metadata capture off for the run (`_private_meta`): W&B would store it
  unmasked.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
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
from tracelet.exporters._artifact_files import link_or_copy, media_key
from tracelet.exporters._replay import Entry, RetryMark, StoredTail, pending_entries
from tracelet.exporters._translate import TagLabels
from tracelet.exporters._wandb_translate import (
    MAX_TAG,
    RESERVED_KEYS,
    STEP_KEY,
    KeyMapper,
    Row,
    pack_rows,
)
from tracelet.toolkit import iter_wandb_history, redact_command

_log = logging.getLogger("tracelet")

#: Names W&B gives its own files in a run's ``files`` folder (never overwritten).
RESERVED_FILES = frozenset(
    {
        "config.yaml",
        "wandb-metadata.json",
        "wandb-summary.json",
        "output.log",
        "requirements.txt",
        "conda-environment.yaml",
        "diff.patch",
        "media",
        "code",
        "artifact",
        "upstream_diff",
    }
)

#: ``run.finish(exit_code=...)`` per final status; W&B shows non-zero as failed.
EXIT_CODES = {RunStatus.FINISHED: 0, RunStatus.FAILED: 1, RunStatus.KILLED: 255}


class WandbOptions(ExporterOptions):
    """What ``config`` may carry for W&B (each goes to ``wandb.init``)."""

    #: Team or user the run belongs to (``WANDB_ENTITY`` when unset).
    entity: str | None = None
    #: Run tags: a list of labels, or a dict (each item becomes ``key:value``).
    tags: dict[str, str] | list[str] | None = None
    #: Groups runs in the W&B UI (e.g. the workers of one distributed job).
    group: str | None = None
    #: The kind of run (``"train"``, ``"eval"``), for filtering.
    job_type: str | None = None
    #: A longer description of the run.
    notes: str | None = None
    #: ``online``, ``offline``, ``disabled`` or ``shared`` (``WANDB_MODE`` when unset).
    mode: Literal["online", "offline", "disabled", "shared"] | None = None
    #: Folder under which W&B writes ``wandb/`` (``WANDB_DIR`` when unset).
    dir: str | None = None
    #: W&B run id to create or continue (default: tracelet's run id).
    id: str | None = None
    #: W&B's resume policy for `id`: ``allow``, ``must``, ``never``, ``auto`` or a bool.
    resume: bool | Literal["allow", "never", "must", "auto"] | None = None
    #: Any other ``wandb.Settings`` field, e.g. ``{"console": "off"}``.
    settings: dict[str, Any] | None = None


class WandbExporter(TrackerExporter):
    """Backend ``"wandb"``."""

    name = "wandb"
    options = WandbOptions
    requires = ("wandb",)
    extra = "wandb"
    config: WandbOptions

    def start(self, run: RunInfo) -> dict[str, Any]:
        import wandb

        cfg = self.config
        previous = run.resume or {}
        run_id = previous.get("run_id") or cfg.id or run.run_id
        if run.rank and not previous.get("run_id"):
            # All-ranks mode: W&B runs take one writer each (offline, a run is a
            # file), so each rank writes its own run, grouped under the job.
            run_id = f"{run_id}-rank{run.rank}"
        if cfg.dir is not None:
            Path(cfg.dir).mkdir(parents=True, exist_ok=True)
        # tracelet's run must not finish, or be returned instead of, a run the
        # training code opened with wandb.init itself.
        settings = wandb.Settings(
            **{**_flush_often(wandb), **_private_meta(cfg.settings), "reinit": "create_new"}
        )
        self._tags = TagLabels("W&B", cfg.tags, MAX_TAG)
        self._run = wandb.init(
            project=previous.get("project") or run.project,
            entity=previous.get("entity") or cfg.entity,
            name=run.name if not run.rank else f"{run.name} rank{run.rank}",
            id=run_id,
            resume="allow" if previous or run.attach != "new" else cfg.resume,
            group=cfg.group or (run.run_id if run.rank is not None else None),
            job_type=cfg.job_type,
            notes=cfg.notes,
            tags=self._tags.labels or None,
            mode=cfg.mode,
            dir=cfg.dir,
            settings=settings,
        )
        self._run.define_metric(STEP_KEY)
        self._run.define_metric("*", step_metric=STEP_KEY)
        self._key = KeyMapper()
        self._next_step = self._run.step
        # After a crash, skip the replayed points this run stored past the
        # durable cursor (see tracelet.exporters._replay).
        stored: list[Entry] = []
        earlier = previous.get("sync_file")
        if earlier and earlier != str(self._run.settings.sync_file) and Path(earlier).exists():
            # Online, the server holds the rows below run.step; offline, the old
            # file holds every row it has, and is synced along with the new one.
            below = None if self._run.offline else self._run.step
            last, stored = read_previous_rows(earlier, previous.get("rows_from"), below)
            # Offline, a resumed run starts a new file at step 0: go on after the
            # old file's last row (rows below it would be dropped when both are synced).
            self._next_step = max(self._next_step, last + 1)
        self._next_step = max(self._next_step, int(previous.get("rows_from") or 0))
        self._tail = StoredTail([*pending_entries(previous), *stored], "W&B")
        self._sync_file = str(self._run.settings.sync_file)
        self._on_disk = self._next_step  # rows below it are in the .wandb file
        self._scan_from = 0
        self._retry = RetryMark[Row]()
        self._state = {
            "run_id": self._run.id,
            "project": self._run.project,
            "entity": self._run.entity or None,
            "offline": bool(self._run.offline),
            "sync_file": str(self._run.settings.sync_file),
        }
        return self.resume_state()

    def resume_state(self) -> dict[str, Any]:
        """The resume state, with the mark: rows from `rows_from` on are past the cursor."""
        return {**self._state, "rows_from": self._next_step, "pending": self._tail.pending()}

    @property
    def run(self) -> Any:
        """The ``wandb.Run`` (after `start`), e.g. to log media next to tracelet's points."""
        return self._run

    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        run = self._run
        if batch.params:
            run.config.update(batch.params, allow_val_change=True)
        if batch.tags:
            run.tags = tuple(self._tags.update(batch.tags))
        for artifact in batch.artifacts:
            self._upload(artifact)
        if not batch.metrics:
            return ExportResult.SUCCESS
        # A retried batch resumes after the rows a failed attempt already logged,
        # so a retry never writes a point twice.
        for row in self._retry.items(batch.metrics, self._rows):
            run.log(row, step=self._next_step, commit=True)
            self._next_step += 1
        return ExportResult.SUCCESS

    def _upload(self, artifact: Artifact) -> None:
        """The artifact's files into the run's files; an image at a step, a row too."""
        import wandb

        run, files = self._run, Path(self._run.dir)
        name = artifact.name
        if name.split("/")[0] in RESERVED_FILES:
            name = f"tracelet/{name}"
            _log.warning("W&B keeps %r for its own file; stored as %r", artifact.name, name)
        for f in artifact.files:
            dst = files / name / f.path if f.path else files / name
            link_or_copy(artifact.local_path(f), dst)
            run.save(str(dst), base_path=str(files), policy="now")
        if not (artifact.is_image and artifact.step is not None):
            return
        key = self._key(media_key(artifact.name))
        if self._tail and self._tail.holds(key, artifact.step):
            return  # the run stored this row before a crash
        image = wandb.Image(str(dst))  # the copy under its own name: W&B reads its suffix
        run.log({key: image, STEP_KEY: artifact.step}, step=self._next_step, commit=True)
        self._next_step += 1

    def _rows(self, points: Sequence[MetricPoint]) -> list[Row]:
        if self._tail:  # resumed after a crash: leave out what the run holds already
            key, holds = self._key, self._tail.holds
            points = [p for p in points if not holds(key(p.name), p.step)]
        return pack_rows(points, self._key)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """True once the run's ``.wandb`` file holds every row logged so far.

        ``run.log`` returns when wandb-core has the row, not when it is on disk:
        wandb-core writes the file every ``x_transaction_log_flush_interval``
        seconds (W&B's default 15; tracelet sets `FLUSH_INTERVAL`), and a
        process killed before that loses the rows (measured with wandb 0.31:
        SIGKILL right after 200 rows left 125 in the file). So the durable
        cursor passes rows only once the file shows them.
        """
        run = getattr(self, "_run", None)
        if run is None or self._on_disk >= self._next_step:
            return True
        if getattr(run.settings, "x_skip_transaction_log", False):  # online, no file to check
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        while True:
            try:
                size = os.path.getsize(self._sync_file)
                for step, _ in iter_wandb_history(self._sync_file, self._scan_from):
                    self._on_disk = max(self._on_disk, step + 1)
                self._scan_from = size
            except (OSError, ValueError):  # not written yet
                pass
            if self._on_disk >= self._next_step:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        run = getattr(self, "_run", None)
        if run is not None:
            run.finish(exit_code=EXIT_CODES[status])


def read_previous_rows(
    sync_file: str, rows_from: int | None, below: int | None, window: int = 1 << 20
) -> tuple[int, list[Entry]]:
    """The last ``_step`` of a ``.wandb`` file (-1: no row), and the points past a mark.

    Reads the file's tail only, `window` bytes first and four times more each
    time that is not enough: the rows wanted are the last ones (``_step``
    grows through the file), so the tail is enough once its first row is at
    or below `rows_from`.

    Args:
        sync_file: the run's ``.wandb`` file before the crash.
        rows_from: the first ``_step`` past the durable cursor (None: unknown,
            a state saved by a tracelet that kept no mark; nothing is skipped).
        below: rows from here on never reached the server (online runs).
        window: bytes of the tail read first.

    Returns:
        ``(last_step, [(key, tracelet step), ...])`` for the rows in ``[rows_from, below)``.
    """
    size = Path(sync_file).stat().st_size
    while True:
        start = max(0, size - window)
        first: int | None = None
        last, stored = -1, []
        for step, row in iter_wandb_history(sync_file, start):
            first = step if first is None else first
            last = max(last, step)
            if rows_from is None or step < rows_from or (below is not None and step >= below):
                continue
            if STEP_KEY in row:
                stored += row_entries(row)
        if start == 0 or (first is not None and (rows_from is None or first <= rows_from)):
            return last, stored
        window *= 4


#: Seconds between wandb-core's writes of a run's ``.wandb`` file (see `force_flush`).
FLUSH_INTERVAL = 0.5


def _flush_often(wandb: Any) -> dict[str, Any]:
    """W&B settings that have wandb-core write the ``.wandb`` file every `FLUSH_INTERVAL` s."""
    if "x_transaction_log_flush_interval" in getattr(wandb.Settings, "model_fields", {}):
        return {"x_transaction_log_flush_interval": FLUSH_INTERVAL}
    return {}


def row_entries(row: dict[str, Any]) -> list[Entry]:
    """The ``(key, tracelet step)`` pairs a stored row holds; an image (``key.path``, ...) once."""
    step = int(row[STEP_KEY])
    images = [k[:-6] for k, v in row.items() if k.endswith("._type") and v == "image-file"]
    parts = tuple(f"{i}." for i in images)
    keys = [k for k in row if k not in RESERVED_KEYS and not (parts and k.startswith(parts))]
    return [(k, step) for k in [*keys, *images]]


def _private_meta(settings: dict[str, Any] | None) -> dict[str, Any]:
    """W&B settings that keep W&B from recording what tracelet masks.

    W&B stores the command line (``sys.argv``) in its run metadata, in the
    ``.wandb`` file and on the server. When the command line holds a
    secret-looking value (``--api-key X``, ``--token=Y``: what tracelet's own
    ``env.command`` tag masks), W&B's metadata capture (``x_disable_meta``:
    args, program, host, git) is turned off for the run, unless the user set
    ``x_disable_meta`` themselves; it cannot be given a masked command line.
    """
    chosen = dict(settings or {})
    if "x_disable_meta" in chosen or "WANDB__DISABLE_META" in os.environ:
        return chosen
    argv = list(getattr(sys, "argv", []))
    if redact_command(argv) != argv:
        chosen["x_disable_meta"] = True
        _log.warning(
            "the command line holds secret-looking values; W&B's run metadata "
            "(command line, host, git) is not recorded for this run. Pass "
            "config={'wandb': {'settings': {'x_disable_meta': False}}} to record it anyway"
        )
    return chosen
