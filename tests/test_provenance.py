"""Git and environment capture (``track_git``, ``track_env``): tags on every tracker,
``vcs.*`` on the OTel Resource, and never a credential."""

from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracelet
from tracelet import TraceletSettings
from tracelet._provenance import capture_git, env_tags, redact_command, scrub_url
from tracelet.testing import InMemoryExporter, capture_telemetry

TOKEN = "ghp_s3cr3tT0kenDoNotLeak0123456789"
PASSWORD = "hunter2-pa55word"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with one commit on branch ``main`` and a token in its remote URL."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('train')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    git(path, "remote", "add", "origin", f"https://ci-bot:{TOKEN}@git.example.com/ml/vision.git")
    monkeypatch.chdir(path)
    return path


# -- credentials ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scrubbed"),
    [
        ("https://user:tok@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_abc123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://oauth2:glpat-xyz@gitlab.com/g/p.git", "https://gitlab.com/g/p.git"),
        ("https://x-access-token:tok@github.com/o/r", "https://github.com/o/r"),
        ("http://u:p@ss@host:8080/r.git", "http://host:8080/r.git"),  # unencoded @
        ("https://host/r.git?private_token=tok#frag", "https://host/r.git"),
        ("https://host?access_token=tok", "https://host"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("ssh://git:pw@host:22/r.git", "ssh://git@host:22/r.git"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("git:pw@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("/home/me@work/repo", "/home/me@work/repo"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
        ("  https://t@h/r  ", "https://h/r"),
    ],
)
def test_scrub_url_removes_credentials(url: str, scrubbed: str) -> None:
    assert scrub_url(url) == scrubbed


def test_redact_command_hides_secret_looking_values() -> None:
    argv = [
        "train.py", "--api-key", "k1", "--token=t1", "--lr", "0.1", "db.password=p1",
        "HF_TOKEN=t2", "--author", "me", "--uri", "https://u:p2@host/x", "--secret-file", "s",
    ]  # fmt: skip
    assert redact_command(argv) == [
        "train.py", "--api-key", "***", "--token=***", "--lr", "0.1", "db.password=***",
        "HF_TOKEN=***", "--author", "me", "--uri", "https://host/x", "--secret-file", "***",
    ]  # fmt: skip


# -- git --------------------------------------------------------------------------------


def test_git_state_reaches_every_tracker_and_the_resource_without_the_token(
    repo: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    commit = git(repo, "rev-parse", "HEAD")
    with capture_telemetry() as capture:
        exp = tracelet.start_logging(
            exp_name="git",
            project="provenance",
            backend=["mlflow", "memory"],
            config={"mlflow": {"tracking_uri": mlflow_uri}},
            settings=TraceletSettings(track_system=False, keep_journal=True),
        )
        exp.log_metric("loss", 0.5)
        resource, _ = capture.collect()
        exp.end()

    expected = {
        "git.commit": commit,
        "git.branch": "main",
        "git.dirty": "false",
        "git.remote_url": "https://git.example.com/ml/vision.git",
    }
    memory_tags = InMemoryExporter.runs[exp.run_id].tags
    assert {k: v for k, v in memory_tags.items() if k.startswith("git.")} == expected
    assert {k: v for k, v in resource.items() if k.startswith(("vcs.", "tracelet.git"))} == {
        "vcs.ref.head.revision": commit,
        "vcs.ref.head.name": "main",
        "vcs.ref.head.type": "branch",
        "vcs.repository.url.full": "https://git.example.com/ml/vision.git",
        "vcs.repository.name": "vision",
        "tracelet.git.dirty": False,
    }
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("provenance")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert {k: v for k, v in run.data.tags.items() if k.startswith("git.")} == expected

    # The token is nowhere in what was exported or written by the run.
    assert TOKEN not in repr(run.data.tags) + repr(run.data.params) + repr(memory_tags)
    assert TOKEN not in repr(resource)
    written = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and (repo / ".git") not in p.parents  # git's own config holds it
    ]
    assert any(p.name == "mlflow.db" for p in written)
    assert any(p.name.startswith("journal") for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN in (repo / ".git" / "config").read_text()  # the check above could see it


def test_dirty_detached_and_no_remote(repo: Path) -> None:
    info = capture_git()
    assert info is not None and info.dirty is False
    (repo / "notes.txt").write_text("untracked files do not make it dirty")
    assert capture_git().dirty is False  # type: ignore[union-attr]
    (repo / "train.py").write_text("print('changed')\n")
    assert capture_git().dirty is True  # type: ignore[union-attr]
    git(repo, "checkout", "-q", "--detach")
    git(repo, "remote", "remove", "origin")
    info = capture_git()
    assert info is not None and info.branch is None and info.remote_url is None
    exp = tracelet.start_logging(
        backend="memory", settings=TraceletSettings(track_system=False, track_env=False)
    )
    exp.end()
    tags = InMemoryExporter.runs[exp.run_id].tags
    assert set(tags) == {"git.commit", "git.dirty"} and tags["git.dirty"] == "true"


def test_outside_a_repository_there_is_nothing(tmp_path: Path) -> None:
    assert capture_git(tmp_path) is None
    with capture_telemetry() as capture:
        exp = tracelet.start_logging(
            backend="memory", settings=TraceletSettings(track_system=False, track_env=False)
        )
        resource, _ = capture.collect()
        exp.end()
    assert not InMemoryExporter.runs[exp.run_id].tags
    assert not [k for k in resource if k.startswith(("vcs.", "tracelet.git"))]


def test_without_git_installed_there_is_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-such-dir"))
    assert capture_git() is None


def test_track_git_off(repo: Path) -> None:
    exp = tracelet.start_logging(
        backend="memory",
        settings=TraceletSettings(track_system=False, track_git=False, track_env=False),
    )
    exp.end()
    assert not InMemoryExporter.runs[exp.run_id].tags


# -- environment ---------------------------------------------------------------------------


def test_environment_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "sys.orig_argv", ["python", "train.py", f"--password={PASSWORD}", "--epochs", "3"]
    )
    exp = tracelet.start_logging(
        backend="memory", settings=TraceletSettings(track_system=False, track_git=False)
    )
    exp.end()
    tags = InMemoryExporter.runs[exp.run_id].tags
    assert tags["env.python_version"] == platform.python_version()
    assert tags["env.python_implementation"] == platform.python_implementation()
    assert tags["env.platform"] == platform.platform()
    assert tags["env.hostname"] == socket.gethostname()
    assert tags["env.command"] == "python train.py '--password=***' --epochs 3"
    assert tags["env.package.tracelet"] == tracelet.__version__
    assert tags["env.package.numpy"] == metadata.version("numpy")
    assert tags["env.package.mlflow"] == metadata.version("mlflow")
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        assert "env.package.torch" not in tags
    assert PASSWORD not in repr(tags)
    assert set(env_tags()) <= set(tags)


def test_track_env_off() -> None:
    exp = tracelet.start_logging(
        backend="memory",
        settings=TraceletSettings(track_system=False, track_git=False, track_env=False),
    )
    exp.end()
    assert not [k for k in InMemoryExporter.runs[exp.run_id].tags if k.startswith("env.")]
