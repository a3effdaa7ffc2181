"""Exactly once after a crash, for W&B and ClearML: a resumed exporter skips what its run holds.

`tracelet sync` replays the journal from the durable cursor; the exporters
are driven here the way it drives them, with the resume state a crashed
process saved at its last durable cursor, and read back from the real offline
files. The end-to-end kill -9 case is `test_reliability_crash_trackers.py`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tracelet.export import Batch, MetricPoint, RunInfo, TrackerExporter
from tracelet.exporters._replay import StoredTail

RUN = RunInfo(run_id="replay0001", project="replay", name="replay")
#: Four batches of 20 points, two metrics at steps 0..39.
POINTS = [
    MetricPoint(name, float(step) + (0.5 if name == "acc" else 0.0), step, 10**18 + step)
    for step in range(40)
    for name in ("loss", "acc")
]
B1, B2, B3, B4 = (POINTS[i : i + 20] for i in range(0, 80, 20))


def test_stored_tail_skips_the_stored_prefix_and_nothing_after_it() -> None:
    tail = StoredTail([("a", 1), ("b", 1), ("a", 2)])
    assert tail.holds("b", 1) and tail.holds("a", 1)  # order inside a row does not matter
    assert tail.pending() == [["a", 2]]
    assert tail.holds("a", 2) and not tail
    assert not tail.holds("a", 3)


def test_stored_tail_stops_for_good_at_the_first_new_point(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tail = StoredTail([("a", 1), ("a", 2)])
    caplog.set_level(logging.INFO, "tracelet")
    assert tail.holds("a", 1)
    assert not tail.holds("b", 1)  # the stored prefix ended here
    assert not tail.holds("a", 2)  # so a later match is a new point, sent
    assert tail.pending() == []
    assert "is new" in caplog.text


def _crash_and_resume_twice(
    make: Any, settle: Callable[[], None] = lambda: None
) -> list[dict[str, Any]]:
    """Three processes of one run; each 'crashes' after its last durable cursor.

    A delivers B1 (durable) and B2, then dies. B resumes from A's mark, gets
    B2's first half (durable: all of it was stored), then B2's rest and B3,
    and dies. C resumes from B's mark and gets B2's rest, B3 and B4.

    `settle` runs after each "process" ends: what the backend's own writer
    does before the next process starts (W&B's service writes the ``.wandb``
    file after ``run.finish()`` returned; when a process dies its service
    finishes the file before a later ``tracelet sync`` reads it).
    """
    states = []
    a: TrackerExporter = make()
    a.start(RUN)
    a.export(Batch(metrics=B1))
    assert a.force_flush()
    states.append(a.resume_state())
    a.export(Batch(metrics=B2))
    a.shutdown()
    settle()

    b: TrackerExporter = make()
    b.start(RunInfo(**{**RUN.__dict__, "resume": states[-1]}))
    b.export(Batch(metrics=B2[:10]))
    assert b.force_flush()
    states.append(b.resume_state())
    b.export(Batch(metrics=B2[10:]))
    b.export(Batch(metrics=B3))
    b.shutdown()
    settle()

    c: TrackerExporter = make()
    states.append(c.start(RunInfo(**{**RUN.__dict__, "resume": states[-1]})))
    for batch in (B2[10:], B3, B4):
        c.export(Batch(metrics=batch))
    assert c.force_flush()
    states.append(c.resume_state())
    c.shutdown()
    settle()
    return states


def _each_point_once(stored: dict[str, list[tuple[int, float]]]) -> None:
    for name in ("loss", "acc"):
        expected = [(p.step, p.value) for p in POINTS if p.name == name]
        counts = Counter(stored[name])
        assert sorted(counts) == expected, f"{name}: points lost"
        assert max(counts.values()) == 1, f"{name}: stored twice: {counts.most_common(3)}"


@pytest.mark.usefixtures("offline_trackers")
def test_wandb_resumed_twice_holds_each_point_once() -> None:
    pytest.importorskip("wandb")
    from tests._trackers import wandb_written
    from tracelet.exporters.wandb import WandbExporter
    from tracelet.testing import read_wandb_run

    # Read only files W&B has finished writing: run.finish() returns before
    # wandb-core wrote the last rows, and under load the test read C's file
    # without B4 (steps 30-39) though W&B stored them.
    states = _crash_and_resume_twice(WandbExporter, settle=wandb_written)
    assert len(states[1]["pending"]) == 10  # B2's rest, stored by A, still to skip
    runs = [read_wandb_run(f) for f in dict.fromkeys(s["sync_file"] for s in states)]
    assert len(runs) == 3
    _each_point_once({n: [p for r in runs for p in r.history(n)] for n in ("loss", "acc")})
    # W&B keeps a row only past the steps it has seen: one increasing _step over the files
    steps = [row["_step"] for r in runs for row in r.rows]
    assert steps == sorted(set(steps))


@pytest.mark.usefixtures("offline_trackers")
def test_clearml_resumed_twice_holds_each_point_once() -> None:
    pytest.importorskip("clearml")
    from tests._trackers import read_clearml
    from tracelet.exporters.clearml import ClearMLExporter

    states = _crash_and_resume_twice(ClearMLExporter)
    assert len({s["offline_folder"] for s in states}) == 1
    assert len(states[1]["pending"]) == 10
    _each_point_once(read_clearml(states[-1]).series)


@pytest.mark.usefixtures("offline_trackers")
def test_clearml_cuts_a_torn_last_line_and_sends_its_events_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("clearml")
    from tests._trackers import read_clearml
    from tracelet.exporters.clearml import EVENTS_FILE, ClearMLExporter

    a = ClearMLExporter()
    a.start(RUN)
    a.export(Batch(metrics=B1))
    assert a.force_flush()
    mark = a.resume_state()
    assert mark is not None
    a.shutdown()
    events = Path(mark["offline_folder"]) / EVENTS_FILE
    whole = json.dumps([{"type": "training_stats_scalar", "metric": "loss"}])
    with events.open("a") as f:
        f.write(whole[:25])  # killed while ClearML wrote this line

    b = ClearMLExporter()
    b.start(RunInfo(**{**RUN.__dict__, "resume": mark}))
    assert "torn line" in caplog.text
    b.export(Batch(metrics=B2))
    b.shutdown()
    assert events.read_text().endswith("\n")
    stored = read_clearml(mark).series
    assert [s for s, _ in stored["loss"]] == list(range(20))


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_a_clearml_mark_inside_a_line_reads_from_that_lines_start(chunk: int) -> None:
    import io

    from tracelet.toolkit import line_start

    data = io.BytesIO(b"aaa\nbbbb\ncc\n")
    starts = [line_start(data, offset, chunk) for offset in range(13)]
    assert starts == [0, 0, 0, 0, 4, 4, 4, 4, 4, 9, 9, 9, 12]


@pytest.mark.usefixtures("offline_trackers")
def test_wandb_reads_back_only_the_tail_it_needs() -> None:
    """Reading the tail of a .wandb file finds what a whole read finds, for any mark."""
    pytest.importorskip("wandb")
    from tests._trackers import wandb_written
    from tracelet._readback import iter_wandb_records
    from tracelet.exporters.wandb import WandbExporter, read_previous_rows
    from tracelet.testing import read_wandb_run

    exporter = WandbExporter()
    exporter.start(RUN)
    points = [MetricPoint(f"m{i % 3}", float(i), i // 3, 10**18 + i) for i in range(9_000)]
    for i in range(0, len(points), 1000):
        exporter.export(Batch(metrics=points[i : i + 1000]))
    state = exporter.resume_state()
    assert state is not None
    exporter.shutdown()
    wandb_written()
    path = state["sync_file"]
    assert Path(path).stat().st_size > 4 * 32768  # several blocks
    whole = [r.SerializeToString() for r in iter_wandb_records(path)]
    for start in (1, 32768, 40_000, 100_000, Path(path).stat().st_size):
        tail = [r.SerializeToString() for r in iter_wandb_records(path, start)]
        assert tail == whole[len(whole) - len(tail) :]  # a suffix: whole records only
    last_step = state["rows_from"] - 1
    for rows_from in (None, 0, 1, 1500, last_step, last_step + 1):
        expected = read_previous_rows(path, rows_from, None, window=1 << 40)
        assert read_previous_rows(path, rows_from, None, window=4096) == expected
        assert expected[0] == last_step
    rows = read_wandb_run(path).rows
    for rows_from, below in ((2000, None), (0, 1000), (1000, 1001)):
        wanted = [
            (k, r["tracelet/step"])
            for r in rows
            if r["_step"] >= rows_from and (below is None or r["_step"] < below)
            for k in r
            if k.startswith("m")
        ]
        assert read_previous_rows(path, rows_from, below, window=4096)[1] == wanted
        assert wanted
