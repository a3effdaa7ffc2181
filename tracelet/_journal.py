"""The run journal: an append-only file holding every record of a run, in order.

One frame per line, JSON, so a reader (a delivery thread, or ``tracelet sync``
after a crash) can resume at any byte offset, and a torn last line left by a
killed process is simply not yet a frame::

    {"m": [[names], [values], [steps], [timestamps_ns]]}   metric points
    {"p": {key: value}}                                     params
    {"t": {key: value}}                                     tags
    {"a": {name, kind, files, step, ...}}                   an artifact (`export.Artifact`)

(A system sample is written as a metric frame of its own; only the writer
tells its points apart, for the run's telemetry, see `encode_frames`.)

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
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import compress, count
from pathlib import Path
from typing import IO, Any, NamedTuple

from tracelet.export import Artifact, Batch, MetricPoint
from tracelet.toolkit import line_start

_log = logging.getLogger("tracelet")

#: Metric points per frame; also the most a delivery thread reads at once.
FRAME_POINTS = 1000

Record = tuple[Any, ...]
#: A metric frame's columns: names, values, steps, timestamps (ns).
Columns = tuple[Sequence[str], Sequence[float], Sequence[int], Sequence[int]]


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


def _metric_frame(run: list[Record]) -> tuple[bytes, Columns]:
    """One metric frame: its line and its columns."""
    names, values, steps, times = columns = tuple(zip(*run, strict=True))
    column = _dumps(values)
    if b"null" in column:  # orjson's NaN / inf: this column in json's extensions instead
        column = _std_dumps(values)
    line = b'{"m":[%b,%b,%b,%b]}\n' % (_dumps(names), column, _dumps(steps), _dumps(times))
    return line, columns  # type: ignore[return-value]


class Encoded(NamedTuple):
    """Records encoded as frames (`encode_frames`)."""

    #: ``(line, records it holds)`` for each frame, in order.
    lines: list[tuple[bytes, int]]
    #: Each line as a reader decodes it (what `FrameCache` holds), built from
    #: the records themselves: a reader in this process need not decode it.
    frames: list[Frame]
    #: Metric points the frames hold (system samples included).
    points: int
    #: The metric names the records hold.
    names: set[str]
    #: Points logged by training code (system samples aside) ...
    logged: int
    #: ... the highest step among them (-1: none) ...
    top_step: int
    #: ... and the last value of each of their metrics.
    latest: dict[str, float]


#: The first field of a system sample's record: ``("s", [metric records])``.
SAMPLE = "s"


def encode_frames(records: list[Record]) -> Encoded:
    """Encode records, in order, as frames. Each line ends with ``\\n``.

    A metric record is ``(name, value, step, time_ns)``; a params, tags or
    artifact record is ``("p" | "t" | "a", value)``; a system sample is
    ``("s", [metric records])`` (its points are framed as any others, but
    counted apart: see `Encoded`). Runs on the trainer's journal thread, so
    every pass over the records is a C loop (`map`, `zip`, slicing), never a
    Python one: a batch of points costs about what orjson costs.
    """
    lines: list[tuple[bytes, int]] = []
    frames: list[Frame] = []
    names: set[str] = set()
    latest: dict[str, float] = {}
    points, top_step = 0, -1

    def frame(part: list[Record]) -> Columns:
        line, columns = _metric_frame(part)
        lines.append((line, len(part)))
        frames.append(Frame(len(line), columns))
        names.update(columns[0])
        return columns

    # Where the records that are no metric point are (few): the metric points
    # between them are framed `FRAME_POINTS` at a time.
    others = list(compress(count(), map((4).__ne__, map(len, records))))
    start = 0
    for end in [*others, len(records)]:
        for i in range(start, end, FRAME_POINTS):
            columns = frame(records[i : min(i + FRAME_POINTS, end)])
            latest.update(zip(columns[0], columns[1], strict=True))
            top_step = max(top_step, max(columns[2]))
        if end < len(records):
            key, value = records[end]
            if key == SAMPLE:
                if value:
                    frame(value)
                    lines[-1] = (lines[-1][0], 1)  # one record, however many series
                    points += len(value)
            else:
                try:
                    line = _dumps({key: value}) + b"\n"
                except TypeError:  # orjson: an int past 64 bits, a key that is no str
                    line = _std_dumps({key: value}) + b"\n"
                lines.append((line, 1))
                frames.append(_other_frame(len(line), key, value))
        start = end + 1
    logged = len(records) - len(others)
    return Encoded(lines, frames, points + logged, names, logged, top_step, latest)


def encode(records: list[Record]) -> bytes:
    """Encode records, in order, as frames (see `encode_frames`)."""
    return b"".join(line for line, _ in encode_frames(records).lines)


_new_point = partial(tuple.__new__, MetricPoint)


class Frame:
    """One decoded frame: its length in bytes and what it holds.

    A metric frame keeps the columns it was read as; its `MetricPoint`s are
    built when first asked for (and kept: the agent's backends share a frame
    through `FrameCache`). The in-memory test double stores the columns
    themselves, so delivering to it builds no point in the training process.
    """

    __slots__ = ("_metrics", "artifact", "columns", "params", "size", "tags")

    def __init__(
        self,
        size: int,
        columns: Columns | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        artifact: Artifact | None = None,
    ) -> None:
        self.size = size
        #: ``(names, values, steps, timestamps_ns)`` of a metric frame, else None.
        self.columns = columns
        self.params = params
        self.tags = tags
        self.artifact = artifact
        self._metrics: list[MetricPoint] | None = None

    @property
    def points(self) -> int:
        return len(self.columns[0]) if self.columns is not None else 0

    @property
    def metrics(self) -> list[MetricPoint]:
        """The frame's points (built on first use)."""
        if self._metrics is None:
            self._metrics = points_of(self.columns) if self.columns is not None else []
        return self._metrics


def points_of(columns: Columns) -> list[MetricPoint]:
    """`MetricPoint`s from a metric frame's columns (values made floats, as logged)."""
    names, values, steps, times = columns
    return list(map(_new_point, zip(names, map(float, values), steps, times, strict=True)))


class JournalBatch(Batch):
    """A `Batch` read from the journal: its `metrics` list is built when first read.

    What an exporter sees is a plain batch. The frames stay reachable
    (`frames`) for a consumer that takes columns (`tracelet.testing`'s
    in-memory double), and `len` needs no point built.
    """

    def __init__(self) -> None:  # `metrics` is left unset: `__getattr__` builds it
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[Artifact] = []
        #: The metric frames this batch holds, in order.
        self.frames: list[Frame] = []
        self.points = 0

    def __getattr__(self, name: str) -> Any:
        if name != "metrics":
            raise AttributeError(name)
        metrics = [p for frame in self.frames for p in frame.metrics]
        self.metrics = metrics
        return metrics

    @property
    def built(self) -> bool:
        """True once `metrics` was read (or set): the frames may no longer tell it all."""
        return "metrics" in vars(self)

    def __len__(self) -> int:
        return self.points + len(self.params) + len(self.tags) + len(self.artifacts)


def decode(line: bytes) -> Frame:
    """Decode one whole line of the journal.

    Raises:
        ValueError, TypeError, KeyError: the line is no frame (a damaged block).
    """
    frame = _loads(line)
    if "m" in frame:
        names, values, steps, times = frame["m"]
        if not len(names) == len(values) == len(steps) == len(times):
            raise ValueError("a metric frame with columns of different lengths")
        return Frame(len(line), (names, values, steps, times))
    for key in ("p", "t", "a"):
        if key in frame:
            return _other_frame(len(line), key, frame[key])
    return Frame(len(line))


def _other_frame(size: int, key: str, value: Any) -> Frame:
    """A params (``p``), tags (``t``) or artifact (``a``) frame."""
    if key == "p":
        return Frame(size, params=dict(value))
    if key == "t":
        return Frame(size, tags=dict(value))
    return Frame(size, artifact=Artifact.from_json(value))


def add_frame(batch: Batch, line: bytes) -> int:
    """Add one frame to `batch`; return the number of metric points it held."""
    return _add(batch, decode(line))


def _add(batch: Batch, frame: Frame) -> int:
    if frame.columns is not None:
        if isinstance(batch, JournalBatch) and not batch.built:
            batch.frames.append(frame)
            batch.points += frame.points
        else:
            batch.metrics.extend(frame.metrics)
    if frame.params:
        batch.params.update(frame.params)
    if frame.tags:
        batch.tags.update(frame.tags)
    if frame.artifact is not None:
        batch.artifacts.append(frame.artifact)
    return frame.points


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
    batch, points = JournalBatch(), 0
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
                frame = Frame(len(line))
            if cache is not None:
                cache.put(offset, frame)
        alone = frame.artifact is not None
        if alone and len(batch):  # an artifact goes in a batch of its own
            yield batch, offset, points
            batch, points = JournalBatch(), 0
        points += _add(batch, frame)
        offset += frame.size
        if points >= max_points or (alone and len(batch)):
            yield batch, offset, points
            batch, points = JournalBatch(), 0
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
