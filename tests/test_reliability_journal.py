"""The journal under faults: a full disk, a stalled writer, a slow or failing backend, damage."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import tracelet
import tracelet._history
from tests._helpers import QUIET
from tracelet._journal import count_points, encode
from tracelet.export import Batch, ExportResult
from tracelet.testing import InMemoryExporter


class FaultyOS:
    """`os` for the journal writer only: a write that fails, half-done, a few times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            if self.failures % 2:  # half a frame reaches the disk, then the disk is full
                return os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def settings(**update: Any) -> tracelet.TraceletSettings:
    return QUIET.model_copy(update={"keep_journal": True, **update})


def test_a_full_disk_tears_no_frame_and_loses_no_point(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyOS(failures=6)
    monkeypatch.setattr(tracelet._history, "os", faulty)
    exp = tracelet.start_logging("disk", backend="memory", settings=settings())
    for i in range(20_000):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert faulty.failures == 0 and exp._history.write_errors >= 3
    assert report.complete and report.points == 20_000
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [
        (i, float(i)) for i in range(20_000)
    ]
    journal = exp.run_dir / "journal.jsonl"
    for line in journal.read_bytes().splitlines():
        json.loads(line)  # every line whole: partial writes were cut back
    assert count_points(journal) == 20_000
    assert "cannot write the journal" in caplog.text and "No space left" in caplog.text


def test_a_stalled_writer_makes_producers_wait_never_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    stalled = threading.Event()
    go = threading.Event()
    real_write = tracelet._history.History._write

    def slow_write(self: Any, data: bytes) -> None:
        stalled.set()
        go.wait()
        real_write(self, data)

    monkeypatch.setattr(tracelet._history.History, "_write", slow_write)
    exp = tracelet.start_logging(
        "stall", backend="memory", settings=settings(max_buffered_points=1000)
    )
    done = threading.Event()

    def produce() -> None:
        for i in range(5_000):
            exp.log_metric("x", float(i), iteration=i)
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    stalled.wait(30)
    assert not done.wait(0.5)  # the producer waits for room: memory stays bounded
    assert len(exp._history.queue) <= 1000 + 1
    go.set()
    t.join(60)
    assert done.is_set()
    report = exp.end()
    assert exp._history.blocked > 0
    assert report.complete and report.points == 5_000
    assert [s for s, _ in InMemoryExporter.runs[exp.run_id].history("x")] == list(range(5_000))


def test_a_slow_backend_keeps_its_backlog_on_disk_not_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    real_export = InMemoryExporter.export

    def slow_export(self: InMemoryExporter, batch: Batch, *a: Any, **kw: Any) -> ExportResult:
        gate.wait()  # the backend is stuck until the loop is over
        return real_export(self, batch)

    monkeypatch.setattr(InMemoryExporter, "export", slow_export)
    exp = tracelet.start_logging("slow", backend="memory", settings=settings())
    backlog = 0
    for i in range(300_000):
        exp.log_metric("loss", float(i), iteration=i)
        if i % 10_000 == 0:
            backlog = max(backlog, exp._history.backlog)
    [delivery] = exp._deliveries
    assert delivery.delivered == 0
    assert backlog <= exp._history.max_buffered
    gate.set()
    report = exp.end()
    assert report.complete and report.points == 300_000


def test_a_failing_backend_is_retried_until_it_accepts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_export = InMemoryExporter.export
    failures = {"left": 4}

    def flaky(self: InMemoryExporter, batch: Batch, *a: Any, **kw: Any) -> ExportResult:
        if failures["left"]:
            failures["left"] -= 1
            if failures["left"] % 2:
                return ExportResult.FAILURE
            raise ConnectionError("backend unavailable")
        return real_export(self, batch)

    monkeypatch.setattr(InMemoryExporter, "export", flaky)
    monkeypatch.setattr("tracelet._delivery._BACKOFF_FIRST", 0.01)
    exp = tracelet.start_logging("flaky", backend="memory", settings=settings())
    for i in range(3000):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert report.complete and failures["left"] == 0
    assert [s for s, _ in InMemoryExporter.runs[exp.run_id].history("loss")] == list(range(3000))
    assert "failed to export" in caplog.text and "recovered" in caplog.text


def test_a_damaged_frame_is_skipped_with_an_error_not_retried_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tracelet._journal import read_batches

    path = tmp_path / "journal.jsonl"
    path.write_bytes(
        encode([("a", 1.0, 0, 1)]) + b'{"m": [["a"], [2.0\n' + encode([("a", 3.0, 2, 3)])
    )
    with path.open("rb") as f:
        batches = list(read_batches(f, 0, None, 100))
    assert [p.step for b, _, _ in batches for p in b.metrics] == [0, 2]
    assert batches[-1][1] == path.stat().st_size
    assert "damaged journal frame" in caplog.text
