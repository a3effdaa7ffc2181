"""Where a run came from: its code (git) and its environment, read when it starts.

- ``track_git``: commit, branch, dirty flag and remote URL of the repository
  holding the working directory, as run tags (``git.*``) and as OTel resource
  attributes (``vcs.*``, OTel's VCS semantic conventions). Credentials in the
  remote URL never leave this module (`scrub_url`). Nothing when the working
  directory is not in a repository, or git is not installed.
- ``track_env``: Python, platform, host, the command line (secret-looking
  values redacted, `redact_command`) and the versions of the key packages, as
  run tags (``env.*``).

Tags rather than params: they describe the run, they are not hyperparameters
(MLflow params cannot change and crowd the comparison view); MLflow's own
``mlflow.source.*`` and W&B's run metadata make the same choice.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from tracelet import _secrets

__all__ = [
    "PACKAGES",
    "GitInfo",
    "Provenance",
    "capture",
    "capture_git",
    "env_tags",
    "git_resource",
    "git_tags",
    "redact_command",
    "scrub_url",
]

_log = logging.getLogger("tracelet")

#: Packages whose installed version ``track_env`` records (read from their
#: metadata, never imported).
PACKAGES = ("tracelet", "numpy", "torch", "mlflow", "wandb", "clearml")

#: The longest command line recorded; trackers cap tag values (MLflow: 8000).
MAX_COMMAND = 1000

#: Seconds git may take, all calls together, before tracelet gives up on it.
GIT_TIMEOUT = 2.0

_REDACTED = "***"


# -- credentials ------------------------------------------------------------------
# The rules (which names are secret, how a URL loses its credentials) live in
# `tracelet._secrets`, shared with params, tags, options and logs.

scrub_url = _secrets.strip_url_credentials


def redact_command(argv: Sequence[str]) -> list[str]:
    """A command line with what looks secret replaced by ``***``.

    The value of an option or ``key=value`` argument whose name has a word like
    token, secret, password, key or auth (``--api-key X``, ``--token=X``,
    ``db.password=X``, ``HF_TOKEN=X``), and the user part of any URL.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(_REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if (arg.startswith("-") or eq) and name and _secrets.secret_name(name, any_key=True):
            if eq:
                out.append(f"{name}={_REDACTED}")
            else:
                out.append(arg)
                hide_next = True  # `--token VALUE`
            continue
        out.append(_secrets.strip_userinfo(arg))
    return out


# -- git ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GitInfo:
    """The state of the repository a run started in.

    Attributes:
        commit: the full hash of HEAD.
        branch: the branch checked out, ``None`` on a detached HEAD.
        dirty: tracked files differ from HEAD (untracked files do not count);
            ``None`` when git could not tell in time.
        remote_url: the ``origin`` remote (else the first one), credentials
            removed; ``None`` without a remote.
    """

    commit: str
    branch: str | None = None
    dirty: bool | None = None
    remote_url: str | None = None


def capture_git(
    cwd: str | os.PathLike[str] | None = None, timeout: float = GIT_TIMEOUT
) -> GitInfo | None:
    """Read the repository holding `cwd` (default: the working directory).

    Runs three git commands at once (a few ms together), each without taking
    the index lock (``GIT_OPTIONAL_LOCKS=0``) or prompting. ``None`` when
    `cwd` is not in a repository, the repository has no commit, git is
    missing, or git does not answer within `timeout` seconds.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    commands = {
        "head": ["rev-parse", "HEAD", "--abbrev-ref", "HEAD"],
        "status": ["status", "--porcelain", "--untracked-files=no"],
        "remotes": ["config", "--get-regexp", r"^remote\..*\.url$"],
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for key, args in commands.items():
            procs[key] = subprocess.Popen(
                ["git", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
    except OSError as exc:  # no git on PATH, cwd gone
        _log.debug("no git information: %r", exc)
        for proc in procs.values():
            proc.kill()
            proc.wait()
        return None
    deadline = time.monotonic() + timeout
    out: dict[str, str | None] = {}
    for key, proc in procs.items():
        try:
            stdout, _ = proc.communicate(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            _log.debug("git %s took over %.1f s; left out", commands[key][0], timeout)
            out[key] = None
        else:
            out[key] = stdout if proc.returncode == 0 else None
    head = (out["head"] or "").split()
    if len(head) != 2:
        _log.debug("no git information: not in a repository with a commit")
        return None
    commit, branch = head
    status = out["status"]
    return GitInfo(
        commit=commit,
        branch=None if branch == "HEAD" else branch,
        dirty=None if status is None else bool(status.strip()),
        remote_url=_pick_remote(out["remotes"] or ""),
    )


def _pick_remote(config: str) -> str | None:
    urls: dict[str, str] = {}
    for line in config.splitlines():
        key, _, url = line.partition(" ")
        name = key[len("remote.") : -len(".url")]
        if name and url:
            urls.setdefault(name, url)
    chosen = urls.get("origin") or next(iter(urls.values()), None)
    return None if chosen is None else scrub_url(chosen)


def git_tags(info: GitInfo) -> dict[str, str]:
    """The run tags of a repository state: ``git.commit``, ``git.branch``,
    ``git.dirty`` (``"true"``/``"false"``), ``git.remote_url``."""
    tags = {"git.commit": info.commit}
    if info.branch is not None:
        tags["git.branch"] = info.branch
    if info.dirty is not None:
        tags["git.dirty"] = "true" if info.dirty else "false"
    if info.remote_url is not None:
        tags["git.remote_url"] = info.remote_url
    return tags


def git_resource(info: GitInfo) -> dict[str, Any]:
    """OTel resource attributes (VCS semantic conventions, plus ``tracelet.git.dirty``)."""
    attrs: dict[str, Any] = {"vcs.ref.head.revision": info.commit}
    if info.branch is not None:
        attrs["vcs.ref.head.name"] = info.branch
        attrs["vcs.ref.head.type"] = "branch"
    if info.remote_url is not None:
        attrs["vcs.repository.url.full"] = info.remote_url
        name = re.split(r"[/:]", info.remote_url.rstrip("/"))[-1].removesuffix(".git")
        if name:
            attrs["vcs.repository.name"] = name
    if info.dirty is not None:
        attrs["tracelet.git.dirty"] = info.dirty
    return attrs


# -- environment ----------------------------------------------------------------------


def env_tags() -> dict[str, str]:
    """Run tags describing the environment (``env.*``)."""
    command = shlex.join(redact_command(getattr(sys, "orig_argv", sys.argv)))
    if len(command) > MAX_COMMAND:
        command = command[: MAX_COMMAND - 1] + "…"
    tags = {
        "env.python_version": platform.python_version(),
        "env.python_implementation": platform.python_implementation(),
        "env.platform": platform.platform(),
        "env.hostname": socket.gethostname(),
        "env.command": command,
    }
    for package in PACKAGES:
        try:
            tags[f"env.package.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags


@dataclass(frozen=True)
class Provenance:
    """What `capture` found: run tags, and attributes for the run's OTel Resource."""

    tags: dict[str, str] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


def capture(*, git: bool, env: bool) -> Provenance:
    """Read what ``track_git`` / ``track_env`` ask for; never raises."""
    tags: dict[str, str] = {}
    resource: dict[str, Any] = {}
    if git:
        try:
            info = capture_git()
        except Exception as exc:  # provenance must never cost the run
            _log.debug("no git information: %r", exc)
            info = None
        if info is not None:
            tags.update(git_tags(info))
            resource.update(git_resource(info))
    if env:
        try:
            tags.update(env_tags())
        except Exception as exc:
            _log.debug("no environment information: %r", exc)
    return Provenance(tags, resource)
