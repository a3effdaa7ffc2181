"""How tracelet talks to the user's terminal: one short line per event.

Messages carry no ``tracelet:`` prefix of their own: the logger's name
(``tracelet``) says where they come from, so a user's ``logging`` format
(``%(levelname)s %(name)s: %(message)s``) shows it once. When the
application has configured no logging at all, Python's last-resort handler
would print the bare message; `install_fallback` gives the ``tracelet``
logger a handler that prints ``tracelet: <message>`` in that case only, and
steps aside as soon as the root logger has a handler (no line twice).

Exceptions are told in a line by `brief` (type and the first line of the
message, cut to `BRIEF_CHARS`); the whole repr and traceback go to DEBUG.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["BRIEF_CHARS", "brief", "install_fallback"]

#: The longest an exception's description gets in a WARNING or ERROR line.
BRIEF_CHARS = 160


def brief(exc: BaseException | None) -> str:
    """``"ConnectionError: Connection refused"``: type and first line, at most `BRIEF_CHARS`."""
    if exc is None:
        return "no error"
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= BRIEF_CHARS else line[: BRIEF_CHARS - 1] + "…"


class _Fallback(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints tracelet's records while the application has configured no logging."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:  # the application's own handlers show it
            return
        self.stream = sys.stderr  # follow a redirected stderr, as the last-resort handler does
        super().emit(record)


_FALLBACK = _Fallback()
_FALLBACK.setFormatter(logging.Formatter("tracelet: %(message)s"))


def install_fallback() -> None:
    """Give the ``tracelet`` logger its fallback handler (idempotent)."""
    logger = logging.getLogger("tracelet")
    if _FALLBACK not in logger.handlers:
        logger.addHandler(_FALLBACK)
