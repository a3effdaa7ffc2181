"""The run directory: what a run leaves on disk so another process can finish it.

```
<dir>/runs/<time>-<id>/
    run.json              identity, backends, their non-secret options, final status
    journal.jsonl         every record, in order (`_journal.py`); deleted once all delivered
    <backend>.state.json  that backend's cursor into the journal and its resume state
    .lock                 held (flock) by the process that owns the run
```

``tracelet sync`` (`tracelet.cli`) reads these to deliver what a backend has
not received; the lock keeps it from racing a process still delivering.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tracelet._version import __version__

#: The folder, under the ``dir`` setting, that holds one folder per run.
RUNS_DIR = "runs"
RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = ".lock"


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (a reader never sees half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_dir(base: str | Path, run_id: str, suffix: str = "") -> Path:
    """The folder of a new run: ``<base>/runs/<time>-<run id prefix><suffix>``, absolute.

    Not created. `suffix` tells apart the ranks of one run (``-rank3``).
    """
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:8]}{suffix}"
    return Path(base).absolute() / RUNS_DIR / name


def state_path(run_dir: Path, backend: str) -> Path:
    return run_dir / f"{backend}.state.json"


def read_state(path: Path) -> dict[str, Any]:
    """A backend's saved cursor and resume state (`state_path`); ``{}`` when there is none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run(
    run_dir: Path,
    *,
    run_id: str,
    project: str,
    name: str,
    backends: list[str],
    options: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Create run.json for a new run (`extra`: more fields, e.g. the rank)."""
    save_json(
        run_dir / RUN_FILE,
        {
            "run_id": run_id,
            "project": project,
            "name": name,
            "backends": backends,
            "options": options,
            "status": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tracelet_version": __version__,
            **(extra or {}),
        },
    )


def read_run(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / RUN_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{run_dir / RUN_FILE} does not hold a JSON object")
    return data


def update_run(run_dir: Path, **fields: Any) -> None:
    """Set fields of run.json (e.g. the final ``status``), keeping the others."""
    path = run_dir / RUN_FILE
    try:
        data = read_run(run_dir)
    except (OSError, ValueError):
        return
    data.update(fields)
    save_json(path, data)


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock``, released when the holder exits.

    A process killed with SIGKILL releases it too (the kernel closes its
    files), so ``tracelet sync`` can tell a live run from a dead one. On
    systems without ``fcntl`` it always succeeds.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def fileno(self) -> int | None:
        """The locked descriptor: a process given it holds the lock too (the delivery agent)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor without unlocking the parent's lock."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
