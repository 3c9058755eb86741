"""Per-RPC metrics of the gRPC port, with go-grpc-prometheus's names and labels (what etcd exports and what
dashboards and alert rules written for etcd query):

    grpc_server_started_total{grpc_type, grpc_service, grpc_method}
    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method, grpc_code}  (histogram)

The histogram also carries `grpc_code` (go-grpc-prometheus's has none), so latency can be read apart for
calls that succeeded and calls refused at once; `sum by (le, grpc_method)` gives go-grpc-prometheus's view.

A server interceptor for grpc.aio (no maintained library serves the asyncio server). It runs on every
call, so it does the least it can there: the wrapped handler of each method is built once and kept, the
metric children of each (method, code) are looked up once and kept, and a call costs two clock reads,
one counter increment and one histogram observation on top of its own work (benchmarks/README.md gives
the measured cost)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CODE_NAMES = {c: c.name for c in grpc.StatusCode}
_CODE_BY_VALUE = {c.value[0]: c.name for c in grpc.StatusCode}

Method = tuple[str, str, str]  # grpc_type, grpc_service, grpc_method


class RequestMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry) -> None:
        method = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started on the server", method, registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds",
                                 "Time from an RPC's start to its status, by method and status code",
                                 [*method, "grpc_code"], buckets=LATENCY_BUCKETS, registry=registry)
        # grpc_server_handled_total is the histogram's count under its own name, read when scraped: one
        # metric less to update on every call.
        registry.register(_HandledFromHistogram(self.seconds))
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        name = handler_call_details.method
        try:
            return self._handlers[name]  # type: ignore[return-value]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = self._wrap(name, handler) if handler is not None else None
        if len(self._handlers) < 1024:  # unknown method names come from clients: keep them bounded
            self._handlers[name] = wrapped
        return wrapped  # type: ignore[return-value]

    def _observer(self, method: Method) -> Callable[[str, float], None]:
        """Observes one call of `method`: its status code and the perf_counter() at its start."""
        by_code: dict[str, Callable[[float], None]] = {}
        seconds = self.seconds

        def observe(code: str, t0: float) -> None:
            f = by_code.get(code)
            if f is None:
                f = by_code[code] = seconds.labels(*method, code).observe
            f(time.perf_counter() - t0)

        return observe

    # -- building wrappers, once per method --------------------------------------------------------
    def _wrap(self, name: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method_name = name.lstrip("/").rpartition("/")
        if h.unary_unary is not None:
            kind, behavior, make = "unary", h.unary_unary, grpc.unary_unary_rpc_method_handler
        elif h.unary_stream is not None:
            kind, behavior, make = "server_stream", h.unary_stream, grpc.unary_stream_rpc_method_handler
        elif h.stream_unary is not None:
            kind, behavior, make = "client_stream", h.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            kind, behavior, make = "bidi_stream", h.stream_stream, grpc.stream_stream_rpc_method_handler
        method: Method = (kind, service, method_name)
        started = self.started.labels(*method).inc
        if inspect.isasyncgenfunction(behavior):
            wrapped: Any = self._streaming(method, started, behavior)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._awaiting(method, started, behavior)
        else:
            return h  # a blocking handler runs in gRPC's thread pool: not timed here
        return make(wrapped, request_deserializer=h.request_deserializer, response_serializer=h.response_serializer)

    def _awaiting(self, method: Method, started: Callable[[], None], behavior: Callable[..., Any]
                  ) -> Callable[..., Awaitable[Any]]:
        done = self._observer(method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started()
            t0 = time.perf_counter()
            try:
                reply = await behavior(request, context)
            except BaseException as e:
                done(_code_after(context, e), t0)
                raise
            done(_code_of(context), t0)
            return reply

        return call

    def _streaming(self, method: Method, started: Callable[[], None], behavior: Callable[..., AsyncIterator[Any]]
                   ) -> Callable[..., AsyncIterator[Any]]:
        done = self._observer(method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started()
            t0 = time.perf_counter()
            try:
                async for reply in behavior(request, context):
                    yield reply
            except BaseException as e:
                done(_code_after(context, e), t0)
                raise
            done(_code_of(context), t0)

        return call


def _code_of(context: grpc.aio.ServicerContext) -> str:
    """The status a handler that returned set (OK unless it called set_code)."""
    code = context.code()
    if code is None:
        return "OK"
    return _CODE_NAMES.get(code) or _CODE_BY_VALUE.get(code, "UNKNOWN")


def _code_after(context: grpc.aio.ServicerContext, e: BaseException) -> str:
    """The status of a handler that raised: what abort() or set_code() set, else CANCELLED for a call
    the client cancelled (or the server stopped), else UNKNOWN (grpc's answer to an exception)."""
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK and code != 0:
        return _CODE_NAMES.get(code) or _CODE_BY_VALUE.get(code, "UNKNOWN")
    if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    return "UNKNOWN"


class _HandledFromHistogram(Collector):
    """grpc_server_handled_total{..., grpc_code}: the count of grpc_server_handling_seconds."""

    def __init__(self, seconds: Histogram) -> None:
        self._seconds = seconds

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, by status code",
                                    labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"])]

    def collect(self) -> list[CounterMetricFamily]:
        fam = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, by status code",
                                  labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"])
        for metric in self._seconds.collect():
            for s in metric.samples:
                if s.name.endswith("_count"):
                    fam.add_metric([s.labels["grpc_type"], s.labels["grpc_service"], s.labels["grpc_method"],
                                    s.labels["grpc_code"]], s.value)
        return [fam]
