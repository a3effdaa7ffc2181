"""The run journal: an append-only file holding every record of a run, in order.

One frame per line, JSON, so a reader (a delivery thread, or ``tracelet sync``
after a crash) can resume at any byte offset, and a torn last line left by a
killed process is simply not yet a frame::

    {"m": [[names], [values], [steps], [timestamps_ns]]}   metric points
    {"p": {key: value}}                                     params
    {"t": {key: value}}                                     tags
    {"a": {name, kind, files, step, ...}}                   an artifact (`export.Artifact`)

NaN and inf are written as the JSON extensions ``NaN`` / ``Infinity``, which
`json.loads` reads back exactly.

An artifact frame is a batch of its own (`read_batches` ends the batch before
and after it), so an exporter uploads it, and is retried, apart from points.

Only complete lines are frames: a reader stops at a line without its ``\n``
(the writer is still writing it, or was killed half-way), so nothing torn is
ever delivered. A complete line that does not decode (a damaged disk block)
is skipped with an error, never retried forever.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tracelet.export import Artifact, Batch, MetricPoint
from tracelet.toolkit import line_start

_log = logging.getLogger("tracelet")

#: Metric points per frame; also the most a delivery thread reads at once.
FRAME_POINTS = 1000

Record = tuple[Any, ...]


def encode(records: list[Record]) -> bytes:
    """Encode records, in order, as frames.

    A metric record is ``(name, value, step, time_ns)``; a params or tags
    record is ``("p" | "t", dict)``.
    """
    out: list[str] = []
    run: list[Record] = []

    def close_run() -> None:
        for i in range(0, len(run), FRAME_POINTS):
            names, values, steps, times = zip(*run[i : i + FRAME_POINTS], strict=True)
            out.append(json.dumps({"m": [names, values, steps, times]}, separators=(",", ":")))
        run.clear()

    for rec in records:
        if len(rec) == 4:
            run.append(rec)
        else:
            close_run()
            out.append(json.dumps({rec[0]: rec[1]}, separators=(",", ":")))
    close_run()
    return ("\n".join(out) + "\n").encode() if out else b""


def add_frame(batch: Batch, line: bytes) -> int:
    """Add one frame to `batch`; return the number of metric points it held."""
    frame = json.loads(line)
    if "m" in frame:
        names, values, steps, times = frame["m"]
        batch.metrics.extend(map(MetricPoint, names, map(float, values), steps, times))
        return len(names)
    if "p" in frame:
        batch.params.update(frame["p"])
    elif "t" in frame:
        batch.tags.update(frame["t"])
    elif "a" in frame:
        batch.artifacts.append(Artifact.from_json(frame["a"]))
    return 0


_ARTIFACT_FRAME = b'{"a":'


def read_batches(
    f: IO[bytes], offset: int, end: int | None, max_points: int
) -> Iterator[tuple[Batch, int, int]]:
    """Read whole frames from `offset` up to `end` (or the last complete line).

    Yields:
        ``(batch, next_offset, points)``: a batch of at most about `max_points`
        points (never splitting a frame) and where the next unread frame starts.
    """
    f.seek(offset)
    batch, points = Batch(), 0
    while end is None or offset < end:
        line = f.readline()
        if not line.endswith(b"\n"):  # nothing more, or a torn last write
            break
        alone = line.startswith(_ARTIFACT_FRAME)
        if alone and len(batch):  # an artifact goes in a batch of its own
            yield batch, offset, points
            batch, points = Batch(), 0
        try:
            points += add_frame(batch, line)
        except (ValueError, TypeError, KeyError) as exc:
            _log.error(
                "skipping a damaged journal frame at byte %d of %s: %r",
                offset,
                getattr(f, "name", "the journal"),
                exc,
            )
        offset += len(line)
        if points >= max_points or (alone and len(batch)):
            yield batch, offset, points
            batch, points = Batch(), 0
    if len(batch):
        yield batch, offset, points


def complete_size(path: Path) -> int:
    """Bytes of `path` up to the end of its last complete frame (a torn tail excluded)."""
    with path.open("rb") as f:
        return line_start(f, f.seek(0, 2))


def count_points(path: Path, offset: int = 0) -> int:
    """Metric points in the complete frames of a journal from `offset`."""
    total = 0
    with path.open("rb") as f:
        for _, _, points in read_batches(f, offset, None, FRAME_POINTS):
            total += points
    return total
