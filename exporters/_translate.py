"""Pure translation helpers shared by the exporters: names, chunks, limits."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

_log = logging.getLogger("tracelet")

T = TypeVar("T")
N = TypeVar("N")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


class UniqueNames(Generic[N]):
    """The names a backend stores, each standing for one tracelet name only.

    `claim` hands a tracelet name the name it wants, or, when another tracelet
    name holds that one already (``a@b`` and ``a_b`` both becoming ``a_b``), the
    first free ``suffixed(wanted, n)`` for n = 2, 3, ...: two series never merge.

    Args:
        suffixed: the wanted name with the suffix for `n` (``a_b`` → ``a_b_2``).
    """

    def __init__(self, suffixed: Callable[[N, int], N]) -> None:
        self._suffixed = suffixed
        self._given: dict[str, N] = {}  # tracelet name -> its stored name
        self._taken: dict[N, str] = {}  # stored name -> the tracelet name it stands for

    def get(self, name: str) -> N | None:
        """The stored name `name` was given, if any."""
        return self._given.get(name)

    def claim(self, name: str, wanted: N) -> N:
        """Give `name` the stored name `wanted`, or a suffixed one when that is taken."""
        given, n = wanted, 1
        while self._taken.get(given, name) != name:
            n += 1
            given = self._suffixed(wanted, n)
        self._taken[given] = name
        self._given[name] = given
        return given


def suffix(name: str, n: int, max_len: int | None = None) -> str:
    """``name_<n>``, `name` cut so the result holds at most `max_len` characters."""
    end = f"_{n}"
    return (name if max_len is None else name[: max_len - len(end)]) + end


class NameMapper:
    """Maps names to what a backend accepts, warning once per changed name.

    The mapping never merges two names: when a mapped name is already taken by
    another name (``a@b`` and ``a_b`` both becoming ``a_b``), the later one gets
    a suffix (``a_b_2``), so each tracelet series stays a series of its own.

    Args:
        backend: for the warning.
        invalid: a regex of the characters the backend refuses; each becomes ``_``.
        max_len: longest name the backend stores.
        fix: applied after the character substitution, for rules beyond
            characters (MLflow refuses path-like names such as ``/a`` or ``a//b``).
    """

    def __init__(
        self,
        backend: str,
        invalid: str,
        max_len: int,
        fix: Callable[[str], str] | None = None,
    ) -> None:
        self._backend = backend
        self._invalid = re.compile(invalid)
        self._max_len = max_len
        self._fix = fix
        self._names = UniqueNames[str](lambda name, n: suffix(name, n, max_len))

    def __call__(self, name: str) -> str:
        mapped = self._names.get(name)
        if mapped is None:
            wanted = self._invalid.sub("_", name)
            if self._fix is not None:
                wanted = self._fix(wanted)
            wanted = wanted[: self._max_len]
            if self._fix is not None:
                wanted = self._fix(wanted)  # a cut can leave a trailing "/"
            mapped = self._names.claim(name, wanted)
            if mapped != name:
                _log.warning(
                    "%s cannot store the name %r; it is stored as %r",
                    self._backend,
                    name,
                    mapped,
                )
        return mapped


def truncate(backend: str, kind: str, key: str, value: Any, limit: int) -> str:
    """``str(value)`` cut to `limit` characters, with a warning when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        _log.warning(
            "%s %s %r is %d characters; %s keeps the first %d",
            backend,
            kind,
            key,
            len(text),
            backend,
            limit,
        )
        text = text[:limit]
    return text


def tag_dict(tags: dict[str, str] | list[str] | None) -> dict[str, str]:
    """Tags given as a dict, or as a list of labels (each becomes ``label: ""``)."""
    if tags is None:
        return {}
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    return {str(t): "" for t in tags}


def tag_labels(backend: str, tags: dict[str, str], max_len: int | None = None) -> list[str]:
    """Key-value tags as the labels W&B and ClearML keep: ``key:value``, or ``key`` when empty.

    A label longer than `max_len` is cut, with a warning.
    """
    labels = []
    for key, value in tags.items():
        label = f"{key}:{value}" if value != "" else key
        if max_len is not None and len(label) > max_len:
            _log.warning(
                "%s tag %r is %d characters; %s keeps the first %d",
                backend,
                label,
                len(label),
                backend,
                max_len,
            )
            label = label[:max_len]
        labels.append(label)
    return labels


class TagLabels:
    """A run's tags as W&B and ClearML keep them: a list of labels, set whole each time.

    The configured labels come first, then one label per tag key logged since,
    the latest value of a key replacing its earlier label.
    """

    def __init__(
        self, backend: str, tags: dict[str, str] | list[str] | None, max_len: int | None = None
    ) -> None:
        self._backend = backend
        self._max_len = max_len
        #: The labels that stay whatever is logged (the configured ones).
        self.base = tag_labels(backend, tag_dict(tags), max_len)
        self._logged: dict[str, str] = {}  # tag key -> its label

    def update(self, tags: dict[str, str]) -> list[str]:
        """Add logged tags; return every label, for the backend to set."""
        labels = tag_labels(self._backend, tags, self._max_len)
        self._logged.update(zip(tags, labels, strict=True))
        return self.labels

    @property
    def labels(self) -> list[str]:
        return [*self.base, *self._logged.values()]
