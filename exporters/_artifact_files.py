"""What the tracker exporters share to upload artifacts (`tracelet.export.Artifact`).

A captured file is named by its hash (``<run_dir>/artifacts/<sha256>``);
trackers upload a file under its own name. `staged` lays the artifact out
under its names in a temporary folder of hard links to the captured copies
(the copies never change, so a link is safe; a copy where links fail), and
removes it afterwards: no data is copied, and nothing is read into memory.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from tracelet.export import ARTIFACTS_DIR, Artifact

__all__ = ["link_or_copy", "media_key", "staged"]


def link_or_copy(src: str, dst: Path) -> None:
    """Make `dst` hold the captured file `src`: a hard link, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@contextmanager
def staged(artifact: Artifact) -> Iterator[Path]:
    """The artifact under its own name: ``<tmp>/<name>`` (a file, or a folder of its files).

    Yields:
        The path of the file or folder named like the artifact's last segment.
    """
    base = Path(artifact.root) / ARTIFACTS_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=base if base.is_dir() else None))
    try:
        top = tmp / PurePosixPath(artifact.name).name
        if artifact.is_dir:
            top.mkdir()
            for f in artifact.files:
                link_or_copy(artifact.local_path(f), top / f.path)
        else:
            link_or_copy(artifact.local_path(), top)
        yield top
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def media_key(name: str, allowed: str = r"[^A-Za-z0-9_\-./ ]") -> str:
    """An image's key: its name without the file suffix, other characters as ``_``."""
    stem = str(PurePosixPath(name).with_suffix("")) if PurePosixPath(name).suffix else name
    return re.sub(allowed, "_", stem) or "image"
