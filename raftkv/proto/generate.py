"""Generate the gRPC stubs in raftkv/proto/ from proto/raftkv/v1/*.proto (run by `make proto`).

The stubs are build products: git ignores them and nobody edits them. Imports between generated modules
are rewritten to be package-relative, so `from raftkv.proto import kv_pb2` works from anywhere."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
SOURCES = sorted((PROTO_ROOT / "raftkv" / "v1").glob("*.proto"))


def stale() -> bool:
    for src in SOURCES:
        out = HERE / f"{src.stem}_pb2.py"
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            return True
    return False


def generate() -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                *[str(s.relative_to(PROTO_ROOT)) for s in SOURCES]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        gen = Path(tmp) / "raftkv" / "v1"
        for f in gen.iterdir():
            text = f.read_text()
            text = re.sub(r"^from raftkv\.v1 import (\w+) as", r"from . import \1 as", text, flags=re.M)
            text = re.sub(r"^import raftkv\.v1\.(\w+) as", r"from . import \1 as", text, flags=re.M)
            (HERE / f.name).write_text(text)


def main() -> int:
    if not SOURCES:
        print(f"no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    if stale() or "--force" in sys.argv:
        generate()
        print(f"generated stubs for {', '.join(s.name for s in SOURCES)} in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
