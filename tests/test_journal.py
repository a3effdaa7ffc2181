"""The journal frame format: exact round trips, torn writes ignored."""

from __future__ import annotations

import math
from pathlib import Path

from tracelet._journal import FRAME_POINTS, count_points, encode, read_batches


def _read_all(path: Path, max_points: int = 10_000) -> list:
    with path.open("rb") as f:
        return list(read_batches(f, 0, None, max_points))


def test_round_trip_keeps_order_nan_inf_and_kinds(tmp_path: Path) -> None:
    records = [
        ("loss", 1.5, 0, 10),
        ("loss", math.nan, 1, 11),
        ("p", {"lr": 0.1, "opt/name": "adam", "none": None}),
        ("acc", math.inf, 7, 12),
        ("acc", -math.inf, 3, 13),
        ("t", {"stage": "train"}),
    ]
    path = tmp_path / "j"
    path.write_bytes(encode(records))
    [(batch, offset, points)] = _read_all(path)
    assert offset == path.stat().st_size and points == 4
    got = [(p.name, p.value, p.step, p.timestamp_ns) for p in batch.metrics]
    assert got[0] == ("loss", 1.5, 0, 10)
    assert got[1][0] == "loss" and math.isnan(got[1][1])
    assert got[2:] == [("acc", math.inf, 7, 12), ("acc", -math.inf, 3, 13)]
    assert batch.params == {"lr": 0.1, "opt/name": "adam", "none": None}
    assert batch.tags == {"stage": "train"}


def test_frames_are_capped_and_batches_never_split_a_frame(tmp_path: Path) -> None:
    records = [("m", float(i), i, i) for i in range(2 * FRAME_POINTS + 5)]
    path = tmp_path / "j"
    path.write_bytes(encode(records))
    assert path.read_bytes().count(b"\n") == 3
    batches = _read_all(path, max_points=FRAME_POINTS)
    assert [points for _, _, points in batches] == [FRAME_POINTS, FRAME_POINTS, 5]
    steps = [p.step for b, _, _ in batches for p in b.metrics]
    assert steps == list(range(2 * FRAME_POINTS + 5))


def test_torn_last_line_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "j"
    whole = encode([("a", 1.0, 0, 1)])
    path.write_bytes(whole + encode([("a", 2.0, 1, 2)])[:-7])
    assert count_points(path) == 1
    [(batch, offset, _)] = _read_all(path)
    assert offset == len(whole) and [p.value for p in batch.metrics] == [1.0]


def test_resume_from_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "j"
    first = encode([("a", 1.0, 0, 1)])
    path.write_bytes(first + encode([("a", 2.0, 1, 2)]))
    with path.open("rb") as f:
        [(batch, _, _)] = list(read_batches(f, len(first), None, 100))
    assert [p.step for p in batch.metrics] == [1]
