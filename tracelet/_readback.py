"""Read what a tracker stored, from its local files: W&B ``.wandb`` logs, ClearML offline sessions.

Used by tracelet's tests (and offered to users through `tracelet.testing`) to
check what really arrived, with no server and no network. Neither SDK ships a
reader: W&B 0.31 removed its ``datastore`` module, ClearML only imports an
offline session into a server.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClearMLSession", "WandbRun", "read_clearml_session", "read_wandb_run"]

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _LAST = 1, 2, 4


@dataclass
class WandbRun:
    """A W&B run as its ``.wandb`` file holds it."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    #: ``run.config`` (W&B's own ``_wandb`` entry left out).
    config: dict[str, Any] = field(default_factory=dict)
    #: History rows in order: ``{key: value}`` with ``_step`` and ``_timestamp``.
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: ``define_metric`` records: ``{name or glob: step metric}``.
    step_metrics: dict[str, str] = field(default_factory=dict)
    #: ``run.finish(exit_code=...)``; None when the run never finished.
    exit_code: int | None = None

    def history(self, key: str, step_key: str = "tracelet/step") -> list[tuple[int, float]]:
        """``(step, value)`` of one metric in logging order, the step read from `step_key`."""
        return [(int(r[step_key]), float(r[key])) for r in self.rows if key in r]


def iter_wandb_records(path: str | Path, start: int = 0) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log of 32 KiB blocks).

    Args:
        path: the file.
        start: a byte offset, to read only the file's tail: reading begins at
            the first record that starts in the block holding `start`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        head = f.read(_HEADER)
        magic, version, _ = struct.unpack("<4sHB", head) if len(head) == _HEADER else (b"", 0, 0)
        if magic != b":W&B" or version != 0xBEE1:
            raise ValueError(f"{str(path)!r} is not a .wandb file (header {head!r})")
        begin = max(_HEADER, start - start % _BLOCK)
        f.seek(begin)
        data = f.read()
    pos, buf = begin, b""  # pos: an offset in the file; data starts at `begin`
    synced = begin == _HEADER  # mid-file, skip chunks of a record that began earlier
    while pos + _HEADER <= begin + len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        at = pos - begin
        crc, length, kind = struct.unpack("<IHB", data[at : at + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[at + _HEADER : at + _HEADER + length]
        pos += _HEADER + length
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{str(path)!r}: bad checksum at byte {pos - length - _HEADER}")
        if not synced:
            if kind not in (_FULL, _FIRST):
                continue
            synced = True
        buf = chunk if kind in (_FULL, _FIRST) else buf + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()  # type: ignore[attr-defined]
            record.ParseFromString(buf)
            yield record


def iter_wandb_history(path: str | Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(_step, row)`` of each history record of a ``.wandb`` file, in order.

    A record that fails its checksum ends the file: a writer killed mid-write
    leaves such a torn record last, and what precedes it is intact. `start`
    reads only the tail, as in `iter_wandb_records`.
    """
    records = iter_wandb_records(path, start)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except ValueError:
            return
        if record.WhichOneof("record_type") == "history":
            history = record.history
            yield history.step.num, {_item_key(i): _item_value(i) for i in history.item}


def _item_key(item: Any) -> str:
    return ".".join(item.nested_key) if item.nested_key else str(item.key)


def _item_value(item: Any) -> Any:
    return json.loads(item.value_json)


def read_wandb_run(path: str | Path) -> WandbRun:
    """Read a W&B run from its ``.wandb`` file, or from a run folder that holds one.

    Values come back as W&B stored them, JSON: ``1.0`` reads back as ``1``,
    NaN and ±inf exactly. ``run.finish()`` returns before wandb-core has
    written an offline run out; the file is complete once the W&B service
    has stopped (``wandb.teardown()``, or the end of the process).
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.wandb")) or sorted(path.glob("*/*.wandb"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one .wandb file under {str(path)!r}, found {found}")
        path = found[0]
    out = WandbRun(path=path)
    for record in iter_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run_id, out.project, out.entity = r.run_id, r.project, r.entity
            out.name, out.group, out.job_type, out.notes = (
                r.display_name,
                r.run_group,
                r.job_type,
                r.notes,
            )
            out.tags = list(r.tags)
            for item in r.config.update:
                out.config[_item_key(item)] = _item_value(item)
        elif kind == "config":
            for item in record.config.update:
                out.config[_item_key(item)] = _item_value(item)
            for item in record.config.remove:
                out.config.pop(_item_key(item), None)
        elif kind == "history":
            out.rows.append({_item_key(i): _item_value(i) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_item_key(item)] = _item_value(item)
        elif kind == "metric":
            m = record.metric
            if m.step_metric:
                out.step_metrics[m.name or m.glob_name] = m.step_metric
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    out.config.pop("_wandb", None)
    return out


@dataclass
class ClearMLSession:
    """A ClearML task as its offline session (folder or ``.zip``) holds it."""

    path: Path
    #: ``task.json`` as ClearML wrote it.
    task: dict[str, Any] = field(default_factory=dict)
    #: ``{(title, series): [(iteration, value), ...]}``, every event in order.
    scalars: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    #: ``Logger.report_single_value`` values.
    single_values: dict[str, float] = field(default_factory=dict)
    #: Hyperparameters as ``{"Section/name": text}``, user properties left out.
    params: dict[str, str] = field(default_factory=dict)
    #: User properties, ``{name: text}``.
    properties: dict[str, str] = field(default_factory=dict)
    #: Console lines (``report_text`` and captured output).
    console: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.task.get("name", ""))

    @property
    def tags(self) -> list[str]:
        return list(self.task.get("tags") or [])


_SINGLE_VALUE_ITER = -(2**31)


def read_clearml_session(path: str | Path) -> ClearMLSession:
    """Read a ClearML offline session: ``<cache>/offline/offline-<id>`` or its ``.zip``."""
    path = Path(path)
    if path.is_dir():

        def read(name: str) -> str:
            file = path / name
            return file.read_text() if file.exists() else ""

    else:
        archive = zipfile.ZipFile(path)
        names = set(archive.namelist())

        def read(name: str) -> str:
            return archive.read(name).decode() if name in names else ""

    out = ClearMLSession(path=path, task=json.loads(read("task.json") or "{}"))
    for line in read("metrics.jsonl").splitlines():
        for event in json.loads(line):  # each line is a JSON list of events
            if event.get("type") != "training_stats_scalar":
                continue
            if event["metric"] == "Summary" and event["iter"] == _SINGLE_VALUE_ITER:
                out.single_values[event["variant"]] = event["value"]
            else:
                key = (event["metric"], event["variant"])
                out.scalars.setdefault(key, []).append((event["iter"], event["value"]))
    for line in read("log.jsonl").splitlines():
        for event in json.loads(line):
            if event.get("msg"):
                out.console.append(event["msg"])
    for section, params in (out.task.get("hyperparams") or {}).items():
        for name, entry in params.items():
            if section == "properties":
                out.properties[name] = entry.get("value", "")
            else:
                out.params[f"{section}/{name}"] = entry.get("value", "")
    return out
