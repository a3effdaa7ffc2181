"""Artifacts through the in-memory double: captured at the call, checked, journaled, freed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tracelet
from tests._helpers import QUIET, wait_for
from tracelet import TraceletSettings
from tracelet._journal import encode, read_batches
from tracelet.errors import ExperimentClosedError
from tracelet.export import Artifact, ArtifactFile
from tracelet.testing import InMemoryExporter


def memory_run(**settings: Any) -> tracelet.Experiment:
    return tracelet.start_logging(
        backend="memory", settings=QUIET.model_copy(update=settings) if settings else QUIET
    )


def delivered(exp: tracelet.Experiment) -> dict[str, tuple[Artifact, dict[str, bytes]]]:
    return {a.name: (a, content) for a, content in InMemoryExporter.runs[exp.run_id].artifacts}


def test_content_is_what_the_file_held_at_the_call(tmp_path: Path) -> None:
    exp = memory_run()
    rewritten, deleted = tmp_path / "model.pt", tmp_path / "table.csv"
    rewritten.write_bytes(b"epoch 1 weights" * 1000)
    deleted.write_bytes(b"a,b\n1,2\n")
    logged = exp.log_artifact(rewritten, "ckpt/model.pt")
    exp.log_artifact(deleted)
    with rewritten.open("r+b") as f:  # rewritten in place: a hard link would follow this
        f.write(b"EPOCH 2")
    deleted.unlink()
    exp.log_metric("loss", 0.5, iteration=1)
    assert (
        logged is not None
        and logged.files[0].sha256 == hashlib.sha256(b"epoch 1 weights" * 1000).hexdigest()
    )
    report = exp.end()
    assert report.complete
    got = delivered(exp)
    assert got["ckpt/model.pt"][1] == {"": b"epoch 1 weights" * 1000}
    assert got["table.csv"][1] == {"": b"a,b\n1,2\n"}
    assert got["table.csv"][0].media_type == "text/csv"
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [(1, 0.5)]
    assert not (exp.run_dir / "artifacts").exists()  # freed once every backend has them


def test_a_directory_and_content_stored_once(tmp_path: Path) -> None:
    exp = memory_run()
    folder = tmp_path / "ckpt"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "one.bin").write_bytes(b"same")
    (folder / "a" / "b" / "two.bin").write_bytes(b"same")
    (folder / "a" / "other").write_bytes(b"other")
    logged = exp.log_artifact(folder, "checkpoints/epoch-1")
    assert logged is not None and logged.kind == "dir"
    assert [f.path for f in logged.files] == ["one.bin", "a/other", "a/b/two.bin"]
    assert exp.artifact_bytes == len(b"same") + len(b"other")  # one copy per content
    exp.end()
    assert delivered(exp)["checkpoints/epoch-1"][1] == {
        "one.bin": b"same",
        "a/b/two.bin": b"same",
        "a/other": b"other",
    }


def test_text_dict_yaml_figure_and_images() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import yaml
    from matplotlib import pyplot as plt
    from PIL import Image

    exp = memory_run()
    exp.log_text("héllo\n", "notes.txt")
    exp.log_dict({"a": {"b": [1, 2]}, "x": float("nan")}, "cfg/params.json")
    exp.log_dict({"a": {"b": [1, 2]}, "t": (1, 2)}, "cfg/params.yml")
    fig = plt.figure(figsize=(1, 1))
    exp.log_figure(fig, "fig", iteration=4)
    plt.close(fig)
    rgba = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    exp.log_image(rgba, "img/rgba", iteration=np.int64(2))
    exp.log_image(np.ones((3, 2, 1)), "img/white.png")
    exp.log_image(Image.new("L", (4, 4), 7), "img/pil")
    exp.end()
    got = delivered(exp)
    assert got["notes.txt"][1][""] == "héllo\n".encode()
    assert json.loads(got["cfg/params.json"][1][""]) == {
        "a": {"b": [1, 2]},
        "x": pytest.approx(float("nan"), nan_ok=True),
    }
    assert yaml.safe_load(got["cfg/params.yml"][1][""]) == {"a": {"b": [1, 2]}, "t": [1, 2]}
    assert got["cfg/params.yml"][0].media_type == "application/yaml"
    figure, content = got["fig.png"]
    assert (figure.kind, figure.step, figure.media_type) == ("figure", 4, "image/png")
    assert Image.open(io.BytesIO(content[""])).size == (100, 100)
    image, content = got["img/rgba.png"]
    assert image.step == 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(content[""]))), rgba)
    white = np.asarray(Image.open(io.BytesIO(got["img/white.png"][1][""])))
    assert white.shape == (3, 2) and (white == 255).all()
    assert np.asarray(Image.open(io.BytesIO(got["img/pil.png"][1][""]))).max() == 7


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda e, p: e.log_artifact(p / "missing.bin"), FileNotFoundError, "missing.bin"),
        (lambda e, p: e.log_artifact(p / "ok.bin", "../out.bin"), ValueError, "escapes"),
        (lambda e, p: e.log_artifact(p / "ok.bin", "a/../../b"), ValueError, "a/../../b"),
        (lambda e, p: e.log_artifact(p / "ok.bin", "/etc/x"), ValueError, "absolute"),
        (lambda e, p: e.log_artifact(p / "ok.bin", ""), ValueError, "non-empty"),
        (lambda e, p: e.log_artifact(123), TypeError, "123"),
        (lambda e, p: e.log_text(b"bytes", "t.txt"), TypeError, "bytes"),
        (lambda e, p: e.log_dict({"f": object()}, "d.json"), TypeError, "d.json"),
        (lambda e, p: e.log_figure("not a figure", "f"), TypeError, "str"),
        (lambda e, p: e.log_image(np.zeros((2, 3, 5), np.uint8), "im"), ValueError, "(2, 3, 5)"),
        (lambda e, p: e.log_image(np.zeros(7, np.uint8), "im"), ValueError, "(7,)"),
        (lambda e, p: e.log_image(np.zeros((2, 2), np.int64), "im"), TypeError, "int64"),
        (lambda e, p: e.log_image(np.full((2, 2), 2.0), "im"), ValueError, "max 2.0"),
        (lambda e, p: e.log_image(np.full((2, 2), np.nan), "im"), ValueError, "nan"),
        (lambda e, p: e.log_image([[0, 1]], "im"), TypeError, "list"),
        (lambda e, p: e.log_image(p / "ok.bin", "im"), ValueError, "not an image"),
        (lambda e, p: e.log_image(p / "none.png", "im"), FileNotFoundError, "none.png"),
        (
            lambda e, p: e.log_image(np.zeros((2, 2), np.uint8), "im", iteration=-1),
            ValueError,
            "im",
        ),
    ],
)
def test_bad_input_is_refused_at_the_call_and_nothing_logged_is_lost(
    tmp_path: Path, call: Any, error: type[Exception], words: str
) -> None:
    exp = memory_run()
    (tmp_path / "ok.bin").write_bytes(b"ok")
    exp.log_artifact(tmp_path / "ok.bin", "before.bin")
    exp.log_metric("loss", 1.0, iteration=0)
    with pytest.raises(error) as info:
        call(exp, tmp_path)
    assert words in str(info.value), info.value
    exp.log_metric("loss", 2.0, iteration=1)
    assert exp.end().complete
    assert list(delivered(exp)) == ["before.bin"]
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [(0, 1.0), (1, 2.0)]
    assert not list((exp.run_dir).glob("artifacts/.capture-*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    exp = memory_run()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    secret.chmod(0)
    with pytest.raises(PermissionError, match=r"secret\.bin"):
        exp.log_artifact(secret)


def test_yaml_without_pyyaml_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = memory_run()
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match="pip install pyyaml"):
        exp.log_dict({"a": 1}, "cfg.yaml")
    exp.log_dict({"a": 1}, "cfg.json")  # JSON needs nothing


def test_an_ended_experiment_refuses_artifacts(tmp_path: Path) -> None:
    exp = memory_run()
    exp.end()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExperimentClosedError):
        exp.log_artifact(tmp_path / "f")
    with pytest.raises(ExperimentClosedError):
        exp.log_text("x", "x.txt")


@pytest.mark.parametrize(
    ("mode", "names"),
    [
        ("off", []),
        ("all", ["checkpoints/epoch=0.ckpt", "checkpoints/epoch=1.ckpt"]),
        ("last", ["checkpoints/last.ckpt", "checkpoints/last.ckpt"]),
        ("best", ["checkpoints/best.ckpt"]),
    ],
)
def test_log_checkpoint_follows_the_setting(tmp_path: Path, mode: str, names: list[str]) -> None:
    exp = memory_run(log_checkpoints=mode)
    for epoch in range(2):
        path = tmp_path / f"epoch={epoch}.ckpt"
        path.write_bytes(b"w%d" % epoch)
        exp.log_checkpoint(path, best=epoch == 0)
    exp.end()
    got = [a.name for a, _ in InMemoryExporter.runs[exp.run_id].artifacts]
    assert got == names


def test_log_checkpoints_is_off_by_default_and_checked() -> None:
    assert TraceletSettings().log_checkpoints == "off"
    with pytest.raises(ValueError, match="log_checkpoints"):
        TraceletSettings(log_checkpoints="sometimes")  # type: ignore[arg-type]


def test_an_artifact_frame_is_a_batch_of_its_own(tmp_path: Path) -> None:
    artifact = Artifact("a.bin", "file", (ArtifactFile("", "0" * 64, 3),), timestamp_ns=1)
    records = [
        ("loss", 1.0, 0, 1),
        ("a", artifact.to_json()),
        ("loss", 2.0, 1, 2),
        ("a", artifact.to_json()),
        ("a", artifact.to_json()),
        ("p", {"lr": 0.1}),
    ]
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(encode(records))
    with journal.open("rb") as f:
        batches = [b for b, _, _ in read_batches(f, 0, None, 1000)]
    kinds = [(len(b.metrics), len(b.artifacts), len(b.params)) for b in batches]
    assert kinds == [(1, 0, 0), (0, 1, 0), (1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 1)]
    assert batches[1].artifacts[0] == artifact


def test_otlp_gets_an_event_with_name_size_and_hash_never_the_content(
    tmp_path: Path, receiver: Any
) -> None:
    config = {"otlp": {"endpoint": receiver.grpc_endpoint}}
    exp = tracelet.start_logging(backend=["memory", "otlp"], config=config, settings=QUIET)
    exp.log_text("the content", "notes.txt")
    exp.end()
    run = next(s for s in receiver.spans() if s["name"] == "tracelet.run")
    [event] = [
        a
        for n, a in zip(run["events"], run["event_attributes"], strict=True)
        if n == "tracelet.artifact"
    ]
    assert event["tracelet.artifact.name"] == "notes.txt"
    assert event["tracelet.artifact.size"] == len("the content")
    assert event["tracelet.artifact.sha256"] == hashlib.sha256(b"the content").hexdigest()
    assert "the content" not in json.dumps(receiver.spans())


def test_a_directory_with_a_pipe_and_a_link_cycle_is_captured_without_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exp = memory_run()
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "real.txt").write_text("r")
    (folder / "alias.txt").symlink_to(folder / "real.txt")  # a link to a file: followed
    (folder / "loop").symlink_to(folder)  # a link cycle: not followed
    os.mkfifo(folder / "pipe")  # reading it would block: left out
    exp.log_artifact(folder)
    assert "left out 2 entries" in caplog.text
    exp.end()
    assert delivered(exp)["d"][1] == {"alias.txt": b"r", "real.txt": b"r"}


@pytest.mark.parametrize("name", ["C:/x.bin", "c:\\x.bin", "/x.bin", "\\\\server\\x"])
def test_absolute_names_of_any_system_are_refused(tmp_path: Path, name: str) -> None:
    exp = memory_run()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="absolute"):
        exp.log_artifact(tmp_path / "f", name)
    assert exp.log_artifact(tmp_path / "f", "time:12.txt") is not None  # a colon inside is fine


def blobs(exp: tracelet.Experiment) -> set[str]:
    root = exp.run_dir / "artifacts"
    return (
        {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.exists() else set()
    )


def test_captured_files_are_freed_once_delivered_while_the_run_goes_on(tmp_path: Path) -> None:
    exp = memory_run()
    (tmp_path / "w.bin").write_bytes(b"weights")
    first = exp.log_artifact(tmp_path / "w.bin", "a.bin")
    assert first is not None
    wait_for(lambda: first.files[0].blob not in blobs(exp), 60, "the delivered copy freed")
    again = exp.log_artifact(tmp_path / "w.bin", "b.bin")  # the same content, after the free
    twice = exp.log_artifact(tmp_path / "w.bin", "c.bin")  # and once more, before it
    assert again is not None and twice is not None
    assert len({again.files[0].blob, twice.files[0].blob}) == 2  # a copy each
    assert exp.end().complete
    got = delivered(exp)
    assert [got[n][1][""] for n in ("a.bin", "b.bin", "c.bin")] == [b"weights"] * 3


def test_captured_files_stay_while_one_backend_has_not_got_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import EntryPoint, entry_points

    from tests._faulty import StallingExporter
    from tracelet import _registry

    stalled = EntryPoint("stalled", "tests._faulty:StallingExporter", _registry.GROUP)
    monkeypatch.setattr(_registry, "entry_points", lambda **kw: [*entry_points(**kw), stalled])
    StallingExporter.release.clear()
    StallingExporter.entered.clear()
    try:
        exp = tracelet.start_logging(
            backend=["memory", "stalled"], settings=QUIET.model_copy(update={"close_timeout": 1})
        )
        (tmp_path / "w.bin").write_bytes(b"weights")
        exp.log_artifact(tmp_path / "w.bin")
        wait_for(lambda: delivered(exp), 60, "the memory backend has it")
        wait_for(StallingExporter.entered.is_set, 60, "the stalled backend trying")
        memory = next(d for d in exp._deliveries if d.backend == "memory")
        wait_for(lambda: memory.offset >= exp._history.committed, 60, "memory durable")
        assert blobs(exp)  # the stalled backend has not got it: kept
        report = exp.end()
        assert not report.complete
        assert blobs(exp)  # kept for tracelet sync
    finally:
        StallingExporter.release.set()


def test_a_full_disk_at_capture_is_a_clear_error_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from tracelet._artifacts import ArtifactStore

    exp = memory_run()
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)

    def full(self: ArtifactStore, source: Any, fd: int) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ArtifactStore, "_clone_or_copy", full)
    with pytest.raises(OSError, match=r"big\.bin.*No space left on device; nothing was recorded"):
        exp.log_artifact(tmp_path / "big.bin")
    assert not list(exp.run_dir.glob("artifacts/.capture-*"))  # no partial copy left
    monkeypatch.undo()
    exp.log_metric("loss", 1.0, iteration=0)
    exp.log_artifact(tmp_path / "big.bin")
    assert exp.end().complete
    assert list(delivered(exp)) == ["big.bin"]


def test_a_copy_on_write_clone_is_hashed_as_captured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracelet import _artifacts

    def clone(src: int, dst: int) -> bool:  # what FICLONE leaves: dst holds src's bytes
        size = os.fstat(src).st_size
        os.sendfile(dst, src, 0, size)
        return True

    monkeypatch.setattr(_artifacts, "_clone", clone)
    exp = memory_run()
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "w.bin").write_bytes(data)
    logged = exp.log_artifact(tmp_path / "w.bin")
    (tmp_path / "w.bin").write_bytes(b"later")
    assert logged is not None
    assert logged.files[0] == (
        "",
        hashlib.sha256(data).hexdigest(),
        len(data),
        logged.files[0].blob,
    )
    exp.end()
    assert delivered(exp)["w.bin"][1][""] == data
