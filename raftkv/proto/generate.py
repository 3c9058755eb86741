"""Generate the gRPC stubs in raftkv/proto/ from proto/ (run by `make proto`).

Two sets, each compiled by its own protoc run:
- raftkv's own API, proto/raftkv/v1/*.proto -> raftkv/proto/*_pb2*.py;
- etcd's v3 API (etcdserverpb, mvccpb), proto/etcd/**/*.proto -> raftkv/proto/etcd/*_pb2*.py, served by
  raftkv/api/etcd/ and driven by the benchmark's etcd client. A set of its own because etcd's mvccpb
  file is also called kv.proto.

The stubs are build products: git ignores them and nobody edits them. Imports between generated modules
are rewritten to be package-relative, so `from raftkv.proto import kv_pb2` works from anywhere."""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"


@dataclass(frozen=True)
class StubSet:
    include: Path  # the -I root; import paths in the .proto files are relative to it
    sources: list[Path]
    out: Path
    packages: tuple[str, ...]  # generated `from <pkg> import x_pb2` / `import <pkg>.x_pb2` to rewrite

    def stale(self) -> bool:
        for src in self.sources:
            out = self.out / f"{src.stem}_pb2.py"
            if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
                return True
        return False


RAFTKV = StubSet(PROTO_ROOT, sorted((PROTO_ROOT / "raftkv" / "v1").glob("*.proto")), HERE, ("raftkv.v1",))
ETCD = StubSet(PROTO_ROOT / "etcd", sorted((PROTO_ROOT / "etcd").rglob("*.proto")), HERE / "etcd",
               ("mvccpb", "etcdserverpb"))
SOURCES = RAFTKV.sources + ETCD.sources


def _generate(stubs: StubSet) -> None:
    from grpc_tools import protoc

    stubs.out.mkdir(exist_ok=True)
    if stubs.out != HERE:
        (stubs.out / "__init__.py").write_text('"""Generated stubs (see raftkv/proto/generate.py)."""\n')
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{stubs.include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *[str(s.relative_to(stubs.include)) for s in stubs.sources]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        pkgs = "|".join(re.escape(p) for p in stubs.packages)
        for f in Path(tmp).rglob("*.py*"):
            text = f.read_text()
            text = re.sub(rf"^from (?:{pkgs}) import (\w+) as", r"from . import \1 as", text, flags=re.M)
            text = re.sub(rf"^import (?:{pkgs})\.(\w+) as", r"from . import \1 as", text, flags=re.M)
            (stubs.out / f.name).write_text(text)


def generate() -> None:
    _generate(RAFTKV)
    _generate(ETCD)


def main() -> int:
    if not RAFTKV.sources:
        print(f"no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    force = "--force" in sys.argv
    done = []
    for stubs in (RAFTKV, ETCD):
        if stubs.sources and (force or stubs.stale()):
            _generate(stubs)
            done.append(f"{', '.join(s.name for s in stubs.sources)} in {stubs.out}")
    if done:
        print("generated stubs for " + "; ".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
