"""GPU series: the pure NVML → series mapping, the no-GPU path, and the real NVML path
(skipped where there is no NVIDIA GPU)."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest

import tracelet
from tests._helpers import wait_for
from tracelet import TraceletSettings
from tracelet._gpu import OTEL_INSTRUMENTS, NvmlDevices, NvmlReading, otel_points, tracker_series
from tracelet._system import PREFIX, SystemMetrics
from tracelet.testing import InMemoryExporter, capture_telemetry

H100 = NvmlReading(
    index=1,
    uuid="GPU-5f3c0000-1111-2222-3333-444455556666",
    model="NVIDIA H100 80GB HBM3",
    utilization=87,
    memory_used=40_000_000_000,
    memory_total=80_000_000_000,
    temperature=61,
    power=350_000,  # NVML: milliwatts
    power_limit=700_000,
)


def wait_for_samples(exp: tracelet.Experiment, n: int) -> SystemMetrics:
    """Let the sampler take `n` samples (they come every metrics_interval)."""
    sampler = exp._run.sampler
    assert isinstance(sampler, SystemMetrics)
    wait_for(lambda: sampler.samples >= n, 60, f"{n} system samples")
    return sampler


def nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return bool(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


# -- the pure mapping -------------------------------------------------------------


def test_tracker_series_use_mlflow_names_and_units() -> None:
    assert tracker_series(H100) == {
        "gpu_1_utilization_percentage": 87.0,
        "gpu_1_memory_usage_megabytes": 40_000.0,
        "gpu_1_memory_total_megabytes": 80_000.0,
        "gpu_1_memory_usage_percentage": 50.0,
        "gpu_1_temperature_celsius": 61.0,
        "gpu_1_power_usage_watts": 350.0,
        "gpu_1_power_usage_percentage": 50.0,
    }


def test_a_reading_nvml_did_not_give_has_no_series() -> None:
    assert tracker_series(NvmlReading(index=0)) == {}
    assert otel_points(NvmlReading(index=0)) == {}
    partial = NvmlReading(index=0, memory_used=1_000_000, memory_total=0, power=5_000)
    # No percentage from a zero total or a missing limit.
    assert tracker_series(partial) == {
        "gpu_0_memory_usage_megabytes": 1.0,
        "gpu_0_memory_total_megabytes": 0.0,
        "gpu_0_power_usage_watts": 5.0,
    }


def test_otel_points_follow_the_hardware_semantic_conventions() -> None:
    points = otel_points(H100)
    assert set(points) == set(OTEL_INSTRUMENTS)
    attrs = {
        "hw.id": H100.uuid,
        "hw.name": "gpu1",
        "hw.vendor": "NVIDIA",
        "hw.model": "NVIDIA H100 80GB HBM3",
    }
    assert points["hw.gpu.utilization"] == (0.87, attrs)
    assert points["hw.gpu.memory.utilization"] == (0.5, attrs)
    assert points["hw.gpu.memory.usage"] == (40e9, attrs)
    assert points["hw.gpu.memory.limit"] == (80e9, attrs)
    assert points["hw.power"] == (350.0, {**attrs, "hw.type": "gpu"})
    assert points["hw.temperature"] == (61.0, {**attrs, "hw.type": "gpu"})
    # Without a UUID the index identifies the device.
    assert otel_points(NvmlReading(index=3, utilization=1))["hw.gpu.utilization"][1]["hw.id"] == (
        "gpu3"
    )


# -- no GPU -------------------------------------------------------------------------


@pytest.mark.skipif(nvml_present(), reason="this machine has an NVIDIA GPU")
def test_without_a_gpu_there_are_no_gpu_series_and_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tracelet")
    assert NvmlDevices.open() is None  # the real nvidia-ml-py, no driver library here
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert "no GPU series" in caplog.text
    caplog.clear()
    with capture_telemetry() as capture:
        exp = tracelet.start_logging(
            backend="memory",
            settings=TraceletSettings(metrics_interval=0.1, track_git=False, track_env=False),
        )
        sampler = exp._run.sampler
        assert sampler is not None
        sampler.stop()  # after its first samples
        _, series = capture.collect()
        exp.end()
    assert not [p for p in InMemoryExporter.runs[exp.run_id].metrics if "gpu" in p.name]
    assert not [n for n in series if n.startswith("hw.")]
    assert len([r for r in caplog.records if "GPU" in r.getMessage()]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "tracelet"]


# -- the real NVML path (GPU machines) --------------------------------------------------


@pytest.mark.skipif(not nvml_present(), reason="no NVIDIA GPU / NVML on this machine")
def test_real_nvml_readings_reach_trackers_and_otel() -> None:
    devices = NvmlDevices.open()
    assert devices is not None and devices.count >= 1
    try:
        readings = devices.read()
    finally:
        devices.close()
    first = readings[0]
    assert first.index == 0 and first.uuid and first.model
    assert first.memory_total and first.memory_total > 0
    assert first.memory_used is not None and 0 <= first.memory_used <= first.memory_total
    assert "gpu_0_memory_total_megabytes" in tracker_series(first)

    with capture_telemetry() as capture:
        exp = tracelet.start_logging(
            backend="memory",
            settings=TraceletSettings(metrics_interval=0.1, track_git=False, track_env=False),
        )
        wait_for_samples(exp, 2)
        _, series = capture.collect()
        exp.end()
    run = InMemoryExporter.runs[exp.run_id]
    assert run.history(PREFIX + "gpu_0_memory_total_megabytes")
    if first.utilization is not None:  # not reported under MIG
        assert run.history(PREFIX + "gpu_0_utilization_percentage")
    limits = series["hw.gpu.memory.limit"]
    assert len(limits) == devices.count
    assert [value for attrs, value in limits if attrs["hw.name"] == "gpu0"] == [first.memory_total]


# -- the plumbing, with NVML faults injected --------------------------------------------


class _NvmlError(Exception):
    pass


def fake_nvml(devices: int = 2) -> Any:
    """An NVML whose second device refuses power readings (NOT_SUPPORTED), as many do."""

    def power(handle: int) -> int:
        if handle == 1:
            raise _NvmlError("Not Supported")
        return 123_000

    return types.SimpleNamespace(
        NVMLError=_NvmlError,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: devices,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=10 * (h + 1), memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2e9, total=8e9, free=6e9),
        nvmlDeviceGetTemperature=lambda h, sensor: 50 + h,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 250_000,
    )


def test_a_figure_a_device_refuses_is_left_out_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    caplog.set_level(logging.DEBUG, logger="tracelet")
    devices = NvmlDevices.open()
    assert devices is not None and devices.count == 2
    for _ in range(3):
        readings = devices.read()
    devices.close()
    assert readings[0] == NvmlReading(0, "GPU-0", "Fake GPU", 10, 2e9, 8e9, 50, 123_000, 250_000)
    assert readings[1].power is None and readings[1].utilization == 20
    assert len([r for r in caplog.records if "gives no power" in r.getMessage()]) == 1


def test_gpu_series_flow_through_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    with capture_telemetry() as capture:
        exp = tracelet.start_logging(
            backend="memory",
            settings=TraceletSettings(metrics_interval=0.1, track_git=False, track_env=False),
        )
        sampler = wait_for_samples(exp, 1)
        _, series = capture.collect()
        exp.end()
    run = InMemoryExporter.runs[exp.run_id]
    assert sampler.samples >= 1
    assert run.history(PREFIX + "gpu_0_utilization_percentage")[0] == (0, 10.0)
    assert run.history(PREFIX + "gpu_1_utilization_percentage")[0] == (0, 20.0)
    assert run.history(PREFIX + "gpu_0_power_usage_watts")[0] == (0, 123.0)
    assert not run.history(PREFIX + "gpu_1_power_usage_watts")
    assert sorted(v for _, v in series["hw.gpu.utilization"]) == [0.1, 0.2]
    assert [a["hw.name"] for a, _ in series["hw.power"]] == ["gpu0"]
    assert series["hw.gpu.memory.limit"][0][1] == 8e9
