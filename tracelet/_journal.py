"""The run journal: an append-only file holding every record of a run, in order.

One frame per line, JSON, so a reader (a delivery thread, or ``tracelet sync``
after a crash) can resume at any byte offset, and a torn last line left by a
killed process is simply not yet a frame::

    {"m": [[names], [values], [steps], [timestamps_ns]]}   metric points
    {"p": {key: value}}                                     params
    {"t": {key: value}}                                     tags
    {"a": {name, kind, files, step, ...}}                   an artifact (`export.Artifact`)

Frames are encoded with orjson where it is installed (measured: 125 µs per
1,000 points against 717 µs for the standard `json`, on the trainer's journal
thread; decoding 85 µs against 436 µs), else with `json`. orjson cannot write
NaN or inf (it writes ``null``), so a frame whose values hold one has its
values column written by `json`, as the JSON extensions ``NaN`` /
``Infinity``; such a line is read back by `json`, exactly. Both encoders
write the same frames: journals stay readable whichever wrote them.

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from tracelet.export import Artifact, Batch, MetricPoint
from tracelet.toolkit import line_start

_log = logging.getLogger("tracelet")

#: Metric points per frame; also the most a delivery thread reads at once.
FRAME_POINTS = 1000

Record = tuple[Any, ...]


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _std_loads(line: bytes) -> Any:
    return json.loads(line)


_dumps: Callable[[Any], bytes] = _std_dumps
_loads: Callable[[bytes], Any] = _std_loads
try:  # the fast path; the standard library's json where orjson is not installed
    import orjson

    _dumps = orjson.dumps

    def _fast_loads(line: bytes) -> Any:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:  # NaN / Infinity, which only json reads
            return json.loads(line)

    _loads = _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    pass


def _metric_frame(run: list[Record]) -> bytes:
    names, values, steps, times = zip(*run, strict=True)
    column = _dumps(values)
    if b"null" in column:  # orjson's NaN / inf: this column in json's extensions instead
        column = _std_dumps(values)
    return b'{"m":[%b,%b,%b,%b]}\n' % (_dumps(names), column, _dumps(steps), _dumps(times))


def encode_frames(records: list[Record]) -> list[tuple[bytes, int]]:
    """Encode records, in order, as frames: ``(line, records it holds)`` for each.

    A metric record is ``(name, value, step, time_ns)``; a params or tags
    record is ``("p" | "t", dict)``. Each line ends with ``\\n``.
    """
    out: list[tuple[bytes, int]] = []
    run: list[Record] = []

    def close_run() -> None:
        for i in range(0, len(run), FRAME_POINTS):
            part = run[i : i + FRAME_POINTS]
            out.append((_metric_frame(part), len(part)))
        run.clear()

    for rec in records:
        if len(rec) == 4:
            run.append(rec)
        else:
            close_run()
            try:
                line = _dumps({rec[0]: rec[1]})
            except TypeError:  # orjson: an int past 64 bits, a key that is no str
                line = _std_dumps({rec[0]: rec[1]})
            out.append((line + b"\n", 1))
    close_run()
    return out


def encode(records: list[Record]) -> bytes:
    """Encode records, in order, as frames (see `encode_frames`)."""
    return b"".join(line for line, _ in encode_frames(records))


class Frame(NamedTuple):
    """One decoded frame: its length in bytes and what it holds."""

    size: int
    metrics: list[MetricPoint]
    params: dict[str, Any] | None = None
    tags: dict[str, str] | None = None
    artifact: Artifact | None = None


_DAMAGED: list[MetricPoint] = []


def decode(line: bytes) -> Frame:
    """Decode one whole line of the journal.

    Raises:
        ValueError, TypeError, KeyError: the line is no frame (a damaged block).
    """
    frame = _loads(line)
    if "m" in frame:
        names, values, steps, times = frame["m"]
        return Frame(len(line), list(map(MetricPoint, names, map(float, values), steps, times)))
    if "p" in frame:
        return Frame(len(line), [], params=dict(frame["p"]))
    if "t" in frame:
        return Frame(len(line), [], tags=dict(frame["t"]))
    if "a" in frame:
        return Frame(len(line), [], artifact=Artifact.from_json(frame["a"]))
    return Frame(len(line), [])


def add_frame(batch: Batch, line: bytes) -> int:
    """Add one frame to `batch`; return the number of metric points it held."""
    return _add(batch, decode(line))


def _add(batch: Batch, frame: Frame) -> int:
    batch.metrics.extend(frame.metrics)
    if frame.params:
        batch.params.update(frame.params)
    if frame.tags:
        batch.tags.update(frame.tags)
    if frame.artifact is not None:
        batch.artifacts.append(frame.artifact)
    return len(frame.metrics)


class FrameCache:
    """The frames decoded last, by offset: several readers of one journal decode each once.

    The delivery agent reads the journal once per backend, each from its own
    cursor; the first reader to reach a frame decodes it, the others take it
    from here while it is among the last `size` frames (frames are immutable,
    and so are the `MetricPoint` tuples they hold).
    """

    def __init__(self, size: int = 64) -> None:
        self._frames: OrderedDict[int, Frame] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, offset: int) -> Frame | None:
        with self._lock:
            return self._frames.get(offset)

    def put(self, offset: int, frame: Frame) -> None:
        with self._lock:
            self._frames[offset] = frame
            while len(self._frames) > self._size:
                self._frames.popitem(last=False)


def read_batches(
    f: IO[bytes], offset: int, end: int | None, max_points: int, cache: FrameCache | None = None
) -> Iterator[tuple[Batch, int, int]]:
    """Read whole frames from `offset` up to `end` (or the last complete line).

    Args:
        cache: frames other readers of the same journal decoded (`FrameCache`).

    Yields:
        ``(batch, next_offset, points)``: a batch of at most about `max_points`
        points (never splitting a frame) and where the next unread frame starts.
    """
    f.seek(offset)
    at = offset  # where `f` stands
    batch, points = Batch(), 0
    while end is None or offset < end:
        frame = cache.get(offset) if cache is not None else None
        if frame is None:
            if at != offset:
                f.seek(offset)
            line = f.readline()
            at = offset + len(line)
            if not line.endswith(b"\n"):  # nothing more, or a torn last write
                break
            try:
                frame = decode(line)
            except (ValueError, TypeError, KeyError) as exc:
                _log.error(
                    "skipping a damaged journal frame at byte %d of %s: %r",
                    offset,
                    getattr(f, "name", "the journal"),
                    exc,
                )
                frame = Frame(len(line), _DAMAGED)
            if cache is not None:
                cache.put(offset, frame)
        alone = frame.artifact is not None
        if alone and len(batch):  # an artifact goes in a batch of its own
            yield batch, offset, points
            batch, points = Batch(), 0
        points += _add(batch, frame)
        offset += frame.size
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
