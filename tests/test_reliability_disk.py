"""A full disk and a deleted run directory: every accepted point is counted, kept or reported lost.

The full disk is real where the test may mount one (a 2 MiB tmpfs; root only,
skipped otherwise) and injected (`FullOS`) where a disk that never recovers is
needed. MLflow's store always lies outside the full disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracelet
import tracelet._history
from tests._helpers import QUIET
from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run
from tracelet.testing import InMemoryExporter


class FullOS:
    """`os` for the journal writer only: every write refused with ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def poll(predicate: Any, timeout: float = 60.0) -> bool:
    """Bounded polling for a state another thread reaches; False when it never came."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards; the test is skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` until it refuses a write; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):  # big blocks, then the last bytes a short write left
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_disk_full_at_stop_keeps_points_until_space_returns(
    small_disk: Path, mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tracelet")
    exp = tracelet.start_logging(
        "full-disk",
        backend="mlflow",
        config={"tracking_uri": mlflow_uri},
        settings=QUIET.model_copy(update={"dir": small_disk / ".tracelet", "close_timeout": 60.0}),
    )
    filler = fill(small_disk)
    history = exp._history
    for i in range(40_000):
        exp.log_metric("loss", float(i), iteration=i)

    def free_space_during_close() -> None:
        # Once the run is closing and its writes have been refused ten more
        # times (a few seconds of retries), a cleanup frees the disk, well
        # within close_timeout.
        poll(lambda: not exp.active)
        seen = history.write_errors
        poll(lambda: history.write_errors >= seen + 10, timeout=30)
        filler.unlink()

    freer = threading.Thread(target=free_space_during_close)
    freer.start()
    tracelet.stop_logging()
    freer.join()
    report = exp.report
    assert report is not None
    assert history.write_errors > 0, "the disk never refused the journal"
    assert report.points == 40_000 and report.complete, report
    run = mlflow_run(mlflow_uri, exp.run_id)
    steps = [s for s, _, _ in mlflow_history(mlflow_uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(40_000), "loss")
    assert "is writable again" in caplog.text


def test_points_never_written_are_counted_lost_and_said_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tracelet._history, "os", FullOS())
    exp = tracelet.start_logging(
        "lost",
        backend="memory",
        settings=QUIET.model_copy(update={"close_timeout": 1.0, "keep_journal": True}),
    )
    for i in range(5000):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert report.points == 5000
    assert not report.complete
    [backend] = report.backends
    assert backend.delivered == 0 and backend.undelivered == 5000
    assert "5000 points could not be written to the journal" in caplog.text
    assert "No space left" in caplog.text and "are lost" in caplog.text
    assert InMemoryExporter.runs[exp.run_id].history("loss") == []


def test_memory_stays_bounded_while_the_disk_refuses_then_points_are_shed_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tracelet._history, "os", FullOS())
    monkeypatch.setattr(tracelet._history, "FULL_DISK_WAIT", 0.2)
    exp = tracelet.start_logging(
        "bound",
        backend="memory",
        settings=QUIET.model_copy(
            update={"close_timeout": 1.0, "max_buffered_points": 20_000, "keep_journal": True}
        ),
    )
    history = exp._history
    most = 0
    done = threading.Event()

    def produce() -> None:
        nonlocal most
        for i in range(60_000):
            exp.log_metric("loss", float(i), iteration=i)
            most = max(most, history.backlog)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(120)
    assert done.is_set(), "log_metric hung on a full disk"
    assert history.blocked > 0  # it waited for the disk first
    assert most <= 20_000 + 1, f"{most} records held in memory, bound 20000"
    assert history.dropped == 60_000 - history.backlog
    report = exp.end()
    assert report.points == 60_000 and not report.complete
    assert "shedding new points" in caplog.text


@pytest.mark.slow
def test_a_run_directory_deleted_while_active_still_delivers_every_point(
    mlflow_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tracelet")
    exp = tracelet.start_logging(
        "deleted",
        backend="mlflow",
        config={"tracking_uri": mlflow_uri},
        settings=QUIET.model_copy(update={"dir": tmp_path / ".tracelet", "close_timeout": 20.0}),
    )
    shutil.rmtree(exp.run_dir)  # a cleanup script, before anything was delivered
    for i in range(3000):
        exp.log_metric("loss", float(i), iteration=i)
    history = exp._history
    with history.written:
        assert history.written.wait_for(lambda: history.points >= 3000, timeout=60)
    for i in range(3000, 6000):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert report.points == 6000 and report.complete, report
    run = mlflow_run(mlflow_uri, exp.run_id)
    steps = [s for s, _, _ in mlflow_history(mlflow_uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(6000), "loss")
    assert f"the run directory {exp.run_dir} was deleted" in caplog.text
    assert f"tracelet sync {exp.run_dir}" not in caplog.text
