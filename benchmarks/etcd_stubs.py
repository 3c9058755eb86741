"""Python stubs for the etcd v3 KV API, compiled from benchmarks/proto/ on first use.

They are build products (git ignores them), regenerated when a .proto is newer than its stub. Imports
between the generated modules are made package-relative, as for raftkv's own stubs."""

from __future__ import annotations

import importlib
import re
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"
OUT = HERE / "etcdpb"
SOURCES = [PROTO_ROOT / "mvccpb" / "kv.proto", PROTO_ROOT / "etcdserverpb" / "rpc.proto"]


def _stale() -> bool:
    for src in SOURCES:
        out = OUT / f"{src.stem}_pb2.py"
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            return True
    return not (OUT / "rpc_pb2_grpc.py").exists()


def generate() -> None:
    from grpc_tools import protoc

    OUT.mkdir(exist_ok=True)
    (OUT / "__init__.py").write_text('"""Generated etcd v3 stubs (see benchmarks/etcd_stubs.py)."""\n')
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                *[str(s.relative_to(PROTO_ROOT)) for s in SOURCES]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on benchmarks/proto")
        for f in Path(tmp).rglob("*.py"):
            text = f.read_text()
            text = re.sub(r"^from (mvccpb|etcdserverpb) import (\w+) as", r"from . import \2 as", text, flags=re.M)
            (OUT / f.name).write_text(text)


def load() -> tuple[ModuleType, ModuleType]:
    """(rpc_pb2, rpc_pb2_grpc), generating them first when missing or stale."""
    if _stale():
        generate()
    return (importlib.import_module("benchmarks.etcdpb.rpc_pb2"),
            importlib.import_module("benchmarks.etcdpb.rpc_pb2_grpc"))
