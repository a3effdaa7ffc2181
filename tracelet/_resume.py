"""Continue a run that exists: the next part of a job killed, requeued or restarted.

`tracelet.start_logging(run_id=X)` (or an id derived from the launcher,
`tracelet._launch`) looks for run X in the local run directory
(``<dir>/runs/*/run.json`` with that ``run_id`` and this process's rank). When
it is there, the new process takes the run over, the way ``tracelet sync``
does (`tracelet.cli`):

- it waits, boundedly, for the run's lock (the earlier process may still be
  exiting; a killed one has released it);
- it cuts a torn last journal line (the kill came mid-write), then appends to
  the same journal;
- each tracker delivery restarts from its saved cursor with the exporter's
  saved resume state (`RunInfo.resume`): the tracker run is reopened (the
  MLflow run, the W&B run id, the ClearML task), what the earlier process left
  undelivered goes first, each point once (`tracelet.exporters._replay`),
  then the new points.

When the run is not there (another machine, a cleaned directory), the
exporters find the tracker run by the ``tracelet.run_id`` tag themselves
(``RunInfo.attach == "continue"``): new points go to the same tracker run,
but what the earlier process had not delivered is on its machine only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracelet import _rundir
from tracelet._journal import complete_size, count_points
from tracelet.errors import TraceletError

__all__ = ["LOCK_WAIT", "Previous", "find_run_dirs", "open_previous"]

_log = logging.getLogger("tracelet")

#: Seconds a new part waits for the earlier process to release the run.
LOCK_WAIT = 60.0


@dataclass
class Previous:
    """A run taken over from an earlier process, locked by this one."""

    run_dir: Path
    lock: _rundir.RunLock
    run: dict[str, Any]
    #: Each backend's saved cursor and resume state (``<backend>.state.json``).
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Metric points the journal holds already.
    points: int = 0


def find_run_dirs(base: Path, run_id: str, rank: int) -> list[Path]:
    """The run directories under `base` of run `run_id` at `rank`, oldest first."""
    found = []
    # Run folders are named <time>-<id[:8]>[-rank<N>] (`_rundir.new_run_dir`): only
    # those are read. Ids hold [A-Za-z0-9_.-] only, nothing glob would expand.
    pattern = f"*-{run_id[:8]}*/{_rundir.RUN_FILE}"
    for path in sorted((Path(base).absolute() / _rundir.RUNS_DIR).glob(pattern)):
        try:
            run = _rundir.read_run(path.parent)
        except (OSError, ValueError):
            continue
        if run.get("run_id") == run_id and int(run.get("rank") or 0) == rank:
            found.append(path.parent)
    return found


def open_previous(base: Path, run_id: str, rank: int, wait: float = LOCK_WAIT) -> Previous | None:
    """Take over run `run_id` at `rank` from the local run directory; None when it is not there.

    Waits for the lock while the earlier process (or its delivery agent) holds
    it, at most `wait` seconds without progress of that agent.

    Raises:
        TraceletError: the run is still owned by a live process after `wait` seconds.
    """
    dirs = find_run_dirs(base, run_id, rank)
    if not dirs:
        return None
    run_dir = dirs[-1]
    run = _rundir.read_run(run_dir)
    lock = _rundir.RunLock(run_dir)
    deadline = time.monotonic() + wait
    seen = None
    while not lock.acquire():
        # The earlier part's delivery agent may still be delivering what that part
        # left: waited for while it makes progress (its report changes).
        try:
            report = (run_dir / "agent.json").stat().st_mtime_ns
        except OSError:
            report = None
        if report != seen:
            seen, deadline = report, max(deadline, time.monotonic() + wait)
        if time.monotonic() >= deadline:
            raise TraceletError(
                f"run {run_id} ({run_dir}) is still owned by process {run.get('pid')} on "
                f"{run.get('host')!r} after {wait:g} s; end that process first, or start "
                "a new run (another run_id)"
            )
        time.sleep(0.1)
    try:
        previous = _take_over(run_dir, run, lock)
    except BaseException:
        lock.release()
        raise
    _log.info(
        "continuing run %s from %s: %d points journaled before, part %d",
        run_id,
        run_dir,
        previous.points,
        previous.run.get("parts", 1),
    )
    return previous


def _take_over(run_dir: Path, run: dict[str, Any], lock: _rundir.RunLock) -> Previous:
    journal = run_dir / _rundir.JOURNAL_FILE
    size = 0
    if journal.exists():
        size = complete_size(journal)
        if journal.stat().st_size > size:  # killed mid-write: that line never was a frame
            with journal.open("rb+") as f:
                f.truncate(size)
    states: dict[str, dict[str, Any]] = {}
    for backend in run.get("backends", []):
        path = _rundir.state_path(run_dir, str(backend))
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict):
            continue
        if int(state.get("offset", 0)) > size:
            # The journal was removed once everything was delivered (or lost):
            # the cursor starts again on the new journal; the resume state stays.
            state = {**state, "offset": 0, "delivered": 0}
        # The tracker run is reopened: whoever delivers this part (the delivery
        # agent, or a thread of this process) starts from this saved state.
        state = {**state, "closed": False}
        _rundir.save_json(path, state)
        states[str(backend)] = state
    points = count_points(journal) if size else 0
    parts = int(run.get("parts") or 1) + 1
    _rundir.update_run(
        run_dir,
        status=None,
        complete=None,
        points=None,
        pid=os.getpid(),
        host=socket.gethostname(),
        parts=parts,
    )
    run = {**run, "parts": parts}
    return Previous(run_dir, lock, run, states, points)


def record_backends(previous: Previous, backends: list[str]) -> None:
    """Keep in run.json every backend the run has had, in any part."""
    known = [str(b) for b in previous.run.get("backends", [])]
    added = [b for b in backends if b not in known]
    if added:
        _rundir.update_run(previous.run_dir, backends=[*known, *added])
