"""The training process's side of the delivery agent (`tracelet._agent`).

`AgentLink` spawns the agent (``sys.executable -m tracelet._agent RUN_DIR``,
in a session of its own, so a Ctrl-C or a signal to the trainer's process
group does not reach it), gives it the backends' options through a pipe (the
secrets among them never touch the disk), tells it when the run ended, and
reads what it reports in ``agent.json``. It costs the trainer no thread that
runs: one waits, blocked in ``waitpid``, to notice an agent that dies before
the run ends (then `Run` delivers from this process, from the agent's saved
cursors, and says so once).

`AgentBackend` stands for one backend the agent delivers where the run keeps
its deliveries (`Run.deliveries`): the report, the OTel counters and tests
read its numbers as they read a `Delivery`'s.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from tracelet import _secrets
from tracelet._agent import STATUS_FILE
from tracelet._progress import Progress
from tracelet.export import RunStatus

_log = logging.getLogger("tracelet")

#: Seconds a status read is reused (telemetry collects, tests poll).
_FRESH_FOR = 0.1
#: Seconds a closing run waits on an agent that reports nothing new, past close_timeout.
_SILENCE_MARGIN = 10.0


class AgentLink:
    """One run's delivery agent, seen from the trainer."""

    def __init__(
        self,
        run_dir: Path,
        options: Mapping[str, BaseModel],
        *,
        lock_fd: int | None,
        close_timeout: float,
        grace: float,
        keep_journal: bool,
        trackers: list[str],
        on_lost: Callable[[int], None],
    ) -> None:
        self.run_dir = run_dir
        self.backends = list(options)
        self.ended = False
        self._on_lost = on_lost
        self._status: dict[str, Any] = {}
        self._piped = False  # a status report came through the pipe
        self._read_at = 0.0
        self._write_lock = threading.Lock()
        logs_in, logs_out = os.pipe()  # the agent's log records, for this process's logging
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tracelet._agent", str(run_dir), str(logs_out)],
                stdin=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(logs_out,) if lock_fd is None else (logs_out, lock_fd),
                env=_agent_env(),
            )
        except BaseException:
            os.close(logs_in)
            raise
        finally:
            os.close(logs_out)
        self._stdin = self.proc.stdin
        self._relay = threading.Thread(
            target=self._listen, args=(logs_in,), name="tracelet-agent-logs", daemon=True
        )
        self._relay.start()
        hello = {
            "options": {name: _reveal(opts) for name, opts in options.items()},
            "secrets": _secrets.known_secrets(),
            "unmasked": sorted(_secrets.unmasked_keys()),
            "pid": os.getpid(),
            "argv": list(sys.argv),
            "close_timeout": close_timeout,
            "grace": grace,
            "keep_journal": keep_journal,
            "trackers": trackers,
            "log_level": _log.getEffectiveLevel(),
        }
        self._send({"hello": hello})
        self._watchdog = threading.Thread(
            target=self._watch, name="tracelet-agent-watch", daemon=True
        )
        self._watchdog.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, message: dict[str, Any]) -> bool:
        with self._write_lock:
            if self._stdin is None:
                return False
            try:
                self._stdin.write(json.dumps(message).encode() + b"\n")
                self._stdin.flush()
            except (OSError, ValueError):  # the agent is gone (EPIPE), or the pipe closed
                return False
        return True

    def _watch(self) -> None:
        code = self.proc.wait()
        if not self.ended:
            self._on_lost(code)

    def failure(self) -> str:
        """Why the agent stopped, as it said or as its exit code tells."""
        status = self.status(fresh=True)
        if status.get("error"):
            return str(status["error"])
        return f"exit code {self.proc.returncode}"

    def _listen(self, fd: int) -> None:
        """Take the agent's lines: status reports, and log records for this process's logging."""
        with os.fdopen(fd, "rb") as lines:
            for line in lines:
                try:
                    message = json.loads(line)
                    if "status" in message:
                        self._status, self._piped = message["status"], True
                        continue
                    logger = logging.getLogger(str(message["name"]))
                    logger.log(int(message["level"]), "%s", message["msg"])
                except (ValueError, KeyError, TypeError):
                    continue

    def status(self, fresh: bool = False) -> dict[str, Any]:
        """What the agent last reported (``{}`` before its first report).

        Reports come through the pipe; agent.json, which the agent also
        writes, is read when none came that way (an agent that died early).
        """
        if self._piped:
            return self._status
        now = time.monotonic()
        if fresh or now - self._read_at >= _FRESH_FOR:
            self._read_at = now
            try:
                data = json.loads((self.run_dir / STATUS_FILE).read_text())
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict):
                self._status = data
        return self._status

    def backend(self, name: str) -> dict[str, Any]:
        backends = self.status().get("backends") or {}
        found = backends.get(name)
        return found if isinstance(found, dict) else {}

    def end(self, status: RunStatus, cleanup: bool) -> None:
        """Tell the agent the run ended: the journal is final."""
        self.ended = True
        self._send({"end": status.value, "cleanup": cleanup})
        with self._write_lock:
            if self._stdin is not None:
                try:
                    self._stdin.close()
                except OSError:
                    pass
                self._stdin = None

    def flush_logs(self, timeout: float = 2.0) -> None:
        """Wait (briefly) until an exited agent's last log line was logged here, and its
        watcher returned."""
        self._relay.join(timeout)
        self._watchdog.join(timeout)

    def wait(self, run_id: str, total: int, patience: float) -> bool:
        """Wait while the agent delivers, showing progress; True once it exited.

        Gives up when the agent reports no progress for `patience` seconds
        plus a margin (the agent bounds each backend by `patience` itself),
        or on Ctrl-C; the agent then goes on in the background.
        """
        progress = Progress(run_id, total)
        seen: Any = None
        changed = time.monotonic()
        try:
            while True:
                try:
                    self.proc.wait(0.25)
                    self.flush_logs()
                    return True
                except subprocess.TimeoutExpired:
                    pass
                status = self.status(fresh=True)
                backends = status.get("backends") or {}
                numbers = (status.get("state"), json.dumps(backends, sort_keys=True))
                now = time.monotonic()
                if numbers != seen:
                    seen, changed = numbers, now
                elif now - changed > patience + _SILENCE_MARGIN:
                    _log.error(
                        "the delivery agent of run %s (pid %d) reported no progress for "
                        "%.0f s; not waiting for it any longer",
                        run_id,
                        self.proc.pid,
                        now - changed,
                    )
                    return False
                progress.update(
                    {n: int((backends.get(n) or {}).get("sent", 0)) for n in self.backends}
                )
        except KeyboardInterrupt:
            _log.warning(
                "stopped waiting; the delivery agent (pid %d) goes on delivering run %s "
                "in the background",
                self.proc.pid,
                run_id,
            )
            return False
        finally:
            progress.close()

    def forget_in_child(self) -> None:
        """In a forked child: let go of the pipe without writing to it (a DataLoader worker)."""
        self.ended = True
        stdin, self._stdin = self._stdin, None
        self._write_lock = threading.Lock()
        if stdin is not None:
            try:  # the write end, replaced: the agent still sees EOF when the trainer dies
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stdin.fileno())
                os.close(devnull)
            except OSError:
                pass


class AgentBackend:
    """A backend the agent delivers, as `Run.deliveries` holds it (numbers from agent.json)."""

    def __init__(self, link: AgentLink, backend: str) -> None:
        self.link = link
        self.backend = backend

    def _get(self, key: str, default: Any) -> Any:
        return self.link.backend(self.backend).get(key, default)

    @property
    def delivered(self) -> int:
        return int(self._get("delivered", 0))

    @property
    def sent(self) -> int:
        return int(self._get("sent", 0))

    @property
    def failures(self) -> int:
        return int(self._get("failures", 0))

    @property
    def closed(self) -> bool:
        return bool(self._get("closed", False))

    @property
    def started(self) -> bool:
        return bool(self._get("started", False))

    @property
    def error(self) -> str | None:
        error = self._get("error", None)
        return None if error is None else str(error)

    @property
    def alive(self) -> bool:
        return self.link.alive


def _agent_env() -> dict[str, str]:
    """The trainer's environment, with the folder this tracelet was imported from first.

    The agent must import the same tracelet as the trainer, also when the
    trainer found it through a `sys.path` entry made at run time (a source
    checkout, a test runner's ``pythonpath``).
    """
    import site

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    installed = {str(Path(p).resolve()) for p in site.getsitepackages()}
    path = env.get("PYTHONPATH", "")
    if root not in installed and root not in path.split(os.pathsep):
        env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def _reveal(options: BaseModel) -> dict[str, Any]:
    """Options as JSON, secrets in clear: for the agent's pipe only, never a file."""
    data: dict[str, Any] = options.model_dump(mode="json")
    for name in type(options).model_fields:
        value = getattr(options, name)
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
        elif isinstance(value, SecretBytes):
            data[name] = value.get_secret_value().decode(errors="replace")
    return data
