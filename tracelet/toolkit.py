"""What an exporter may use from tracelet's core, besides the contract in `tracelet.export`.

tracelet's own exporters (``tracelet.exporters.*``) and plug-ins use these
instead of the core's private modules, so the core can change its insides
without breaking them:

- `redact_url`: a URL without the credentials it may carry, for anything an
  exporter prints or logs about where it sends (``https://u:***@host``).
- `line_start`: where the line holding a byte offset starts, reading
  backwards (a resume mark inside a JSON-lines file; the end of the last
  complete line of a journal).
- `redact_command`: a command line with secret-looking values replaced by
  ``***`` (for a tracker SDK that would record ``sys.argv``).
- `iter_wandb_history`: the history rows of a W&B ``.wandb`` file from a byte
  offset on (what a resumed W&B run already holds).
"""

from __future__ import annotations

from typing import IO

from tracelet._provenance import redact_command
from tracelet._readback import iter_wandb_history
from tracelet._secrets import redact_url

__all__ = ["iter_wandb_history", "line_start", "redact_command", "redact_url"]


def line_start(f: IO[bytes], offset: int, chunk: int = 1 << 16) -> int:
    """Where the line holding byte `offset` of `f` starts (`offset` itself at a line start).

    Reads backwards from `offset`, `chunk` bytes at a time, to the newline
    before it, so it costs the length of that line, not of the file. With
    `offset` at the end of the file, it is the end of the last complete line.
    """
    end = offset
    while end > 0:
        begin = max(0, end - chunk)
        f.seek(begin)
        found = f.read(end - begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0
