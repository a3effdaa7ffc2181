"""The shipped collector configurations hang together (no collector binary needed).

Checks what `otelcol validate` would reject first: every component a pipeline
names is defined, of a type the contrib distribution has, and the order of
processors follows the collector's guidance (memory_limiter first, batch last).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COLLECTOR = Path(__file__).resolve().parents[1] / "otel-collector"

#: Component types used, each present in otelcol-contrib.
KNOWN = {
    "receivers": {"otlp", "prometheus"},
    "processors": {"memory_limiter", "batch", "resourcedetection", "resource"},
    "exporters": {"otlp", "otlphttp", "prometheusremotewrite", "debug"},
    "extensions": {"health_check", "file_storage"},
}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((COLLECTOR / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["agent.yaml", "gateway.yaml"])
def test_pipelines_reference_defined_components(name: str) -> None:
    config = load(name)
    for kind, known in KNOWN.items():
        for component in config.get(kind, {}):
            assert component.split("/")[0] in known, (kind, component)
    service = config["service"]
    for ext in service.get("extensions", []):
        assert ext in config["extensions"], ext
    assert set(service["pipelines"]) == {"metrics", "traces"}
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], (kind, component)
        assert pipeline["processors"][0] == "memory_limiter"
        assert pipeline["processors"][-1] == "batch"
        assert pipeline["receivers"][0] == "otlp"
    text = (COLLECTOR / name).read_text()
    for ref in re.findall(r"\$\{[^}]*\}", text):
        assert re.fullmatch(r"\$\{env:[A-Z_][A-Z0-9_]*(:-[^}]*)?\}", ref), ref


def test_agent_receives_otlp_and_forwards_to_the_gateway() -> None:
    agent = load("agent.yaml")
    protocols = agent["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    # tracelet's host.name stays as it is
    assert agent["processors"]["resourcedetection"]["override"] is False
    assert "system" in agent["processors"]["resourcedetection"]["detectors"]
    for pipeline in agent["service"]["pipelines"].values():
        assert pipeline["exporters"] == ["otlp/gateway"]
        assert "resourcedetection" in pipeline["processors"]
    scrape = agent["receivers"]["prometheus/node"]["config"]["scrape_configs"]
    assert {job["job_name"] for job in scrape} == {"node", "dcgm"}


def test_gateway_fans_out_with_run_labels() -> None:
    gateway = load("gateway.yaml")
    metrics = gateway["service"]["pipelines"]["metrics"]["exporters"]
    assert {"prometheusremotewrite", "debug"} <= set(metrics)
    assert any(e.startswith("otlp") for e in metrics)
    rw = gateway["exporters"]["prometheusremotewrite"]
    assert rw["resource_to_telemetry_conversion"]["enabled"] is True
    traces = gateway["service"]["pipelines"]["traces"]["exporters"]
    assert "debug" in traces and any(e.startswith("otlp") for e in traces)


def test_readme_explains_every_file() -> None:
    readme = (COLLECTOR / "README.md").read_text()
    for path in COLLECTOR.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert path.name in readme, path
