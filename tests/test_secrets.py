"""Known secrets are planted everywhere a run reads from; nothing it writes may contain them."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

import tracelet
from tests._reliability import mlflow_run
from tests._servers import free_port
from tracelet import TraceletSettings, _secrets
from tracelet.testing import capture_telemetry

ENV_SECRETS = {
    "WANDB_API_KEY": "wandbkey0123456789abcdef0123456789abcdef01",
    "MLFLOW_TRACKING_TOKEN": "mlflowtok-5f1c2b7e9a4d",
    "CLEARML_API_SECRET_KEY": "clearmlsecret-77aa88bb99cc",
    "CLEARML_API_ACCESS_KEY": "clearmlaccess-1122334455",
    "HF_TOKEN": "hf_tokensecret1234567890",
}
OTEL_BEARER = "otelbearer-a1b2c3d4e5f6"
OTEL_KEY = "otelkey-f6g7h8i9j0"
CONFIG_TOKEN = "configtoken-0f0e0d0c0b0a"
GIT_TOKEN = "ghp_gitremotetoken1234567890"
URI_PASSWORD = "uripassword-9876543210"
ALL = [*ENV_SECRETS.values(), OTEL_BEARER, OTEL_KEY, CONFIG_TOKEN, GIT_TOKEN, URI_PASSWORD]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer {OTEL_BEARER},x-api-key={OTEL_KEY}"
    )
    git("init", "-q", cwd=tmp_path)
    git(
        "remote",
        "add",
        "origin",
        f"https://x-access-token:{GIT_TOKEN}@github.com/org/repo.git",
        cwd=tmp_path,
    )
    (tmp_path / "train.py").write_text("print('train')\n")
    git("add", "train.py", cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "c", cwd=tmp_path)
    return tmp_path


def everything_written(root: Path) -> str:
    """The text of every file under `root` (run dirs, journals, state files, stores)."""
    parts = []
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


@pytest.mark.slow
def test_no_secret_reaches_params_tags_journal_state_files_or_logs(
    planted: Path,
    mlflow_server: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    host = mlflow_server.split("://", 1)[1]
    uri = f"http://user:{URI_PASSWORD}@{host}"
    settings = TraceletSettings(
        track_system=False,
        track_git=True,
        track_env=True,
        keep_journal=True,
        config={"mlflow": {"tracking_token": CONFIG_TOKEN}},
    )
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging(
            "secrets",
            "secrets",
            backend=["mlflow", "memory"],
            config={"mlflow": {"tracking_uri": uri}},
            settings=settings,
        )
    # What a careless script does with them.
    exp.log_params(
        {
            "api_key": ENV_SECRETS["WANDB_API_KEY"],
            "cmd": f"train.py --token {CONFIG_TOKEN} --lr 0.1",
            "nested": {"hf": ENV_SECRETS["HF_TOKEN"]},
            "lr": 0.1,
        }
    )
    exp.set_tags({"auth": f"Bearer {OTEL_BEARER}", "remote": f"https://{GIT_TOKEN}@github.com/x"})
    for i in range(100):
        exp.log_metric("loss", 1 / (i + 1), iteration=i)
    otel_attributes = repr(telemetry.collect())  # the OTel resource and series attributes
    report = exp.end()
    assert report.complete

    # A backend that fails, so its errors (which quote the URL) are logged and reported.
    dead = f"http://user:{URI_PASSWORD}@127.0.0.1:{free_port()}"
    failing = tracelet.start_logging(
        "secrets-down",
        "secrets",
        backend="mlflow",
        config={"tracking_uri": dead},
        settings=settings.model_copy(update={"close_timeout": 1.0}),
    )
    failing.log_metric("loss", 1.0)
    failing_report = failing.end()
    assert not failing_report.complete
    assert "***" in (failing_report.backends[0].error or "")

    from mlflow import MlflowClient

    run = mlflow_run(mlflow_server, exp.run_id)
    client = MlflowClient(mlflow_server)
    stored = "\n".join(
        [
            repr(run.data.params),
            repr(run.data.tags),
            repr(run.data.metrics),
            repr(client.get_run(run.info.run_id).info),
        ]
    )
    out = capsys.readouterr()
    haystacks = {
        "files under the working directory": everything_written(planted),
        "MLflow store (read back)": stored,
        "log records": caplog.text,
        "reports": repr(report) + repr(failing_report),
        "OTel attributes": otel_attributes,
        "stderr": out.err,
        "stdout": out.out,
    }
    for where, text in haystacks.items():
        for secret in ALL:
            assert secret not in text, f"{secret[:12]}… found in {where}"
    assert run.data.params["api_key"] == "***"
    assert run.data.params["cmd"] == "train.py --token *** --lr 0.1"
    assert run.data.params["lr"] == "0.1"
    assert run.data.tags["auth"] == "***"  # the whole header value is the secret
    assert "github.com/org/repo.git" in run.data.tags["git.remote_url"]  # recorded, cleaned
    assert "user:***@" in caplog.text  # the failing URL was logged, masked


def test_redaction_helpers() -> None:
    assert _secrets.redact_url("https://u:p4ssw0rd@h/x") == "https://u:***@h/x"
    assert _secrets.redact_url("https://tok3n123456@github.com/o/r") == "https://***@github.com/o/r"
    assert _secrets.redact_url("http://h/x?api_key=abc&b=1") == "http://h/x?api_key=***&b=1"
    assert _secrets.redact_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert _secrets.redact("see abcdef123456 here", ["abcdef123456"]) == "see *** here"


def test_public_options_drop_secret_fields_at_any_depth() -> None:
    class Options(BaseModel):
        tracking_uri: str = "http://u:pw123456@h"
        api_key: str | None = "plain-api-key-123"
        token: SecretStr = SecretStr("secretstr-123456")
        settings: dict[str, object] = {"api_key": "nested-key-123456", "mode": "offline"}

    public = _secrets.public_options(Options())
    assert public == {"tracking_uri": "http://u:***@h", "settings": {"mode": "offline"}}
    # and each is now masked wherever it would show up
    text = _secrets.redact("plain-api-key-123 secretstr-123456 nested-key-123456")
    assert text == "*** *** ***"
