"""System metrics: host, process and GPU figures, sampled while a run is active.

One daemon thread per run, ``tracelet-system``, owned by the run
(`tracelet._run.Run` starts it when ``track_system`` is on and stops it as the
run ends, before the history is closed). It reads psutil and NVML once as the
run starts, every ``metrics_interval`` seconds after that, and once more as
the run ends (so even a run of a few seconds has its system series), then:

- **trackers**: puts one point per series into the run's history through the
  door `Experiment.log_metric` uses (`Run.put_sample`: the same lock, state
  check and memory bound), named ``system/<series>`` (MLflow's own
  system-metric names), with step = sample index, so every tracker receives
  them like any logged metric;
- **OTel**: caches the GPU readings, which ``hw.gpu.*`` / ``hw.power`` /
  ``hw.temperature`` observable instruments report when a reader collects.
  Host and process figures reach OTel through
  ``opentelemetry-instrumentation-system-metrics`` (``system.cpu.utilization``,
  ``process.memory.usage`` …) on the run's MeterProvider; its callbacks read
  psutil at collection time.

The thread waits on an `threading.Event`, so stopping the run stops it at once.
Everything the thread needs (psutil, the instrumentation, nvidia-ml-py) is
imported on the thread, never on the training thread; a missing package costs
its series and one log line, nothing else.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from tracelet._gpu import OTEL_INSTRUMENTS, NvmlDevices, NvmlReading, otel_points, tracker_series
from tracelet._otel import Telemetry

__all__ = ["HOST_SERIES", "OTEL_HOST_CONFIG", "PREFIX", "HostSampler", "SystemMetrics"]

_log = logging.getLogger("tracelet")

#: Prefix of the system series on the trackers.
PREFIX = "system/"

_MB = 1e6  # megabytes as MLflow counts them

#: Host and process series on the trackers (without `PREFIX`).
HOST_SERIES = (
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "system_memory_available_megabytes",
    "disk_usage_percentage",
    "disk_available_megabytes",
    "disk_read_megabytes",
    "disk_write_megabytes",
    "network_receive_megabytes",
    "network_transmit_megabytes",
    "process_cpu_utilization_percentage",
    "process_memory_rss_megabytes",
)

#: What the OTel system-metrics instrumentation reports for a run: a subset of
#: its default 32 metrics (semantic-convention names); the
#: ``OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS`` patterns still apply.
OTEL_HOST_CONFIG: dict[str, list[str] | None] = {
    "system.cpu.utilization": ["idle", "user", "system", "irq"],
    "system.memory.usage": ["used", "free", "cached"],
    "system.memory.utilization": ["used", "free", "cached"],
    "system.disk.io": ["read", "write"],
    "system.network.io": ["transmit", "receive"],
    "process.cpu.time": ["user", "system"],
    "process.cpu.utilization": ["user", "system"],
    "process.memory.usage": None,
    "process.memory.virtual": None,
    "process.thread.count": None,
}


class HostSampler:
    """psutil readings for the tracker series.

    Build it on the thread that samples: psutil keeps the baseline of
    ``cpu_percent`` per thread, and this constructor takes the baselines (CPU,
    and the disk and network counters, reported as megabytes since the run
    started).
    """

    def __init__(self, psutil: Any) -> None:
        self._ps = psutil
        self._off: set[str] = set()
        self._proc = psutil.Process()
        self._root = os.path.abspath(os.sep)
        self._read("cpu", psutil.cpu_percent)
        self._read("process", self._proc.cpu_percent)
        self._disk0 = self._read("disk_io", psutil.disk_io_counters)
        self._net0 = self._read("network", psutil.net_io_counters)

    def sample(self) -> dict[str, float]:
        """One reading of every host and process series this machine reports."""
        ps, out = self._ps, {}
        cpu = self._read("cpu", ps.cpu_percent)
        if cpu is not None:
            out["cpu_utilization_percentage"] = float(cpu)
        vm = self._read("memory", ps.virtual_memory)
        if vm is not None:
            out["system_memory_usage_megabytes"] = vm.used / _MB
            out["system_memory_usage_percentage"] = float(vm.percent)
            out["system_memory_available_megabytes"] = vm.available / _MB
        du = self._read("disk_usage", lambda: ps.disk_usage(self._root))
        if du is not None:
            out["disk_usage_percentage"] = float(du.percent)
            out["disk_available_megabytes"] = du.free / _MB
        if self._disk0 is not None:
            io = self._read("disk_io", ps.disk_io_counters)
            if io is not None:
                out["disk_read_megabytes"] = (io.read_bytes - self._disk0.read_bytes) / _MB
                out["disk_write_megabytes"] = (io.write_bytes - self._disk0.write_bytes) / _MB
        if self._net0 is not None:
            net = self._read("network", ps.net_io_counters)
            if net is not None:
                out["network_receive_megabytes"] = (net.bytes_recv - self._net0.bytes_recv) / _MB
                out["network_transmit_megabytes"] = (net.bytes_sent - self._net0.bytes_sent) / _MB
        pcpu = self._read("process", self._proc.cpu_percent)
        if pcpu is not None:
            out["process_cpu_utilization_percentage"] = float(pcpu)
        mem = self._read("process_memory", self._proc.memory_info)
        if mem is not None:
            out["process_memory_rss_megabytes"] = mem.rss / _MB
        return out

    def _read(self, group: str, call: Callable[[], Any]) -> Any:
        """``call()``; a group that fails (or has nothing, e.g. no disks in a
        container) is dropped for the rest of the run after one debug line."""
        if group in self._off:
            return None
        try:
            value = call()
        except Exception as exc:
            value, why = None, repr(exc)
        else:
            why = "nothing reported"
        if value is None:
            self._off.add(group)
            _log.debug("no %s series in this run: %s", group, why)
        return value


# The instrumentation is a process-wide singleton: it feeds one provider at a
# time. The run that instrumented it is its owner and undoes it at its end; an
# instrumentation the application made itself is never touched.
_otel_lock = threading.Lock()
_otel_owner: SystemMetrics | None = None


class SystemMetrics:
    """The sampler of one run: its thread, its tracker series and OTel instruments.

    Args:
        interval: seconds between samples (``metrics_interval``).
        put: the run's door for samples (`tracelet._run.Run.put_sample`): takes
            ``{"system/<series>": value}`` and the sample index; False once the
            run takes no more.
        telemetry: the run's OTel side (its MeterProvider gets the instruments).
    """

    def __init__(
        self,
        *,
        interval: float,
        put: Callable[[Mapping[str, float], int], bool],
        telemetry: Telemetry,
    ) -> None:
        self.interval = interval
        self.samples = 0
        #: CPU seconds the thread used: in all (setup included, set when it ends)
        #: and for the samples alone (see benchmarks/bench_system.py).
        self.cpu_seconds = 0.0
        self.sample_cpu_seconds = 0.0
        self._put = put
        self._telemetry = telemetry
        self._stop = threading.Event()
        self._abandoned = False
        self._gpu: list[NvmlReading] = []
        self._names: dict[str, str] = {}  # series -> "system/series"
        self._t0 = 0.0
        self._thread = threading.Thread(target=self._run, name="tracelet-system", daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling now (no waiting out an interval); idempotent.

        Returns once the thread is gone, so every sample it took (the last one
        taken on the way out) is in the history queue; waits at most `timeout`
        seconds for a sample in progress.
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandoned = True
            _log.warning("the system sampler did not stop within %.1f s", timeout)
            self._release_otel()

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        gpus: NvmlDevices | None = None
        try:
            host = self._host()
            if not self._stop.is_set():
                self._instrument_otel()
            gpus = NvmlDevices.open()
            if gpus is not None:
                self._gpu_instruments()
            if host is None and gpus is None:
                return
            self._timed_sample(host, gpus)  # as the run starts
            tick = 1
            while not self._stop.wait(max(0.0, self._t0 + tick * self.interval - time.monotonic())):
                self._timed_sample(host, gpus)
                # The next due tick; ticks missed while the machine was busy are skipped.
                behind = int((time.monotonic() - self._t0) / self.interval)
                tick = max(tick + 1, behind + 1)
            self._timed_sample(host, gpus)  # as the run ends
        except Exception as exc:  # a bug must cost the run its system series only
            _log.warning("system metrics stopped: %r", exc)
        finally:
            if gpus is not None:
                gpus.close()
            self._release_otel()
            self.cpu_seconds = time.thread_time()

    def _host(self) -> HostSampler | None:
        try:
            import psutil
        except ImportError:
            _log.info(
                "track_system needs psutil, which is not installed: this run has no "
                "host or process series (pip install psutil)"
            )
            return None
        return HostSampler(psutil)

    def _timed_sample(self, host: HostSampler | None, gpus: NvmlDevices | None) -> None:
        cpu = time.thread_time()
        self._sample(host, gpus)
        self.sample_cpu_seconds += time.thread_time() - cpu

    def _sample(self, host: HostSampler | None, gpus: NvmlDevices | None) -> None:
        series = host.sample() if host is not None else {}
        if gpus is not None:
            readings = gpus.read()
            self._gpu = readings  # what the hw.* instruments report at the next collection
            for reading in readings:
                series.update(tracker_series(reading))
        names = self._names
        new = [n for n in series if n not in names]
        if new:
            for n in new:
                names[n] = PREFIX + n
            self._telemetry.reserve(names[n] for n in new)
        if self._abandoned:
            return
        if self._put({names[n]: value for n, value in series.items()}, self.samples):
            self.samples += 1

    # -- OTel -----------------------------------------------------------------------

    def _instrument_otel(self) -> None:
        global _otel_owner
        try:
            from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
        except ImportError:
            _log.info(
                "opentelemetry-instrumentation-system-metrics is not installed: the "
                "run's OTel side has no host or process metrics"
            )
            return
        with _otel_lock:
            current = SystemMetricsInstrumentor._instance
            if current is not None and current.is_instrumented_by_opentelemetry:
                if _otel_owner is None:
                    _log.info(
                        "the application instrumented system metrics itself; the "
                        "run's MeterProvider does not get a second copy"
                    )
                    return
                current.uninstrument()  # a run that never ended: the newest one takes over
            instrumentor = SystemMetricsInstrumentor(config=_otel_config())
            instrumentor.instrument(meter_provider=self._telemetry.provider, skip_dep_check=True)
            _otel_owner = self

    def _release_otel(self) -> None:
        global _otel_owner
        with _otel_lock:
            if _otel_owner is not self:
                return
            _otel_owner = None
            from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

            # Undoes the singleton's registration so the next run can take it; the
            # instruments stay on this run's provider for its final collection.
            # (Not `SystemMetricsInstrumentor()`: that would re-run its __init__.)
            if SystemMetricsInstrumentor._instance is not None:
                SystemMetricsInstrumentor._instance.uninstrument()

    def _gpu_instruments(self) -> None:
        meter = self._telemetry.meter
        for name, (kind, unit, description) in OTEL_INSTRUMENTS.items():
            create = (
                meter.create_observable_gauge
                if kind == "gauge"
                else meter.create_observable_up_down_counter
            )
            create(name, [self._gpu_callback(name)], unit=unit, description=description)

    def _gpu_callback(self, instrument: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for reading in self._gpu:
                point = otel_points(reading).get(instrument)
                if point is not None:
                    yield Observation(point[0], point[1])

        return observe


def _otel_config() -> dict[str, list[str] | None]:
    excluded = [
        p.strip()
        for p in os.environ.get("OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS", "").split(",")
        if p.strip()
    ]
    return {
        key: states
        for key, states in OTEL_HOST_CONFIG.items()
        if not any(fnmatch.fnmatch(key, pattern) for pattern in excluded)
    }
