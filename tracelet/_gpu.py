"""NVIDIA GPU figures through NVML (``nvidia-ml-py``), for the system sampler.

Two layers, kept apart so the mapping can be tested without a GPU:

- `NvmlReading` holds what NVML reports for one device, in NVML's own units
  (percent, bytes, degrees Celsius, milliwatts); `tracker_series` and
  `otel_points` are pure functions that turn one reading into the tracker
  series (``gpu_0_utilization_percentage`` …) and the OTel observations
  (``hw.gpu.utilization`` …, OTel's hardware semantic conventions).
- `NvmlDevices` opens NVML and reads every device; `NvmlDevices.open` returns
  ``None`` (and says why in one debug line) when the package, the driver
  library or a GPU is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OTEL_INSTRUMENTS", "NvmlDevices", "NvmlReading", "otel_points", "tracker_series"]

_log = logging.getLogger("tracelet")

_MB = 1e6  # MLflow's system metrics count megabytes as 10**6 bytes


@dataclass(frozen=True)
class NvmlReading:
    """One device's readings, in NVML's units; ``None`` where NVML has no answer.

    Attributes:
        index: NVML device index (0, 1, …), as in ``nvidia-smi``.
        uuid: the device UUID (``GPU-…``), stable across reboots.
        model: the product name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        utilization: percent of the last sample period a kernel ran
            (``nvmlDeviceGetUtilizationRates().gpu``).
        memory_used: bytes of device memory in use (``nvmlDeviceGetMemoryInfo().used``).
        memory_total: bytes of device memory (``.total``).
        temperature: core temperature, degrees Celsius.
        power: power draw in milliwatts (``nvmlDeviceGetPowerUsage``).
        power_limit: the enforced power limit in milliwatts.
    """

    index: int
    uuid: str | None = None
    model: str | None = None
    utilization: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    temperature: float | None = None
    power: float | None = None
    power_limit: float | None = None


def tracker_series(reading: NvmlReading) -> dict[str, float]:
    """The tracker series of one device (without the ``system/`` prefix).

    Names follow MLflow's own system metrics (``gpu_{i}_utilization_percentage``,
    ``gpu_{i}_memory_usage_megabytes``, ``gpu_{i}_power_usage_watts`` …);
    a reading NVML did not give produces no series.
    """
    r = reading
    p = f"gpu_{r.index}_"
    out: dict[str, float] = {}
    if r.utilization is not None:
        out[p + "utilization_percentage"] = float(r.utilization)
    if r.memory_used is not None:
        out[p + "memory_usage_megabytes"] = r.memory_used / _MB
    if r.memory_total is not None:
        out[p + "memory_total_megabytes"] = r.memory_total / _MB
    if r.memory_used is not None and r.memory_total:
        out[p + "memory_usage_percentage"] = 100.0 * r.memory_used / r.memory_total
    if r.temperature is not None:
        out[p + "temperature_celsius"] = float(r.temperature)
    if r.power is not None:
        out[p + "power_usage_watts"] = r.power / 1000.0
        if r.power_limit:
            out[p + "power_usage_percentage"] = 100.0 * r.power / r.power_limit
    return out


#: The OTel instruments of the GPU series: name → (kind, unit, description).
#: Names and units from OTel's hardware semantic conventions (``hw.*``).
OTEL_INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "hw.gpu.utilization": ("gauge", "1", "Fraction of time a kernel ran on the GPU."),
    "hw.gpu.memory.utilization": ("gauge", "1", "Fraction of GPU memory used."),
    "hw.gpu.memory.usage": ("updowncounter", "By", "GPU memory used."),
    "hw.gpu.memory.limit": ("updowncounter", "By", "Size of the GPU memory."),
    "hw.temperature": ("gauge", "Cel", "GPU temperature in degrees Celsius."),
    "hw.power": ("gauge", "W", "Instantaneous power drawn by the GPU."),
}


def otel_points(reading: NvmlReading) -> dict[str, tuple[float, dict[str, str]]]:
    """The OTel observations of one device: instrument → (value, attributes).

    Attributes identify the device with bounded cardinality: ``hw.id`` (the
    UUID, else ``gpu<index>``), ``hw.name`` (``gpu<index>``, matching the
    tracker series), ``hw.vendor``, ``hw.model``; ``hw.power`` and
    ``hw.temperature`` also carry ``hw.type="gpu"``, as the conventions ask.
    """
    r = reading
    attrs = {"hw.id": r.uuid or f"gpu{r.index}", "hw.name": f"gpu{r.index}", "hw.vendor": "NVIDIA"}
    if r.model:
        attrs["hw.model"] = r.model
    typed = {**attrs, "hw.type": "gpu"}
    out: dict[str, tuple[float, dict[str, str]]] = {}
    if r.utilization is not None:
        out["hw.gpu.utilization"] = (r.utilization / 100.0, attrs)
    if r.memory_used is not None and r.memory_total:
        out["hw.gpu.memory.utilization"] = (r.memory_used / r.memory_total, attrs)
    if r.memory_used is not None:
        out["hw.gpu.memory.usage"] = (float(r.memory_used), attrs)
    if r.memory_total is not None:
        out["hw.gpu.memory.limit"] = (float(r.memory_total), attrs)
    if r.temperature is not None:
        out["hw.temperature"] = (float(r.temperature), typed)
    if r.power is not None:
        out["hw.power"] = (r.power / 1000.0, typed)
    return out


class NvmlDevices:
    """NVML, initialised, and the handles of every device. Close it when done."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._failed: set[tuple[int, str]] = set()
        self._static: list[tuple[str | None, str | None]] = [
            (
                self._try(i, "uuid", nvml.nvmlDeviceGetUUID, h),
                self._try(i, "name", nvml.nvmlDeviceGetName, h),
            )
            for i, h in enumerate(handles)
        ]

    @classmethod
    def open(cls) -> NvmlDevices | None:
        """Initialise NVML; ``None`` (after one debug line) when there is no GPU to read."""
        try:
            import pynvml
        except ImportError:
            _log.debug("no GPU series: nvidia-ml-py is not installed")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _log.debug("no GPU series: NVML is not available (%s)", exc)
            return None
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            _log.debug("no GPU series: NVML cannot list the devices (%s)", exc)
            pynvml.nvmlShutdown()
            return None
        if not handles:
            _log.debug("no GPU series: NVML sees no device")
            pynvml.nvmlShutdown()
            return None
        _log.debug("sampling %d GPU(s) through NVML", len(handles))
        return cls(pynvml, handles)

    @property
    def count(self) -> int:
        return len(self._handles)

    def read(self) -> list[NvmlReading]:
        """One reading per device; a figure the device does not report is ``None``."""
        nvml, readings = self._nvml, []
        for i, h in enumerate(self._handles):
            uuid, model = self._static[i]
            util = self._try(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, h)
            temperature = self._try(i, "temperature", self._temperature, h)
            mem = self._try(i, "memory", nvml.nvmlDeviceGetMemoryInfo, h)
            readings.append(
                NvmlReading(
                    index=i,
                    uuid=uuid,
                    model=model,
                    utilization=None if util is None else util.gpu,
                    memory_used=None if mem is None else mem.used,
                    memory_total=None if mem is None else mem.total,
                    temperature=temperature,
                    power=self._try(i, "power", nvml.nvmlDeviceGetPowerUsage, h),
                    power_limit=self._try(
                        i, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, h
                    ),
                )
            )
        return readings

    def _temperature(self, handle: Any) -> Any:
        nvml = self._nvml
        # nvmlDeviceGetTemperature is deprecated (to go with CUDA 14); older
        # drivers lack the versioned call that replaces it.
        if hasattr(nvml, "nvmlDeviceGetTemperatureV"):
            try:
                return nvml.nvmlDeviceGetTemperatureV(handle, nvml.NVML_TEMPERATURE_GPU)
            except nvml.NVMLError:
                pass
        return nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:  # already shut down, driver gone: nothing left to release
            _log.debug("NVML shutdown: %r", exc)

    def _try(self, index: int, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, or ``None`` when NVML refuses (e.g. NOT_SUPPORTED on this GPU)."""
        try:
            value = call(*args)
        except Exception as exc:
            if (index, what) not in self._failed:
                self._failed.add((index, what))
                _log.debug("GPU %d gives no %s: %s", index, what, exc)
            return None
        return value.decode() if isinstance(value, bytes) else value
