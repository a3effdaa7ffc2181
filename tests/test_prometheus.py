"""The prometheus backend: its scrape endpoint, and a real Prometheus server scraping a run."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import tracelet
from tests._helpers import QUIET, wait_for
from tests._prometheus_server import PrometheusServer
from tests._servers import free_port
from tracelet import ConfigError
from tracelet.exporters.prometheus import DEFAULT_PORT, listen_address
from tracelet.testing import InMemoryExporter

ROOT = Path(__file__).resolve().parents[1]
COLLECTOR = ROOT / "otel-collector"


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_") or key in ("LOCAL_RANK", "RANK"):
            monkeypatch.delenv(key)


def journaled(exp: tracelet.Experiment, points: int) -> None:
    """Wait until the journal thread has written `points` (it also creates the gauges)."""
    history = exp._history
    with history.written:
        assert history.written.wait_for(lambda: history.points >= points, timeout=30)


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_scrape_is_parsed_by_prometheus_client() -> None:
    exp = tracelet.start_logging(
        "scraped", "p1", backend=["memory", "prometheus"], config={"port": 0}, settings=QUIET
    )
    exp.log_params({"lr": 0.1, "net": {"depth": 18}})
    for step in range(100):
        exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
        exp.log_metric("val acc", step / 100, iteration=step)
    journaled(exp, 200)
    url = exp.telemetry.backends["prometheus"].url  # type: ignore[attr-defined]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    families = scrape(url)

    loss = families["train_loss"]
    assert loss.type == "gauge"
    [sample] = loss.samples
    assert sample.value == pytest.approx(1 / 100)
    assert sample.labels["tracelet_run_id"] == exp.run_id
    assert sample.labels["tracelet_project"] == "p1"
    assert sample.labels["tracelet_experiment"] == "scraped"
    assert sample.labels["host_name"] == socket.gethostname()
    assert "step" not in sample.labels
    assert families["val_acc"].samples[0].value == pytest.approx(0.99)
    assert families["tracelet_step"].samples[0].value == 99
    points = families["tracelet_points"]
    assert points.type == "counter"
    assert [(s.name, s.value) for s in points.samples if s.name.endswith("_total")] == [
        ("tracelet_points_total", 200)
    ]
    info = families["tracelet_run_info"].samples[0]
    assert info.value == 1
    assert info.labels["tracelet_param_lr"] == "0.1"
    assert info.labels["tracelet_param_net_depth"] == "18"
    target = families["target_info"].samples[0]  # the whole Resource
    assert target.labels["service_instance_id"] == exp.run_id
    assert target.labels["process_pid"] == str(os.getpid())
    delivered = families["tracelet_export_delivered"].samples
    assert {s.labels["tracelet_backend"] for s in delivered} == {"memory"}

    report = exp.end()
    assert report.complete
    with pytest.raises(urllib.error.URLError):  # the endpoint stops with the run
        urllib.request.urlopen(url, timeout=5)
    assert exp.telemetry.backends["prometheus"].url is None  # type: ignore[attr-defined]


def test_consecutive_runs_reuse_the_port_and_never_mix() -> None:
    port = free_port()
    config = {"prometheus": {"port": port}}
    first = tracelet.start_logging(backend=["memory", "prometheus"], config=config, settings=QUIET)
    first.log_metric("first_only", 1.0)
    second = tracelet.start_logging(backend=["memory", "prometheus"], config=config, settings=QUIET)
    second.log_metric("loss", 2.0)
    journaled(second, 1)
    families = scrape(f"http://127.0.0.1:{port}/metrics")
    assert "first_only" not in families
    assert families["loss"].samples[0].labels["tracelet_run_id"] == second.run_id
    second.end()


def test_busy_port_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="tracelet"):
            exp = tracelet.start_logging(
                backend=["memory", "prometheus"], config={"port": port}, settings=QUIET
            )
        exp.log_metric("loss", 0.5)
        report = exp.end()
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
    assert report.complete
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [(0, 0.5)]


def test_listen_address_rules() -> None:
    assert listen_address(None, None, {}) == ("127.0.0.1", DEFAULT_PORT) == ("127.0.0.1", 9464)
    assert listen_address(None, None, {"LOCAL_RANK": "3"}) == ("127.0.0.1", 9467)
    env = {"OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0", "OTEL_EXPORTER_PROMETHEUS_PORT": "9000"}
    assert listen_address(None, None, {**env, "LOCAL_RANK": "3"}) == ("0.0.0.0", 9000)
    assert listen_address("::1", 0, env) == ("::1", 0)
    with pytest.raises(ValueError, match="'nine'"):
        listen_address(None, None, {"OTEL_EXPORTER_PROMETHEUS_PORT": "nine"})


def test_bad_port_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="port"):
        tracelet.start_logging(backend="prometheus", config={"port": 70000}, settings=QUIET)
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "x")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_PROMETHEUS_PORT"):
        tracelet.start_logging(backend="prometheus", settings=QUIET)


# -- the shipped configurations ------------------------------------------------------


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool missing: scripts/install-system-deps.sh installs Debian's prometheus")
    return binary


def test_shipped_prometheus_config_passes_promtool() -> None:
    out = subprocess.run(
        [promtool(), "check", "config", str(COLLECTOR / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


TRAINER = r"""
import sys
import tracelet
from tracelet import TraceletSettings

exp = tracelet.start_logging(
    "scraped", "e2e", backend="prometheus", config={"port": int(sys.argv[1])},
    settings=TraceletSettings(track_system=False, track_git=False, track_env=False),
)
exp.log_params({"lr": 0.01})
with exp.span("epoch", epoch=0):
    for step in range(1000):
        exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
print("READY", exp.run_id, flush=True)
sys.stdin.readline()  # the test says when the run may end
tracelet.stop_logging()
print("DONE", flush=True)
"""


def dashboard_queries(run_id: str, host: str) -> list[tuple[str, str]]:
    """Every PromQL expression of the shipped Grafana dashboard, variables filled in."""
    dash = json.loads((COLLECTOR / "grafana" / "tracelet-run.json").read_text())
    values = {
        "$run_id": run_id,
        "$host": re.escape(host),
        "$project": "e2e",
        "$metric": "train_loss",
        "$__rate_interval": "1m",
    }

    def fill(expr: str) -> str:
        for key, value in values.items():
            expr = expr.replace(key, value)
        return expr

    out = [(p["title"], fill(t["expr"])) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label) -> the selector
            m = re.fullmatch(r"label_values\((.*), *(\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((f"${var['name']}", fill(m.group(1))))
    return out


def test_dashboard_filters_by_run_and_host() -> None:
    dash = json.loads((COLLECTOR / "grafana" / "tracelet-run.json").read_text())
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "run_id", "host", "metric"} <= names
    for title, expr in dashboard_queries("RUN", "HOST"):
        if not title.startswith("$"):  # every panel shows the run or the hosts it ran on
            assert 'tracelet_run_id="RUN"' in expr or 'host_name=~"HOST"' in expr, (title, expr)
    exprs = " ".join(e for _, e in dashboard_queries("RUN", "HOST"))
    for series in ("node_cpu_seconds_total", "DCGM_FI_DEV_GPU_UTIL", "tracelet_step"):
        assert series in exprs


@pytest.mark.slow
def test_real_prometheus_scrapes_a_training_process(tmp_path: Path) -> None:
    if PrometheusServer.binary() is None:
        pytest.skip("prometheus missing: scripts/install-system-deps.sh installs it")
    port = free_port()
    config = yaml.safe_load((COLLECTOR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tracelet")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    job["scrape_interval"] = "1s"
    config["scrape_configs"] = [job]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run([promtool(), "check", "config", str(config_path)], capture_output=True)
    assert check.returncode == 0, check

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_"))}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(port)],
        cwd=tmp_path,
        env={**env, "TRACELET_DIR": str(tmp_path / "runs")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    prometheus = PrometheusServer(tmp_path, config_path)
    try:
        assert trainer.stdout is not None and trainer.stdin is not None
        line = trainer.stdout.readline().split()
        assert line[:1] == ["READY"], line
        run_id = line[1]
        prometheus.start()

        def loss() -> list[Any] | None:
            answer = prometheus.query(f'train_loss{{tracelet_run_id="{run_id}"}}')
            return answer["data"]["result"] or None

        [series] = wait_for(loss, 60, "a scrape of the training process", interval=0.25)
        assert float(series["value"][1]) == pytest.approx(1 / 1000)
        assert series["metric"]["job"] == "tracelet"
        assert series["metric"]["host_name"] == socket.gethostname()
        assert series["metric"]["tracelet_project"] == "e2e"

        def result(expr: str) -> list[Any]:
            answer = prometheus.query(expr)
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]  # type: ignore[no-any-return]

        assert float(result(f'tracelet_step{{tracelet_run_id="{run_id}"}}')[0]["value"][1]) == 999
        assert result(f'target_info{{tracelet_run_id="{run_id}"}}')
        [info] = result(f'tracelet_run_info{{tracelet_run_id="{run_id}"}}')
        assert info["metric"]["tracelet_param_lr"] == "0.01"

        # Every dashboard expression is valid PromQL; the run's own panels show the run.
        host = socket.gethostname()
        answers = {title: result(expr) for title, expr in dashboard_queries(run_id, host)}
        for title in ("Step", "Training metrics", "Params", "$run_id", "$host", "$metric"):
            assert answers[title], title
        assert {s["metric"]["__name__"] for s in answers["$metric"]} == {"train_loss"}
        assert {s["metric"]["host_name"] for s in answers["$host"]} == {host}
    finally:
        prometheus.stop()
        if trainer.stdin is not None and not trainer.stdin.closed:
            trainer.stdin.write("stop\n")
            trainer.stdin.close()
        try:
            trainer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()
    assert trainer.returncode == 0
