"""The telemetry channel: the run's OTel Resource, MeterProvider and instruments.

Low cardinality by construction: one observable gauge per logged metric name
reporting its latest value when a reader collects, plus run-level progress
instruments. No step or other unbounded value ever becomes an attribute; the
run is identified by the Resource.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource

from tracelet._version import __version__

#: Factories of extra metric readers attached to every new run (see `tracelet.testing`).
EXTRA_READERS: list[Callable[[], MetricReader]] = []

_INVALID = re.compile(r"[^A-Za-z0-9_./-]")


def instrument_name(name: str) -> str:
    """Map a tracker-style metric name to a valid OTel instrument name.

    OTel allows ``[A-Za-z][A-Za-z0-9_./-]{0,254}``: ``train/loss`` stays as it
    is; any other character becomes ``_``; a name that does not start with a
    letter gets the prefix ``m_``; the result is cut to 255 characters.
    """
    mapped = _INVALID.sub("_", name)
    if not mapped[:1].isalpha() or not mapped[:1].isascii():
        mapped = "m_" + mapped
    return mapped[:255]


def resource_attributes(run_id: str, project: str, name: str) -> dict[str, Any]:
    """The attributes that identify a run, merged over ``OTEL_RESOURCE_ATTRIBUTES``."""
    attrs: dict[str, Any] = {
        "service.instance.id": run_id,
        "tracelet.run_id": run_id,
        "tracelet.project": project,
        "tracelet.experiment": name,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    env_attrs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in env_attrs:
        attrs["service.name"] = "tracelet"
    return attrs


class Telemetry:
    """The run's MeterProvider and the instruments fed from the history channel."""

    def __init__(
        self,
        attributes: Mapping[str, Any],
        latest: Mapping[str, float],
        progress: Callable[[], tuple[int, int]],
        readers: Iterable[MetricReader] = (),
    ) -> None:
        self.resource = Resource.create(dict(attributes))
        self.readers = [*readers, *(factory() for factory in EXTRA_READERS)]
        # Owned by the run, never set as the global provider; tracelet closes it
        # itself (after the history has drained), so no atexit hook of its own.
        self.provider = MeterProvider(
            resource=self.resource, metric_readers=self.readers, shutdown_on_exit=False
        )
        self.meter = self.provider.get_meter("tracelet", __version__)
        self._latest = latest
        self._names: set[str] = set()

        def step(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(progress()[0])

        def points(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(progress()[1])

        self.meter.create_observable_gauge(
            "tracelet.step", [step], unit="1", description="Highest step logged in the run."
        )
        self.meter.create_observable_counter(
            "tracelet.points", [points], unit="1", description="Metric points logged in the run."
        )

    def observe(self, names: Iterable[str]) -> None:
        """Create a latest-value gauge for each metric name not seen before."""
        for name in names:
            otel_name = instrument_name(name)
            if otel_name in self._names:
                continue
            self._names.add(otel_name)
            self.meter.create_observable_gauge(
                otel_name, [self._callback(name)], description=f"Latest value of {name!r}."
            )

    def reserve(self, names: Iterable[str]) -> None:
        """History names that get no latest-value gauge: series that other
        instruments already carry (the ``system/`` series, see `tracelet._system`)."""
        self._names.update(instrument_name(name) for name in names)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        latest = self._latest

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            value = latest.get(name)
            # The SDK drops NaN/inf with a warning on every collection; the exact
            # value is in the history channel, the gauge simply skips it.
            if value is not None and math.isfinite(value):
                yield Observation(value)

        return observe

    def shutdown(self, timeout_millis: float) -> None:
        if self.readers:
            self.provider.force_flush(timeout_millis=timeout_millis)
        self.provider.shutdown(timeout_millis=timeout_millis)
