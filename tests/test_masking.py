"""Secrets by name and by value: params, tags, span attributes, config errors, W&B metadata.

Each test plants a secret where a careless script or a typo puts it and reads
back what the real backends stored (MLflow's store, W&B's ``.wandb`` file,
ClearML's offline session, a real OTLP receiver).
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._helpers import QUIET
from tests._otlp_receiver import OTLPReceiver
from tests._trackers import read_back, wandb_written
from tracelet import ConfigError, _secrets

DB_PASSWORD = "dbpass-7c1e5a9f3b"
API_TOKEN = "apitok-5e2d8c4b1a90"
PLAIN_SECRET = "plainsecret-0a9b8c7d"
SSH_KEY = "sshkey-c0ffee123456"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True), ("db_password", True), ("api_token", True), ("secret", True),
        ("client_secret", True), ("ssh_key", True), ("apiKey", True), ("HF_TOKEN", True),
        ("model/db/password", True), ("AWS_ACCESS_KEY_ID", True),
        ("keep_prob", False), ("key_frames", False), ("max_tokens", False), ("key", False),
        ("monkey", False), ("author", False), ("tokenizer", False), ("lr", False),
    ],
)  # fmt: skip
def test_which_names_are_secret(name: str, secret: bool) -> None:
    assert _secrets.secret_name(name) is secret


def test_params_and_tags_under_secret_keys_are_masked_in_every_backend(
    offline_trackers: Path,
    mlflow_uri: str,
    receiver: OTLPReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp = tracelet.start_logging(
        "masked",
        backend=["mlflow", "wandb", "clearml", "otlp"],
        config={
            "mlflow": {"tracking_uri": mlflow_uri},
            "otlp": {"endpoint": receiver.grpc_endpoint},
        },
        settings=QUIET.model_copy(update={"unmasked_keys": ["sort_key"]}),
    )
    exp.log_params({
        "db": {"password": DB_PASSWORD}, "api_token": API_TOKEN, "secret": PLAIN_SECRET,
        "keep_prob": 0.9, "key_frames": 12, "max_tokens": 512, "token_budget": 4096,
        "sort_key": "by_loss",  # allowed by unmasked_keys
    })  # fmt: skip
    exp.set_tags({"ssh_key": SSH_KEY, "stage": "pretrain"})
    exp.log_params({"note": f"uses {API_TOKEN} from the vault"})  # the value is known now
    exp.log_metric("loss", 1.0, iteration=0)
    report = exp.end()
    assert report.complete, report
    wandb_written()
    for backend in ("mlflow", "wandb", "clearml"):
        stored = read_back(exp.run_dir, backend)
        text = repr(stored.params) + repr(stored.tags)
        for secret in (DB_PASSWORD, API_TOKEN, PLAIN_SECRET, SSH_KEY):
            assert secret not in text, f"{secret} in {backend}"
        assert stored.params["db/password"] == "***", backend
        assert stored.params["api_token"] == stored.params["secret"] == "***", backend
        assert stored.params["note"] == "uses *** from the vault", backend
        assert stored.params["keep_prob"] == "0.9" and stored.params["key_frames"] == "12"
        assert stored.params["token_budget"] == "4096" and stored.params["sort_key"] == "by_loss"
        assert "ssh_key:***" in stored.tags and "stage:pretrain" in stored.tags, backend
    otlp = repr(receiver.spans()) + repr(receiver.metrics())
    for secret in (DB_PASSWORD, API_TOKEN, PLAIN_SECRET, SSH_KEY):
        assert secret not in otlp
    warnings = [r.getMessage() for r in caplog.records if "looks like a secret" in r.getMessage()]
    assert sorted(w.split("'")[1] for w in warnings) == sorted(
        ["db/password", "api_token", "secret", "ssh_key"]
    )  # one warning per key, naming it
    assert "unmasked_keys" in warnings[0]


def test_span_attributes_are_masked_like_params(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_token = "envtoken-3141592653"
    option_token = "optiontoken-2718281828"
    monkeypatch.setenv("MY_SERVICE_TOKEN", env_token)
    exp = tracelet.start_logging(
        "spans",
        backend=["memory", "otlp"],
        config={"otlp": {"endpoint": receiver.grpc_endpoint, "headers": {"x-auth": option_token}}},
        settings=QUIET,
    )
    with exp.span("epoch", source=f"token={env_token}", api_token="typed-in-clear-123"):
        pass

    @exp.span("evaluate", header=f"Bearer {option_token}", keep_prob=0.5)
    def evaluate() -> None:
        pass

    evaluate()
    exp.end()
    spans = {s["name"]: s["attributes"] for s in receiver.spans()}
    assert spans["epoch"]["source"] == "token=***"
    assert spans["epoch"]["api_token"] == "***"
    assert spans["evaluate"]["header"] == "Bearer ***"
    assert spans["evaluate"]["keep_prob"] == 0.5
    text = repr(receiver.spans())
    for secret in (env_token, option_token, "typed-in-clear-123"):
        assert secret not in text


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"wandb": {"api_key": "wandbsecret-0123456789"}}, "wandb.api_key"),
        ({"otlp": {"headers": "authorization=Bearer otlpsecret-0123456"}}, "otlp.headers"),
        ({"mlflow": {"tracking_token": 918273645546372}}, "mlflow.tracking_token"),
        ({"clearml": {"api_secret_key": "clearmlsecret-0123456"}}, "clearml.api_secret_key"),
    ],
)
def test_config_errors_name_the_option_never_the_value(config: dict[str, Any], option: str) -> None:
    [(backend, options)] = config.items()
    [value] = options.values()
    with pytest.raises(ConfigError) as caught:
        tracelet.start_logging("bad", backend=backend, config=config, settings=QUIET)
    shown = "".join(traceback.format_exception(caught.value))  # the chain too
    assert option in str(caught.value)
    assert str(value) not in shown
    for part in str(value).split():
        assert part not in shown or len(part) < 12


def test_a_plain_config_error_still_quotes_the_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"mlflow\.http_timeout: .*\(got 'soon'\)"):
        tracelet.start_logging(
            "bad", backend="mlflow", config={"http_timeout": "soon"}, settings=QUIET
        )


def test_secrets_on_the_command_line_stay_out_of_the_wandb_file(
    offline_trackers: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cli_key, cli_token = "wandbcli-apikey-0123456789", "clitoken-abcdef987654"
    monkeypatch.delenv("WANDB__DISABLE_META")  # W&B as users run it: metadata captured
    monkeypatch.setattr(sys, "argv", ["train.py", "--api-key", cli_key, f"--token={cli_token}"])
    exp = tracelet.start_logging("argv", backend="wandb", settings=QUIET)
    exp.log_metric("loss", 1.0, iteration=0)
    assert exp.end().complete
    wandb_written()
    files = [p for p in (offline_trackers / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        assert cli_key.encode() not in data and cli_token.encode() not in data, path
    assert "W&B's run metadata" in caplog.text


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def test_a_param_whose_repr_raises_is_an_error_naming_it() -> None:
    exp = tracelet.start_logging("repr", backend="memory", settings=QUIET)
    with pytest.raises(TypeError, match=r"param 'model/head'.*Unprintable.*repr is broken"):
        exp.log_params({"lr": 0.1, "model": {"head": Unprintable()}})
    with pytest.raises(TypeError, match=r"tag 'owner'.*Unprintable"):
        exp.set_tags({"owner": Unprintable()})
    assert exp.params == {}  # nothing of the failed call was recorded
    assert exp.end().complete


def test_masking_logs_at_warning_once_per_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracelet")
    exp = tracelet.start_logging("once", backend="memory", settings=QUIET)
    exp.log_params({"vault_password": "first-value-123"})
    exp.set_tags({"vault_password": "second-value-456"})
    exp.end()
    assert caplog.text.count("'vault_password' looks like a secret") == 1
