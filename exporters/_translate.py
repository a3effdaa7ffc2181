"""Pure translation helpers shared by the exporters: names, chunks, limits."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

_log = logging.getLogger("tracelet")

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


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
        self._cache: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # mapped name -> the name it stands for

    def __call__(self, name: str) -> str:
        mapped = self._cache.get(name)
        if mapped is None:
            mapped = self._invalid.sub("_", name)
            if self._fix is not None:
                mapped = self._fix(mapped)
            mapped = mapped[: self._max_len]
            if self._fix is not None:
                mapped = self._fix(mapped)  # a cut can leave a trailing "/"
            base, n = mapped, 1
            while self._taken.get(mapped, name) != name:
                n += 1
                suffix = f"_{n}"
                mapped = base[: self._max_len - len(suffix)] + suffix
            self._taken[mapped] = name
            if mapped != name:
                _log.warning(
                    "tracelet: %s cannot store the name %r; it is stored as %r",
                    self._backend,
                    name,
                    mapped,
                )
            self._cache[name] = mapped
        return mapped


def truncate(backend: str, kind: str, key: str, value: Any, limit: int) -> str:
    """``str(value)`` cut to `limit` characters, with a warning when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        _log.warning(
            "tracelet: %s %s %r is %d characters; %s keeps the first %d",
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
                "tracelet: %s tag %r is %d characters; %s keeps the first %d",
                backend,
                label,
                len(label),
                backend,
                max_len,
            )
            label = label[:max_len]
        labels.append(label)
    return labels
