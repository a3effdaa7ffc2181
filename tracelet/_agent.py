"""The delivery agent: a process of its own that delivers a run's journal to its trackers.

`start_logging` spawns it (`tracelet._agentlink.AgentLink`: ``sys.executable -m
tracelet._agent RUN_DIR``, a new session, never a fork), so no tracker SDK is
imported into the training process and none of their threads takes the
trainer's GIL. It is ``tracelet sync`` following a live journal: one
`tracelet._delivery.Delivery` per tracker backend, each from its saved cursor,
reading frames the others already decoded (`tracelet._journal.FrameCache`).

What the trainer tells it, on its standard input, one JSON object a line::

    {"hello": {...}}    first: each backend's options (secrets included: a pipe,
                        never a file), the secrets to mask, the trainer's pid and
                        command line, close_timeout and the SIGTERM grace
    {"end": "FINISHED", "cleanup": true}
                        the run ended and the journal is final; cleanup: the
                        journal may be removed once every backend has it all

End of input without ``end`` means the trainer is gone (SIGKILL, the OOM
killer): the journal is final as it is (a torn last line is not a frame), the
agent delivers all of it and ends the tracker runs ``KILLED``; it keeps the
journal (``complete`` in run.json), which a continued run appends to. It notices a
trainer's death by end of input and, should a child of the trainer still hold
the pipe open, by being re-parented.

What it tells, in ``<run_dir>/agent.json`` (rewritten atomically about four
times a second): its state and, per backend, the points sent and made durable,
failures, the last error (secrets masked) and whether the tracker run is
closed. The trainer reads it for `Experiment.report`, the OTel counters and
the progress shown while the run closes.

SIGTERM (a scheduler stopping the job, which signals every process of it):
the agent goes on delivering for ``agent_grace`` seconds at most, then closes
the tracker runs with what they received and exits; the journal keeps the
rest for ``tracelet sync``. SIGINT is ignored (a Ctrl-C in the terminal is the
trainer's business; the agent is in a session of its own anyway).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tracelet import _artifacts, _launch, _registry, _rundir, _secrets
from tracelet._delivery import Delivery
from tracelet._journal import FrameCache, count_points
from tracelet._logs import brief
from tracelet.export import RunInfo, RunStatus, TrackerExporter
from tracelet.toolkit import line_start

_log = logging.getLogger("tracelet")

#: The agent's report to the trainer, in the run directory.
STATUS_FILE = "agent.json"
#: Its log (every line it printed, and the INFO ones), in the run directory.
LOG_FILE = "agent.log"
#: Seconds between looks at the journal's size (the trainer writes every 0.2 s).
FOLLOW_EVERY = 0.1
#: Seconds between rewrites of agent.json.
REPORT_EVERY = 0.25
#: How much lower than the trainer the agent runs (``nice``): the lowest, so it takes
#: the CPU the trainer leaves (all of it while the run closes) and little more.
#: Measured with three trackers (``benchmarks/bench_loop.py --against``, same
#: rounds): nice 19 cost the loop 1.055x the bare loop, nice 10 1.121x; closing
#: took the same time. On a machine the training keeps busy on every core,
#: delivery lags until the end of the run (the journal holds every point).
NICE = 19


class LiveJournal:
    """A journal another process appends to, read up to its last complete frame.

    The `_delivery.JournalSource` of a live run in the agent: `committed`
    grows as the trainer writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed = 0
        self.written = threading.Condition()
        self.cache = FrameCache()
        self._f = path.open("rb")

    def follow(self) -> None:
        """Look at the file once: tell the deliveries about new whole frames."""
        size = os.fstat(self._f.fileno()).st_size
        if size <= self.committed:
            return
        end = line_start(self._f, size)
        if end > self.committed:
            with self.written:
                self.committed = end
                self.written.notify_all()

    def close(self) -> None:
        self._f.close()


class Agent:
    """Delivers one run; see the module docstring."""

    def __init__(self, run_dir: Path, hello: dict[str, Any], pipe: ToTrainer | None = None) -> None:
        self.run_dir = run_dir
        self.pipe = pipe
        self.run = _rundir.read_run(run_dir)
        self.trainer = int(hello.get("pid") or 0)
        self.patience = float(hello.get("close_timeout", 60.0))
        self.grace = float(hello.get("grace", 25.0))
        self.keep_journal = bool(hello.get("keep_journal", False))
        self.status: RunStatus | None = None
        self.cleanup = False
        self.trainer_gone = False
        self.terminated_at: float | None = None
        self.state = "starting"
        self._wake = threading.Event()
        self.journal = LiveJournal(run_dir / _rundir.JOURNAL_FILE)
        options_in: dict[str, Any] = hello.get("options") or {}
        classes = {
            name: cls
            for name, cls in _registry.resolve(list(options_in)).items()
            if isinstance(cls, type) and issubclass(cls, TrackerExporter)
        }
        options = _registry.build_options(classes, {n: options_in[n] for n in classes})
        self.deliveries: list[Delivery] = []
        # Captured artifact files go once every tracker of the run (this agent's,
        # and any the trainer delivers itself) has made them durable.
        trackers = hello.get("trackers") or list(classes)
        reaper = _artifacts.Reaper(run_dir, [_rundir.state_path(run_dir, n) for n in trackers])
        for name, cls in classes.items():
            path = _rundir.state_path(run_dir, name)
            state = _rundir.read_state(path)
            info = RunInfo(
                run_id=str(self.run["run_id"]),
                project=str(self.run["project"]),
                name=str(self.run["name"]),
                resume=state.get("resume") or None,
                **_launch.info_fields(self.run),
            )
            delivery = Delivery(name, cls(options[name]), info, self.journal, path)
            delivery.restore(state)
            delivery.on_artifact = reaper
            self.deliveries.append(delivery)

    # -- what the trainer says ----------------------------------------------------

    def listen(self, stream: Any) -> None:
        """Read the trainer's lines until ``end`` or end of input (on a thread)."""
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "end" in message:
                self.cleanup = bool(message.get("cleanup", False))
                self.status = RunStatus(message["end"])
                self._wake.set()
                return
        self.trainer_gone = True  # no "end": the trainer died
        self._wake.set()

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.terminated_at is None:
            self.terminated_at = time.monotonic()
            _log.warning(
                "the delivery agent of run %s received SIGTERM; delivering for %g s at most",
                self.run.get("run_id"),
                self.grace,
            )
            for delivery in self.deliveries:
                delivery.stop_by(self.terminated_at + self.grace)
            self._wake.set()

    # -- the run ---------------------------------------------------------------------

    def serve(self) -> int:
        self.journal.follow()
        for delivery in self.deliveries:
            delivery.start()
        self.state = "delivering"
        last_report = 0.0
        while self.status is None and not self.trainer_gone:
            self.journal.follow()
            if self.trainer and os.getppid() != self.trainer:
                self.trainer_gone = True  # re-parented: the trainer is dead
            if self.terminated_at is not None and (
                time.monotonic() > self.terminated_at + self.grace
            ):
                break
            if time.monotonic() - last_report >= REPORT_EVERY:
                self.report()
                last_report = time.monotonic()
            self._wake.wait(FOLLOW_EVERY)
            self._wake.clear()
        status = self.status
        if status is None and not self.trainer_gone:
            # Signalled while the trainer lives on and has not ended the run: leave the
            # tracker runs open; the trainer delivers the rest itself (it notices this
            # exit) or, should it die too, tracelet sync does.
            _log.warning(
                "the delivery agent of run %s stops before the run ended; the training "
                "process takes over its delivery",
                self.run.get("run_id"),
            )
            self.state = "stopped"
            self.report()
            return 3
        if status is None:
            status = RunStatus.KILLED
            _log.warning(
                "the process training run %s is gone; delivering what it journaled, "
                "then ending the tracker runs %s",
                self.run.get("run_id"),
                status.value,
            )
            _rundir.update_run(self.run_dir, status=status.value)
        self.journal.follow()  # the trainer writes no more: this is the whole journal
        self.state = "ending"
        deadline = time.monotonic() + self.patience
        if self.terminated_at is not None:
            deadline = min(deadline, self.terminated_at + self.grace)
        for delivery in self.deliveries:
            delivery.finish(status, deadline, patience=self.patience)
        while any(d.alive for d in self.deliveries):
            self.report()
            for delivery in self.deliveries:
                delivery.join(REPORT_EVERY / len(self.deliveries))
        self.journal.close()
        return self.end(status)

    def end(self, status: RunStatus) -> int:
        complete = self._complete()
        self.state = "done"
        self.report()
        if complete:
            _rundir.update_run(self.run_dir, complete=True)
            # After the trainer's death the journal stays: a continued run (the same
            # run_id after a restart, `tracelet._resume`) appends to it and counts on it.
            if self.cleanup and not self.keep_journal:
                self.journal.path.unlink(missing_ok=True)
                _artifacts.release(self.run_dir, delivered=True)
        else:
            total = self._total()
            for d in self.deliveries:
                if d.delivered < total or not d.closed:
                    _log.error(
                        "run %s: backend %r received %d of %d points%s; the rest is kept in "
                        "%s; deliver it with: tracelet sync %s",
                        self.run.get("run_id"),
                        d.backend,
                        d.delivered,
                        total,
                        f" (last error: {_secrets.redact(brief(d.error))})" if d.error else "",
                        self.run_dir,
                        self.run_dir,
                    )
        return 0 if complete else 1

    def _total(self) -> int:
        try:
            return count_points(self.journal.path)
        except OSError:
            return max((d.delivered for d in self.deliveries), default=0)

    def _complete(self) -> bool:
        end = self.journal.committed
        return all(d.closed and d.offset >= end for d in self.deliveries)

    def report(self) -> None:
        """Tell the trainer (through the pipe) and agent.json what each backend has."""
        status = {
            "pid": os.getpid(),
            "state": self.state,
            "journaled": self.journal.committed,
            "backends": {
                d.backend: {
                    "started": d.started,
                    "sent": d.sent,
                    "delivered": d.delivered,
                    "failures": d.failures,
                    "closed": d.closed,
                    "alive": d.alive,
                    "error": None if d.error is None else _secrets.redact(brief(d.error)),
                }
                for d in self.deliveries
            },
        }
        if self.pipe is not None:
            self.pipe.send({"status": status})
        try:
            _rundir.save_json(self.run_dir / STATUS_FILE, status)
        except OSError as exc:  # the run directory deleted: delivery goes on regardless
            _log.debug("cannot write %s: %r", STATUS_FILE, exc)


class ToTrainer:
    """The pipe to the trainer: log records and status reports, one JSON object a line.

    Never blocks: a trainer that does not read (suspended) costs it a status
    report or a log line (kept in agent.log), never a stalled delivery.
    Once the trainer is gone, `send` returns False.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        if fd is not None:
            os.set_blocking(fd, False)

    def send(self, message: dict[str, Any]) -> bool:
        data = json.dumps(message).encode() + b"\n"
        with self._lock:
            if self._fd is None:
                return False
            try:
                os.write(self._fd, data)
            except BlockingIOError:
                return False
            except OSError:  # EPIPE: the trainer is gone
                self._fd = None
                return False
        return True


class _ToTrainer(logging.Handler):
    """Sends each record to the trainer, which logs it through the application's logging.

    Once the trainer is gone (its end of the pipe closed), records go to
    stderr instead, as ``tracelet: <message>``.
    """

    def __init__(self, pipe: ToTrainer) -> None:
        super().__init__()
        self._pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:
            return
        if self._pipe.send({"name": record.name, "level": record.levelno, "msg": msg}):
            return
        if record.levelno >= logging.WARNING:
            try:
                sys.stderr.write(f"tracelet: {msg}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


def _setup_logging(run_dir: Path, pipe: ToTrainer | None) -> logging.Logger:
    logger = logging.getLogger("tracelet")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if pipe is not None:
        logger.addHandler(_ToTrainer(pipe))
    else:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.WARNING)
        terminal.setFormatter(logging.Formatter("tracelet: %(message)s"))
        logger.addHandler(terminal)
    try:
        file = logging.FileHandler(run_dir / LOG_FILE)
    except OSError:
        return logger
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file.setLevel(logging.INFO)
    logger.addHandler(file)
    return logger


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # the trainer's CPU belongs to the trainer: the agent (and the SDKs' helpers it
        os.nice(NICE)  # starts, such as wandb-core) yield to it when both want a core
    except (AttributeError, OSError):
        pass
    run_dir = Path(argv[0])
    pipe = ToTrainer(int(argv[1]) if len(argv) > 1 else None)
    logger = _setup_logging(run_dir, pipe)
    line = sys.stdin.readline()
    try:
        hello = json.loads(line)["hello"]
    except (ValueError, KeyError, TypeError):
        _log.error("the delivery agent got no start message on its input; exiting")
        return 2
    logger.setLevel(min(logging.INFO, int(hello.get("log_level", logging.INFO))))
    for secret in hello.get("secrets") or ():
        _secrets.register(secret)
    _secrets.set_unmasked_keys(hello.get("unmasked") or ())
    _secrets.install_log_filter()
    if hello.get("argv"):  # what an SDK records as the program is the training script
        sys.argv = [str(a) for a in hello["argv"]]
    try:
        agent = Agent(run_dir, hello, pipe)
    except Exception as exc:
        _log.error("the delivery agent could not start: %s", _secrets.redact(brief(exc)))
        _log.debug("agent start", exc_info=exc)
        try:
            _rundir.save_json(
                run_dir / STATUS_FILE,
                {"pid": os.getpid(), "state": "failed", "error": _secrets.redact(brief(exc))},
            )
        except OSError:
            pass
        return 2
    signal.signal(signal.SIGTERM, agent.on_sigterm)
    threading.Thread(
        target=agent.listen, args=(sys.stdin,), name="tracelet-agent-input", daemon=True
    ).start()
    return agent.serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
