"""Traces of a run: the run span, and the phase spans `Experiment.span` opens under it.

The run owns its ``TracerProvider`` (never set as the global one, so a user's
own provider is left alone). The run span starts with the run — as a child of
whatever span is current when `start_logging` is called, else as a root — and
ends with it, with status ERROR when the run failed. ``exp.span("epoch")``
opens a child of the innermost open span of the same trace on this thread,
else of the run span, so phases nest naturally and spans opened on other
threads (data loaders, evaluators) still hang under the run.

When a phase span ends, its duration is recorded in the ``tracelet.span.duration``
histogram while the span is still current, so the point carries a
trace-linked exemplar (the SDK's default ``trace_based`` exemplar filter).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, Status, StatusCode, format_span_id, format_trace_id

from tracelet import _secrets
from tracelet._version import __version__

_log = logging.getLogger("tracelet")

F = TypeVar("F", bound=Callable[..., Any])

#: Name of the span that covers a whole run.
RUN_SPAN = "tracelet.run"

#: Buckets of ``tracelet.span.duration`` (seconds): phases last from a
#: fraction of a second (a checkpoint) to hours (an epoch).
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)

_PRIMITIVES = (str, bool, int, float)


def span_attribute(value: Any) -> Any:
    """An OTel attribute value: primitives and lists of one primitive type kept, else `str`."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and next(iter(kinds)) in _PRIMITIVES:
            return list(value)
    try:  # numpy scalars, 0-d tensors
        item = value.item()
    except Exception:
        return str(value)
    return item if isinstance(item, _PRIMITIVES) else str(value)


def masked_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes as OTel holds them, masked as params and tags are.

    A known secret inside a string is replaced by ``***``, and so is a string
    under a secret-looking key (`tracelet._secrets.mask_secret_keys`).
    """
    secrets = _secrets.known_secrets()
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        value = span_attribute(value)
        if isinstance(value, str):
            value = _secrets.redact(value, secrets)
        elif isinstance(value, list) and value and isinstance(value[0], str):
            value = [_secrets.redact(v, secrets) for v in value]
        out[key] = value
    return _secrets.mask_secret_keys(out, "span attribute")


class RunTracing:
    """The run's TracerProvider, its run span, and the factory of phase spans."""

    def __init__(
        self,
        resource: Resource,
        processors: Sequence[SpanProcessor],
        meter: Meter,
        attributes: Mapping[str, Any],
    ) -> None:
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("tracelet", __version__)
        self.run_span = self.tracer.start_span(RUN_SPAN, attributes=dict(attributes))
        ctx = self.run_span.get_span_context()
        self._trace_id = ctx.trace_id
        #: The run's trace id, 32 hex digits (also tagged on every tracker run).
        self.trace_id = format_trace_id(ctx.trace_id)
        #: The run span's id, 16 hex digits.
        self.span_id = format_span_id(ctx.span_id)
        self.closed = False
        self.duration = meter.create_histogram(
            "tracelet.span.duration",
            unit="s",
            description="Duration of the phases recorded with Experiment.span, by span name.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def span(self, name: str, attributes: Mapping[str, Any]) -> SpanScope:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a span needs a non-empty name (e.g. 'epoch'), not {name!r}")
        return SpanScope(self, name, masked_attributes(attributes))

    def _open(self, name: str, attributes: Mapping[str, Any]) -> tuple[Span, object, int]:
        current = trace.get_current_span()
        if current.get_span_context().trace_id == self._trace_id:
            parent = otel_context.get_current()  # nest under the innermost span of the run
        else:
            parent = trace.set_span_in_context(self.run_span)
        span = self.tracer.start_span(name, context=parent, attributes=dict(attributes))
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token, time.perf_counter_ns()

    def _close(
        self, name: str, span: Span, token: object, started_ns: int, exc: BaseException | None
    ) -> None:
        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            # Recorded while the span is current: the point gets a trace-linked exemplar.
            self.duration.record(
                (time.perf_counter_ns() - started_ns) / 1e9, {"tracelet.span.name": name}
            )
            span.end()
        finally:
            otel_context.detach(token)  # type: ignore[arg-type]

    def end(self, status: str, attributes: Mapping[str, Any]) -> None:
        """End the run span, with status ERROR unless `status` is ``"FINISHED"``."""
        if self.closed:
            return
        self.closed = True
        self.run_span.set_attributes({**attributes, "tracelet.run.status": status})
        if status != "FINISHED":
            self.run_span.set_status(Status(StatusCode.ERROR, f"run {status}"))
        self.run_span.end()


class SpanScope:
    """A phase of the run, as a context manager or a decorator (see `Experiment.span`).

    As a context manager it yields the OTel span (``span.set_attribute(...)``);
    each ``with`` opens a new span. As a decorator, each call of the function
    runs in a new span. Once the run has ended it records nothing.
    """

    def __init__(self, tracing: RunTracing, name: str, attributes: Mapping[str, Any]) -> None:
        self._tracing = tracing
        self._name = name
        self._attributes = attributes
        self._local = threading.local()  # one stack of open spans per thread

    @property
    def _open(self) -> list[tuple[Span, object, int]]:
        stack: list[tuple[Span, object, int]] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __enter__(self) -> Span:
        if self._tracing.closed:
            self._open.append((trace.INVALID_SPAN, None, 0))
            return trace.INVALID_SPAN
        opened = self._tracing._open(self._name, self._attributes)
        self._open.append(opened)
        return opened[0]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span, token, started = self._open.pop()
        if token is not None:
            self._tracing._close(self._name, span, token, started, exc)

    def __call__(self, func: F) -> F:
        tracing, name, attributes = self._tracing, self._name, self._attributes
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with SpanScope(tracing, name, attributes):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with SpanScope(tracing, name, attributes):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<tracelet span {self._name!r}>"
