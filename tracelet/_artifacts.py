"""Artifacts: files, directories, text, dicts, figures and images logged with a run.

What is logged is what the file held at the call. `Experiment.log_artifact`
(and the other ``log_*`` media calls) *captures* the content at once into the
run directory, then journals one ``{"a": ...}`` frame through the run's door
(`_run.Run.put_artifact`), in order with the points::

    <run_dir>/artifacts/<sha256>     one read-only copy per distinct content

Capture, per file, streamed in 1 MiB blocks (memory stays bounded whatever
the size):

1. a copy-on-write clone (``FICLONE``: Btrfs, XFS, bcachefs, ...) when the
   filesystem offers one: no data is copied, and a later write to the
   original leaves the clone alone; its content is then hashed;
2. otherwise a copy, hashed as it is written (one read of the source).

A hard link is never used: it shares the inode, so training code that
rewrites its checkpoint in place (``open(path, "wb")``, ``torch.save`` to the
same path) would change what was "captured". The copy the delivery side
reads is the run's own; the hash is that of the bytes captured.

Delivery (`_delivery.Delivery` → exporters) needs nothing but the journal and
the run directory. Captured files are removed when every backend has
received the run (with the journal), or kept, with it, for ``tracelet sync``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tracelet.export import ARTIFACTS_DIR, Artifact, ArtifactFile

if TYPE_CHECKING:
    from tracelet._run import Run

__all__ = [
    "CHECKPOINT_MODES",
    "ArtifactStore",
    "artifact_name",
    "captured_bytes",
    "release",
]

_log = logging.getLogger("tracelet")

#: Bytes read and written at a time while capturing.
BLOCK = 1 << 20
#: ``ioctl(dst, FICLONE, src)``: clone a whole file (Linux, copy-on-write filesystems).
FICLONE = 0x40049409
#: Values of the ``log_checkpoints`` setting.
CHECKPOINT_MODES = ("off", "last", "best", "all")
_YAML = (".yaml", ".yml")


# -- names ----------------------------------------------------------------------------


def artifact_name(name: Any, what: str = "artifact") -> str:
    """A name inside the run: a relative ``/`` path that stays inside it.

    Raises:
        TypeError: not a str.
        ValueError: empty, absolute, or with a ``..`` segment (it would escape the run).
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__} ({name!r})")
    posix = name.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"{what} name must be a non-empty path inside the run, not {name!r}")
    if posix.startswith("/") or re.match(r"[A-Za-z]:/", posix):
        raise ValueError(
            f"{what} name {name!r} is absolute; give a path inside the run, e.g. {parts[-1]!r}"
        )
    if ".." in parts:
        raise ValueError(
            f"{what} name {name!r} escapes the run ('..'); give a path inside the run, "
            f"e.g. {'/'.join(p for p in parts if p != '..')!r}"
        )
    return "/".join(parts)


# -- capture ---------------------------------------------------------------------------


class ArtifactStore:
    """The captured files of one run: ``<run_dir>/artifacts/<sha256>``."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / ARTIFACTS_DIR
        self.files = 0  # distinct contents captured
        self.bytes = 0  # their size: disk the run directory holds for them
        self._clone = True  # False once the filesystem refused a clone

    def _tmp(self) -> tuple[int, str]:
        self.root.mkdir(exist_ok=True)
        return tempfile.mkstemp(dir=self.root, prefix=".capture-")

    def _keep(self, tmp: str, sha: str, size: int) -> str:
        """Name the captured copy `tmp` after its hash; return that name.

        Each call keeps a copy of its own, so that one can be freed as soon as
        its frame is delivered (`Reaper`) whatever is logged later: the plain
        hash when free (claimed atomically with a link), else the hash and a
        unique suffix.
        """
        os.chmod(tmp, 0o644)  # as a file the user wrote: backends that copy it keep the mode
        try:
            os.link(tmp, self.root / sha)
        except OSError:  # taken (the same content logged before), or no hard links here
            blob = f"{sha}.{uuid.uuid4().hex[:12]}"
            os.replace(tmp, self.root / blob)
        else:
            os.unlink(tmp)
            blob = sha
        self.files += 1
        self.bytes += size
        return blob

    def capture_file(self, src: Path, rel: str = "") -> ArtifactFile:
        """Capture one file's current content; streamed, bounded memory.

        Raises:
            OSError: the file cannot be read (the error names it).
        """
        with open(src, "rb") as source:
            fd, tmp = self._tmp()
            try:
                sha, size = self._clone_or_copy(source, fd)
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
            os.close(fd)
        return ArtifactFile(rel, sha, size, self._keep(tmp, sha, size))

    def _clone_or_copy(self, source: Any, fd: int) -> tuple[str, int]:
        if self._clone and _clone(source.fileno(), fd):
            with open(fd, "rb", closefd=False) as clone:
                clone.seek(0)
                digest = hashlib.file_digest(clone, "sha256")
            return digest.hexdigest(), os.fstat(fd).st_size
        self._clone = False
        digest, size = hashlib.sha256(), 0
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := source.readinto(buf):
            chunk = view[:n]
            digest.update(chunk)  # releases the GIL for blocks this size
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
            size += n
        return digest.hexdigest(), size

    def capture_bytes(self, data: bytes) -> ArtifactFile:
        """Capture content made in memory (text, a dict)."""
        fd, tmp = self._tmp()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        sha = hashlib.sha256(data).hexdigest()
        return ArtifactFile("", sha, len(data), self._keep(tmp, sha, len(data)))

    def capture_written(self, write: Callable[[str], None]) -> ArtifactFile:
        """Capture a file that `write(path)` creates (a figure or image saved by its library)."""
        fd, tmp = self._tmp()
        os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
            size = os.stat(tmp).st_size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ArtifactFile("", sha, size, self._keep(tmp, sha, size))

    def capture_dir(self, src: Path) -> tuple[ArtifactFile, ...]:
        """Capture every regular file under `src`, in sorted order.

        Links to files are followed; links to folders are not (a link cycle
        would never end), nor are sockets or pipes (reading one could block):
        each is named in a warning.
        """
        files, skipped = [], []
        seen: dict[str, str] = {}
        for folder, dirs, names in os.walk(src):
            skipped += [Path(folder) / d for d in dirs if (Path(folder) / d).is_symlink()]
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                if not path.is_file():  # a socket, a pipe, a broken link
                    skipped.append(path)
                    continue
                file = self.capture_file(path, path.relative_to(src).as_posix())
                if file.sha256 in seen:  # the same content again in this folder: one copy
                    os.unlink(self.root / file.blob)
                    self.files, self.bytes = self.files - 1, self.bytes - file.size
                    file = file._replace(blob=seen[file.sha256])
                seen[file.sha256] = file.blob
                files.append(file)
        if skipped:
            _log.warning(
                "log_artifact %s: left out %d entries that are not regular files or are "
                "links to folders: %s",
                src,
                len(skipped),
                ", ".join(str(p.relative_to(src)) for p in skipped[:5]),
            )
        return tuple(files)


def _clone(src: int, dst: int) -> bool:
    """Clone `src` into `dst` copy-on-write; False where the filesystem cannot.

    Any refusal (no such ioctl, another filesystem, no reflink support) falls
    back to a copy: a clone is all or nothing, so `dst` is still empty then.
    """
    try:
        import fcntl

        fcntl.ioctl(dst, FICLONE, src)
    except (ImportError, OSError) as exc:
        _log.debug("no copy-on-write clone here (%r): captured files are copied", exc)
        return False
    return True


# -- what the Experiment methods record --------------------------------------------------


def accepting(run: Run) -> bool:
    """True when the run takes artifacts; checked before anything is captured.

    Raises:
        ExperimentClosedError: the run has ended (a forked child's copy: False, warned once).
    """
    from tracelet._run import RunState

    if run.state is RunState.ACTIVE:
        return True
    run._refuse()
    return False


def _media_type(name: str) -> str | None:
    if name.endswith(_YAML):
        return "application/yaml"
    return mimetypes.guess_type(name, strict=False)[0]


def _record(
    run: Run,
    name: str,
    kind: str,
    files: tuple[ArtifactFile, ...],
    step: int | None = None,
    media_type: str | None = None,
) -> Artifact:
    artifact = Artifact(
        name=name,
        kind=kind,
        files=files,
        step=step,
        media_type=media_type if media_type is not None or kind == "dir" else _media_type(name),
        timestamp_ns=time.time_ns(),
    )
    run.put_artifact(artifact)
    _telemetry_event(run, artifact)
    return artifact


def _telemetry_event(run: Run, artifact: Artifact) -> None:
    """An event on the run's span: name, kind, size and hash, never the content."""
    try:
        attributes: dict[str, Any] = {
            "tracelet.artifact.name": artifact.name,
            "tracelet.artifact.kind": artifact.kind,
            "tracelet.artifact.size": artifact.size,
            "tracelet.artifact.files": len(artifact.files),
        }
        if len(artifact.files) == 1:
            attributes["tracelet.artifact.sha256"] = artifact.files[0].sha256
        if artifact.step is not None:
            attributes["tracelet.artifact.step"] = artifact.step
        run.telemetry.tracing.run_span.add_event("tracelet.artifact", attributes)
    except Exception as exc:  # telemetry never costs what was logged
        _log.debug("artifact event not recorded: %r", exc)


def log_artifact(run: Run, store: ArtifactStore, path: Any, name: Any | None) -> Artifact:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"log_artifact: path must be a str or os.PathLike, not {type(path).__name__} ({path!r})"
        )
    src = Path(path)
    chosen = artifact_name(src.name if name is None else name)
    try:
        is_dir = src.is_dir()
        if not is_dir and not src.is_file():
            raise FileNotFoundError(
                errno.ENOENT,
                f"log_artifact: no file or directory at {str(path)!r}",
                str(path),
            )
        files = store.capture_dir(src) if is_dir else (store.capture_file(src),)
    except PermissionError as exc:
        raise PermissionError(
            exc.errno, f"log_artifact: cannot read {exc.filename or str(path)!r}", str(path)
        ) from exc
    except FileNotFoundError:
        raise
    except OSError as exc:  # a full disk, an I/O error: say what and where
        raise OSError(
            exc.errno,
            f"log_artifact: cannot capture {str(path)!r} into {str(store.root)!r}: "
            f"{exc.strerror or exc}; nothing was recorded",
        ) from exc
    return _record(run, chosen, "dir" if is_dir else "file", files)


def log_text(run: Run, store: ArtifactStore, text: Any, name: Any) -> Artifact:
    if not isinstance(text, str):
        raise TypeError(f"log_text: text must be a str, not {type(text).__name__}")
    chosen = artifact_name(name, "log_text")
    return _record(run, chosen, "text", (store.capture_bytes(text.encode()),), media_type=None)


def log_dict(run: Run, store: ArtifactStore, data: Any, name: Any) -> Artifact:
    chosen = artifact_name(name, "log_dict")
    if not isinstance(data, Mapping) and not isinstance(data, (list, tuple)):
        raise TypeError(f"log_dict: data must be a dict (or list), not {type(data).__name__}")
    if chosen.endswith(_YAML):
        try:
            import yaml
        except ImportError as exc:
            raise ImportError(
                f"log_dict: {chosen!r} asks for YAML, which needs PyYAML: pip install pyyaml "
                "(or use a .json name)"
            ) from exc
        try:
            text = yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as exc:
            raise TypeError(f"log_dict: {name!r}: cannot write as YAML: {exc}") from exc
        media = "application/yaml"
    else:
        try:
            text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"log_dict: {name!r}: cannot write as JSON: {exc}") from exc
        media = "application/json"
    return _record(run, chosen, "dict", (store.capture_bytes(text.encode()),), media_type=media)


def _plain(data: Any) -> Any:
    """Mappings and tuples as the dicts and lists ``yaml.safe_dump`` writes."""
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def _png_name(name: str) -> str:
    return name if PurePosixPath(name).suffix else name + ".png"


def log_figure(
    run: Run, store: ArtifactStore, figure: Any, name: Any, step: int | None
) -> Artifact:
    chosen = _png_name(artifact_name(name, "log_figure"))
    savefig = getattr(figure, "savefig", None)
    if not callable(savefig):
        raise TypeError(
            f"log_figure: {chosen!r}: figure must be a matplotlib Figure (with savefig), "
            f"not {type(figure).__name__}"
        )
    file = store.capture_written(lambda path: savefig(path, format="png"))
    return _record(run, chosen, "figure", (file,), step, "image/png")


def log_image(run: Run, store: ArtifactStore, image: Any, name: Any, step: int | None) -> Artifact:
    chosen = artifact_name(name, "log_image")
    if isinstance(image, (str, os.PathLike)):
        src = Path(image)
        media = _image_file_type(chosen, src)
        try:
            file = store.capture_file(src)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"log_image: no image file at {str(image)!r}", str(image)
            ) from exc
        if not PurePosixPath(chosen).suffix:
            chosen += src.suffix.lower()
        return _record(run, chosen, "image", (file,), step, media)
    chosen = _png_name(chosen)
    pil = _as_pil(image, chosen)
    # PNG, fast: level 1 costs a third of the default level's time (benchmarks).
    file = store.capture_written(lambda path: pil.save(path, format="PNG", compress_level=1))
    return _record(run, chosen, "image", (file,), step, "image/png")


def _image_file_type(name: str, src: Path) -> str:
    """The media type of an image file, checked by opening it (header only)."""
    if not src.is_file():
        raise FileNotFoundError(errno.ENOENT, f"log_image: no image file at {str(src)!r}", str(src))
    try:
        from PIL import Image
    except ImportError:  # no Pillow: trust the suffix
        media = mimetypes.guess_type(src.name)[0]
        if media is None or not media.startswith("image/"):
            raise ValueError(f"log_image: {name!r}: {str(src)!r} is not an image file") from None
        return media
    try:
        with Image.open(src) as img:
            fmt = img.format or "PNG"
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"log_image: cannot read {str(src)!r}", str(src)) from exc
    except Exception as exc:
        raise ValueError(f"log_image: {name!r}: {str(src)!r} is not an image file ({exc})") from exc
    return Image.MIME.get(fmt.upper(), f"image/{fmt.lower()}")


def _as_pil(image: Any, name: str) -> Any:
    """A PIL image from a PIL image or a numpy array (HxW, HxWx1/3/4; uint8 or float in [0, 1])."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "log_image needs Pillow for arrays and PIL images: pip install pillow"
        ) from exc
    if isinstance(image, Image.Image):
        return image
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"log_image: {name!r}: image must be a numpy array, a PIL image or an image file "
            f"path, not {type(image).__name__}"
        )
    import numpy as np

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise ValueError(
            f"log_image: {name!r}: an image array must be HxW, HxWx1, HxWx3 or HxWx4; "
            f"got shape {tuple(shape)}"
        )
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):  # NaN fails both
            raise ValueError(
                f"log_image: {name!r}: a float image must hold values in [0, 1]; "
                f"got min {low}, max {high} (dtype {array.dtype})"
            )
        array = np.round(array * 255.0).astype(np.uint8)
    else:
        raise TypeError(
            f"log_image: {name!r}: an image array must be uint8, or float in [0, 1]; "
            f"got dtype {array.dtype}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


# -- delivery ----------------------------------------------------------------------------

#: Slowest upload rate an artifact's export is given time for (bytes per second).
SLOWEST_UPLOAD = 1 << 20


def located(artifacts: list[Artifact], run_dir: Path) -> list[Artifact]:
    """The artifacts of a journal batch, told where their captured files lie."""
    return [dataclasses.replace(a, root=str(run_dir)) for a in artifacts]


def upload_timeout_ms(artifacts: list[Artifact], base_ms: float) -> float:
    """How long one export of these artifacts may take: `base_ms`, plus 1 s per MiB.

    The per-export limit of points would cut a large upload short at every
    try, for ever; an upload gets time for its size at a slow link's rate.
    """
    return base_ms + 1000.0 * sum(a.size for a in artifacts) / SLOWEST_UPLOAD


# -- checkpoints -------------------------------------------------------------------------


def checkpoint_name(path: Path, mode: str, best: bool) -> str | None:
    """The artifact name a checkpoint is logged under with `mode`, or None (not logged).

    ``all``: every checkpoint, as ``checkpoints/<its file or folder name>``;
    ``last``: every checkpoint, as ``checkpoints/last<suffix>`` (each replaces
    the one before); ``best``: only a checkpoint its caller calls best, as
    ``checkpoints/best<suffix>``; ``off``: none.
    """
    if mode == "all":
        return f"checkpoints/{path.name}"
    if mode == "last" or (mode == "best" and best):
        return f"checkpoints/{mode}{''.join(path.suffixes) if path.is_file() else ''}"
    return None


# -- freeing what every backend has ------------------------------------------------------


class Reaper:
    """Frees captured files once every tracker backend's saved cursor has passed their frame.

    Called by a delivery after it made an artifact durable
    (`_delivery.Delivery.on_artifact`). It reads the durable cursors as saved
    in the run directory (what ``tracelet sync`` would resume from: a backend
    whose cursor was not saved holds everything back), and removes the
    captured copies of the artifact frames before the lowest one. Each frame
    has copies of its own (`ArtifactStore._keep`), so nothing logged later
    is touched. The journal is read once overall, from where the last call
    stopped.
    """

    def __init__(self, run_dir: Path, states: list[Path]) -> None:
        from tracelet._rundir import JOURNAL_FILE

        self.journal = run_dir / JOURNAL_FILE
        self.root = run_dir / ARTIFACTS_DIR
        self.states = states
        self.freed = 0  # bytes removed
        self._scanned = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            low = self._lowest_cursor()
            if low <= self._scanned:
                return
            try:
                with self.journal.open("rb") as f:
                    f.seek(self._scanned)
                    while self._scanned < low:
                        line = f.readline()
                        if not line.endswith(b"\n"):
                            break
                        self._scanned += len(line)
                        if line.startswith(b'{"a":'):
                            self._free(line)
            except OSError as exc:  # the run directory deleted: nothing to free
                _log.debug("captured files not freed: %r", exc)

    def _lowest_cursor(self) -> int:
        offsets = []
        for path in self.states:
            try:
                offsets.append(int(json.loads(path.read_text())["offset"]))
            except (OSError, ValueError, KeyError, TypeError):
                return 0
        return min(offsets, default=0)

    def _free(self, line: bytes) -> None:
        try:
            artifact = Artifact.from_json(json.loads(line)["a"])
        except (ValueError, KeyError, TypeError):
            return
        for file in artifact.files:
            path = self.root / (file.blob or file.sha256)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # a folder's repeated content, freed once
                continue
            self.freed += size


# -- disk use --------------------------------------------------------------------------


def captured_bytes(run_dir: Path) -> tuple[int, int]:
    """(files, bytes) captured in a run directory."""
    root = run_dir / ARTIFACTS_DIR
    if not root.is_dir():
        return 0, 0
    sizes = [
        e.stat().st_size for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")
    ]
    return len(sizes), sum(sizes)


def release(run_dir: Path, delivered: bool) -> None:
    """Free the captured files once every backend has them; else say where they are kept."""
    files, size = captured_bytes(run_dir)
    if delivered:
        shutil.rmtree(run_dir / ARTIFACTS_DIR, ignore_errors=True)
    if not files:
        return
    if delivered:
        _log.info(
            "run directory %s: %d captured artifact files (%s) delivered to every backend; freed",
            run_dir,
            files,
            human_bytes(size),
        )
    else:
        _log.warning(
            "run directory %s keeps %d captured artifact files (%s) until every backend "
            "has them (tracelet sync %s)",
            run_dir,
            files,
            human_bytes(size),
            run_dir,
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
