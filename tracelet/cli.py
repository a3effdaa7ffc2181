"""The ``tracelet`` command: ``tracelet sync <run-dir>`` delivers what a run left undelivered.

A run whose backend was down at exit, or whose process was killed, keeps every
point it journaled in its run directory (``.tracelet/runs/<time>-<id>/``).
``tracelet sync`` re-opens each tracker run from its saved resume state,
delivers the journal from the saved cursor, closes the run with the status it
ended with, and prints what each backend received::

    $ tracelet sync .tracelet/runs/20260101-120000-1a2b3c4d
    run 1a2b3c4d… (mnist / baseline), 120000 points, status FINISHED
      mlflow   delivered 80000 more points (120000 of 120000), closed FINISHED
    complete: the journal was removed

Backend options come from the run directory (only the non-secret ones are
kept there), then ``TRACELET_CONFIG``, then ``--config`` (JSON, or ``@file``),
shaped like ``start_logging(config=...)``; secrets come from the environment
as usual (``MLFLOW_TRACKING_TOKEN``, ``WANDB_API_KEY``, ...).

Exit status: 0 when every backend has everything, 1 when points are still
undelivered, 2 for a usage error or a run still owned by a live process.

The journal is checked against the number of points the run recorded in
``run.json`` when it ended: a journal whose end was cut (a copy interrupted, a
full disk) or damaged holds fewer, and sync then says how many are missing,
exits 1 and keeps the journal, even though it delivered all that was left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracelet import _artifacts, _launch, _registry, _rundir, _secrets
from tracelet._delivery import Delivery
from tracelet._journal import complete_size, count_points
from tracelet._version import __version__
from tracelet.errors import ConfigError, TraceletError
from tracelet.export import RunInfo, RunStatus, TrackerExporter

__all__ = ["BackendSync", "main", "sync_run"]

_log = logging.getLogger("tracelet")

EXIT_OK, EXIT_UNDELIVERED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class BackendSync:
    """What `sync_run` did for one backend."""

    backend: str
    total: int  # metric points in the journal
    before: int  # delivered before this sync
    delivered: int  # delivered after it
    closed: bool
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.delivered >= self.total and self.closed


class _FinishedJournal:
    """A journal no process writes any more, read up to its last complete frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed = complete_size(path) if path.exists() else 0
        self.written = threading.Condition()


def sync_run(
    run_dir: Path,
    *,
    overrides: Sequence[dict[str, Any]] = (),
    backends: Sequence[str] | None = None,
    status: RunStatus | None = None,
    timeout: float = 300.0,
    keep_journal: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> list[BackendSync]:
    """Deliver what the run in `run_dir` has not delivered; the engine of ``tracelet sync``.

    Args:
        run_dir: the run's directory (holding ``run.json``).
        overrides: backend options over the saved ones, as ``start_logging``'s config.
        backends: only these backends (default: every tracker backend of the run).
        status: close the tracker runs with this status instead of the recorded one
            (a run that never ended, e.g. after kill -9, is closed ``KILLED``).
        timeout: seconds to wait for the backends before giving up.
        keep_journal: keep the journal even when everything was delivered.
        force: sync even when another process holds the run's lock.
        dry_run: only report what is undelivered.

    Returns:
        One `BackendSync` per backend.

    Raises:
        TraceletError: the directory is not a run, the run is still owned by a
            live process, or the config is invalid.
    """
    try:
        run = _rundir.read_run(run_dir)
    except (OSError, ValueError) as exc:
        raise TraceletError(f"{str(run_dir)!r} is not a tracelet run directory: {exc}") from exc
    lock = _rundir.RunLock(run_dir)
    if not lock.acquire() and not force:
        agent = _rundir.read_state(run_dir / "agent.json").get("pid")
        owner = f"process {run.get('pid')}" + (f" or its delivery agent {agent}" if agent else "")
        raise TraceletError(
            f"run {run.get('run_id')} is still owned by {owner} on {run.get('host')!r}, which "
            "may still be delivering; retry when it has exited (or pass --force)"
        )
    try:
        return _sync_locked(
            run_dir, run, overrides, backends, status, timeout, keep_journal, dry_run
        )
    finally:
        lock.release()


def _sync_locked(
    run_dir: Path,
    run: dict[str, Any],
    overrides: Sequence[dict[str, Any]],
    only: Sequence[str] | None,
    status: RunStatus | None,
    timeout: float,
    keep_journal: bool,
    dry_run: bool,
) -> list[BackendSync]:
    names = [str(n) for n in run.get("backends", [])]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ConfigError(
            f"run {run.get('run_id')} has no backend {', '.join(map(repr, unknown))}; "
            f"its backends: {', '.join(names)}"
        )
    journal = _FinishedJournal(run_dir / _rundir.JOURNAL_FILE)
    recorded = int(run.get("points") or 0)  # what the run accepted, set when it ended
    in_journal = count_points(journal.path) if journal.path.exists() else recorded
    total = max(in_journal, recorded)
    final = status or RunStatus(run.get("status") or RunStatus.KILLED.value)
    deadline = time.monotonic() + timeout

    def state_of(name: str) -> dict[str, Any]:
        path = _rundir.state_path(run_dir, name)
        data = json.loads(path.read_text()) if path.exists() else {}
        return data if isinstance(data, dict) else {}

    def finished(state: dict[str, Any]) -> bool:
        return bool(state.get("closed")) and int(state.get("offset", 0)) >= journal.committed

    results: dict[str, BackendSync] = {}
    classes: dict[str, type[TrackerExporter]] = {}
    trackers: list[str] = []  # every tracker backend of the run, selected or not
    for name in names:
        state = state_of(name)
        before = int(state.get("delivered", 0))
        try:
            [cls] = _registry.resolve([name]).values()
        except (TraceletError, ImportError) as exc:  # e.g. its SDK is not installed here
            trackers.append(name)
            if not only or name in only:
                results[name] = BackendSync(name, total, before, before, False, str(exc))
            continue
        if not (isinstance(cls, type) and issubclass(cls, TrackerExporter)):
            continue  # telemetry backends (otlp, prometheus) keep no history to deliver
        trackers.append(name)
        if only and name not in only:
            continue
        if finished(state) or dry_run or not journal.path.exists():
            error = None if finished(state) or dry_run else "the journal is missing"
            results[name] = BackendSync(
                name, total, before, before, bool(state.get("closed")), error
            )
            continue
        classes[name] = cls
    # The saved options per backend, then each override routed as start_logging routes config.
    saved = run.get("options") or {}
    config = {name: dict(saved.get(name) or {}) for name in classes}
    for override in overrides:
        _registry.route_config(classes, override, config)
    options = _registry.build_options(classes, config)

    deliveries: list[tuple[Delivery, int]] = []
    for name, cls in classes.items():
        state = state_of(name)
        run_info = RunInfo(
            run_id=str(run["run_id"]),
            project=str(run["project"]),
            name=str(run["name"]),
            resume=state.get("resume") or None,
            **_launch.info_fields(run),
        )
        delivery = Delivery(
            name, cls(options[name]), run_info, journal, _rundir.state_path(run_dir, name)
        )
        delivery.restore(state)
        deliveries.append((delivery, delivery.delivered))
    for delivery, _ in deliveries:
        delivery.start()
        delivery.finish(final, deadline)
    for delivery, before in deliveries:
        delivery.join(deadline - time.monotonic())
        error = None if delivery.error is None else _secrets.redact(repr(delivery.error))
        if delivery.alive and error is None:
            error = f"no answer within {timeout:g} s"
        results[delivery.backend] = BackendSync(
            delivery.backend, total, before, delivery.delivered, delivery.closed, error
        )
    ordered = [results[n] for n in names if n in results]
    if in_journal < recorded:
        _log.error(
            "the journal %s holds %d points, the run recorded %d: %d are missing "
            "(its end was cut or a frame is damaged); the journal is kept",
            journal.path,
            in_journal,
            recorded,
            recorded - in_journal,
        )
    if not dry_run:
        complete = in_journal >= recorded and all(finished(state_of(n)) for n in trackers)
        _rundir.update_run(run_dir, status=final.value, complete=complete, synced=time.time())
        if complete and not keep_journal:
            journal.path.unlink(missing_ok=True)
        _artifacts.release(run_dir, delivered=complete)
    return ordered


def _parse_config(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ConfigError(f"--config must be a JSON object, not {value!r}")
    return value


def _cmd_sync(args: argparse.Namespace) -> int:
    overrides: list[dict[str, Any]] = []
    try:
        from tracelet.settings import TraceletSettings

        env_config = TraceletSettings().config
        if env_config:
            overrides.append(dict(env_config))
        if args.config:
            overrides.append(_parse_config(args.config))
    except (ValueError, OSError) as exc:
        print(f"tracelet sync: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    worst = EXIT_OK
    for run_dir in args.run_dirs:
        try:
            results = sync_run(
                run_dir,
                overrides=overrides,
                backends=args.backend,
                status=RunStatus(args.status) if args.status else None,
                timeout=args.timeout,
                keep_journal=args.keep_journal,
                force=args.force,
                dry_run=args.dry_run,
            )
            run = _rundir.read_run(run_dir)
        except (TraceletError, ValueError, ImportError, OSError) as exc:
            print(f"tracelet sync: {run_dir}: {_secrets.redact(str(exc))}", file=sys.stderr)
            worst = max(worst, EXIT_USAGE)
            continue
        total = results[0].total if results else 0
        print(
            f"run {run.get('run_id')} ({run.get('project')} / {run.get('name')}), "
            f"{total} points, status {args.status or run.get('status') or 'KILLED'}"
        )
        for r in results:
            more = r.delivered - r.before
            line = f"  {r.backend:<8} "
            if r.complete:
                line += f"delivered {more} more points ({r.delivered} of {r.total}), closed"
            elif args.dry_run:
                line += f"{r.total - r.delivered} points undelivered ({r.delivered} of {r.total})"
            else:
                line += (
                    f"{r.total - r.delivered} points still undelivered "
                    f"({r.delivered} of {r.total}){'' if r.closed else ', run not closed'}"
                )
                if r.error:
                    line += f": {r.error}"
            print(line)
        if results and all(r.complete for r in results):
            gone = not (run_dir / _rundir.JOURNAL_FILE).exists()
            print("complete" + (": the journal was removed" if gone else ""))
        elif not args.dry_run:
            worst = max(worst, EXIT_UNDELIVERED)
            delivered = max((r.delivered for r in results), default=0)
            if results and all(r.closed and r.delivered == delivered for r in results):
                print(  # everything the journal holds went out: the rest is not in it
                    f"incomplete: {total - delivered} points are missing from the journal "
                    "(its end was cut or damaged); it is kept"
                )
            else:
                print(f"incomplete: run `tracelet sync {run_dir}` again when the backend is back")
        elif results:
            worst = max(worst, EXIT_UNDELIVERED)
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelet", description="tracelet: experiment tracking on OpenTelemetry."
    )
    parser.add_argument("--version", action="version", version=f"tracelet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync",
        help="deliver the points a run left undelivered",
        description=(
            "Re-open each tracker run of RUN_DIR from its saved state, deliver the "
            "journal from where the backend stopped, and close the run with its "
            "recorded status. Exit status 0 when everything was delivered, 1 when "
            "points remain undelivered, 2 on errors."
        ),
    )
    sync.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    sync.add_argument(
        "--config",
        help="backend options over the saved ones, JSON or @file, e.g. "
        '\'{"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}\'',
    )
    sync.add_argument(
        "--backend", action="append", help="only this backend (repeatable); default: all"
    )
    sync.add_argument(
        "--status",
        choices=[s.value for s in RunStatus],
        help="close the runs with this status (default: the recorded one, "
        "KILLED for a run that never ended)",
    )
    sync.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the backends"
    )
    sync.add_argument("--keep-journal", action="store_true", help="keep the journal when done")
    sync.add_argument(
        "--force", action="store_true", help="sync even if a live process holds the run"
    )
    sync.add_argument("--dry-run", action="store_true", help="only show what is undelivered")
    sync.set_defaults(func=_cmd_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tracelet`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _secrets.install_log_filter()
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
