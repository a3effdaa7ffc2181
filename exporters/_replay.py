"""Exactly once after a crash, for trackers that do not de-duplicate (W&B, ClearML).

After a kill -9, ``tracelet sync`` re-sends the journal from the durable
cursor on (`tracelet._delivery`). The tracker may already hold the first
points of that replay: the ones it stored after the last durable cursor and
before the kill. MLflow's store ignores them; W&B would add the rows again,
and a ClearML offline session would hold the events twice.

So each of those exporters saves, with every durable cursor, a *mark*: where
its stored data stood then (W&B: the next ``_step``; ClearML: the size of the
offline session's ``metrics.jsonl``). When resumed, it reads back what was
stored past the mark, as ``(key, step)`` pairs, into a `StoredTail`, and skips
the replayed points found there.

Why this is exact: what a tracker stored past the mark is a prefix of what is
replayed, because both are the journal's points in order. `StoredTail` skips a
replayed point while its ``(key, step)`` is among the stored ones, and stops
skipping for good at the first one that is not (the end of that prefix), so
it never skips a point the tracker does not hold. It matches by key and step
rather than by position so that the order of keys inside one W&B row does not
matter. What is left to skip when a durable cursor is saved again goes into
the resume state (`pending`), so a second crash during ``tracelet sync``
still ends with each point stored once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from tracelet.export import MetricPoint

_log = logging.getLogger("tracelet")

Entry = tuple[str, int]
T = TypeVar("T")


class StoredTail:
    """The points a resumed tracker run already holds past the durable cursor."""

    def __init__(self, entries: Iterable[Entry] = (), backend: str = "") -> None:
        self._left: Counter[Entry] = Counter(entries)
        self.skipped = 0
        self._backend = backend
        if self._left:
            _log.info(
                "resumed %s run holds %d points past the durable cursor; "
                "they are skipped when replayed",
                backend,
                len(self),
            )

    def __bool__(self) -> bool:
        return bool(self._left)

    def __len__(self) -> int:
        return sum(self._left.values())

    def holds(self, key: str, step: int) -> bool:
        """True (and counted off) when this replayed point is stored already: skip it."""
        if not self._left:
            return False
        entry = (key, step)
        if self._left[entry] > 0:
            self._left[entry] -= 1
            if self._left[entry] == 0:
                del self._left[entry]
            self.skipped = n = self.skipped + 1
            if not self._left:
                _log.info("resumed %s run: skipped %d points", self._backend, n)
            return True
        _log.info(
            "resumed %s run: %d points were already stored and skipped; "
            "%r at step %d is new, and so is everything after it (%d stored entries unmatched)",
            self._backend,
            self.skipped,
            key,
            step,
            len(self),
        )
        self._left.clear()
        return False

    def pending(self) -> list[list[Any]]:
        """What is left to skip, JSON-able, for the resume state."""
        return [[key, step] for (key, step), n in self._left.items() for _ in range(n)]


def pending_entries(state: dict[str, Any]) -> list[Entry]:
    """The ``pending`` entries a resume state carries (none for a state without them)."""
    return [(str(key), int(step)) for key, step in state.get("pending") or ()]


class RetryMark(Generic[T]):
    """How far the last attempt at a batch got, so that a retry sends only the rest.

    Delivery sends a batch again when its export raised (`tracelet._delivery`);
    W&B and ClearML would store again what the failed attempt had written. A
    batch is known again by its length and its first and last points.
    """

    def __init__(self) -> None:
        self._batch: tuple[Any, ...] | None = None
        self._items: Sequence[T] = ()
        self._done = 0

    def items(
        self, points: Sequence[MetricPoint], prepare: Callable[[Sequence[MetricPoint]], Sequence[T]]
    ) -> Iterator[T]:
        """What is left to send of ``prepare(points)``, prepared once per batch.

        An item counts as sent when the next one is asked for: one whose sending
        raised is the first of the retry.
        """
        batch = (len(points), points[0], points[-1])
        if batch != self._batch:
            self._batch, self._items, self._done = batch, prepare(points), 0
        while self._done < len(self._items):
            yield self._items[self._done]
            self._done += 1
        self._batch = None
