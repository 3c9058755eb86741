"""`python -m benchmarks.refusal_cost` runs each server mode and gets the outcome it claims to time: the
accepting server answers, and the three refusing ones refuse every call (grpcio's limiter included, which
only refuses while its one slot is held). Speed is never asserted here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_mode_times_the_outcome_it_names(tmp_path: Path) -> None:
    out = tmp_path / "refusal.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.refusal_cost", "--calls", "200", "--rounds", "1",
                           "--outstanding", "8", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["accept"]["codes"] == {"OK": 200}
    for mode in ("limiter", "abort", "raftkv"):
        assert results[mode]["codes"] == {"RESOURCE_EXHAUSTED": 200}, mode
    for r in results.values():
        assert r["server_cpu_us_per_call"] > 0 and r["calls_per_s"] > 0
    assert "| raftkv | RESOURCE_EXHAUSTED 200 |" in proc.stdout


def test_the_raftkv_mode_refuses_as_a_leader_does() -> None:
    """The `raftkv` mode's refusal is the real one: OVERLOADED in the ErrorInfo, and the pushback hint."""
    import grpc
    from grpc_status import rpc_status

    from benchmarks import refusal_cost
    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    port = refusal_cost._free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.refusal_cost", "--serve", "raftkv", "--port",
                             str(port)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        async def one() -> grpc.aio.AioRpcError:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    await kv_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
                except grpc.aio.AioRpcError as e:
                    return e
            raise AssertionError("the call was answered")

        err = asyncio.run(one())
    finally:
        proc.terminate()
        proc.wait(10)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.trailing_metadata() or ())
    assert trailing.get("grpc-retry-pushback-ms") == "100"
    from google.rpc import error_details_pb2
    st = rpc_status.from_call(err)
    assert st is not None
    info = error_details_pb2.ErrorInfo()
    assert st.details[0].Unpack(info) and info.reason == "OVERLOADED" and info.metadata["resource"] == "proposals"
