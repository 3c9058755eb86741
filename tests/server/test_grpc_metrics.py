"""The per-RPC metrics interceptor on a real grpc.aio server: each kind of RPC (unary, server stream as an
async generator, client stream) counted and timed under the status the client saw: OK, a code set by
abort(), UNKNOWN for a handler that raised, CANCELLED for a call the client cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from raftkv.server.grpc_metrics import RequestMetrics

SERVICE = "test.Echo"
slow_started: asyncio.Event | None = None


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"abort":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused")
    if request == b"raise":
        raise RuntimeError("a bug")
    if request == b"slow":
        assert slow_started is not None
        slow_started.set()
        await asyncio.sleep(30)
    return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield request


async def _collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.asyncio
async def test_calls_are_counted_and_timed_under_their_status_code() -> None:
    global slow_started
    slow_started = asyncio.Event()
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[RequestMetrics(registry)])
    ident = {"request_deserializer": None, "response_serializer": None}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, **ident),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, **ident),
        "Collect": grpc.stream_unary_rpc_method_handler(_collect, **ident),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")
            for _ in range(3):
                assert await unary(b"ok", timeout=10) == b"ok"
            for req, code in ((b"abort", grpc.StatusCode.FAILED_PRECONDITION), (b"raise", grpc.StatusCode.UNKNOWN)):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await unary(req, timeout=10)
                assert e.value.code() == code
            call = unary(b"slow", timeout=10)
            await asyncio.wait_for(slow_started.wait(), 10)
            await asyncio.sleep(0.2)
            call.cancel()
            assert [r async for r in ch.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=10)] == [b"s"] * 3

            async def parts() -> AsyncIterator[bytes]:
                for p in (b"a", b"b"):
                    yield p

            assert await ch.stream_unary(f"/{SERVICE}/Collect")(parts(), timeout=10) == b"ab"
        # The cancelled handler ends on the server a moment after the client gave up.
        for _ in range(100):
            if _value(registry, "grpc_server_handled_total", grpc_type="unary", grpc_service=SERVICE,
                      grpc_method="Unary", grpc_code="CANCELLED"):
                break
            await asyncio.sleep(0.05)
    finally:
        await server.stop(None)

    def handled(method: str, kind: str, code: str) -> float:
        return _value(registry, "grpc_server_handled_total", grpc_type=kind, grpc_service=SERVICE,
                      grpc_method=method, grpc_code=code)

    assert handled("Unary", "unary", "OK") == 3
    assert handled("Unary", "unary", "FAILED_PRECONDITION") == 1
    assert handled("Unary", "unary", "UNKNOWN") == 1
    assert handled("Unary", "unary", "CANCELLED") == 1
    assert handled("Stream", "server_stream", "OK") == 1
    assert handled("Collect", "client_stream", "OK") == 1
    assert _value(registry, "grpc_server_started_total", grpc_type="unary", grpc_service=SERVICE,
                  grpc_method="Unary") == 6
    assert _value(registry, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service=SERVICE,
                  grpc_method="Unary", grpc_code="OK") == 3
    slow = _value(registry, "grpc_server_handling_seconds_sum", grpc_type="unary", grpc_service=SERVICE,
                  grpc_method="Unary", grpc_code="CANCELLED")
    assert slow >= 0.2  # timed from its start until the client cancelled it, at least 0.2 s after
