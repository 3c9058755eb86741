"""The import table of DESIGN.md §2, enforced: what each package of raftkv/ may import and must never
import, read from every import statement (lazy ones in functions and TYPE_CHECKING blocks included) with
`ast`, so the layering cannot rot silently.

A package may import the raftkv packages in its `may` column and nothing else of raftkv; it must never
import what its `never` column names, stdlib and third-party included. The core may import only plain
stdlib data types. Top-level helper modules (exit_codes, hop_trace, status, tls) may be imported by any package but
the core; importing one counts as importing what it imports from outside raftkv (status and tls bring
grpc). Generated stubs (raftkv/proto/) are "proto stubs".

Code that breaks the table today is listed once, in KNOWN_VIOLATIONS, each with the reason it is there.
The list may only shrink: an entry that no longer happens fails the test too, so whoever removes a
violation removes its entry.

    python -m tests.test_layering     # print every violation, known or not
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "raftkv"

LEAF_MODULES = {"backup_file", "exit_codes", "hop_trace", "status", "tls"}
"""Top-level modules of raftkv/ that are no package of the table: small helpers shared by several."""

CORE_STDLIB = {"__future__", "abc", "bisect", "collections", "dataclasses", "enum", "functools", "heapq",
               "itertools", "math", "random", "typing"}
"""'stdlib data types only': `random` is there for the type of the injected `random.Random`."""


@dataclass(frozen=True)
class Rule:
    may: frozenset[str]
    """raftkv packages (`core`) or modules (`server.config`) this package may import (itself always)."""
    never: frozenset[str] = field(default_factory=frozenset)
    """Top-level names (stdlib, third-party) and raftkv packages or modules it must never import."""
    only_external: frozenset[str] | None = None
    """If set, the only stdlib / third-party top-level names allowed (the core)."""


def _rule(may: str, never: str = "", only_external: set[str] | None = None) -> Rule:
    return Rule(frozenset(may.split()), frozenset(never.split()),
                frozenset(only_external) if only_external is not None else None)


# DESIGN.md §2, column by column. "core types" is read as the core package (its public names are its
# types, errors, the LogStorage interface and the bootstrap entries: all pure); "storage internals" as
# anything of storage but its command encoding (storage.commands) and its errors (storage.errors).
RULES: dict[str, Rule] = {
    "core": _rule("", "asyncio threading time socket grpc lmdb os", CORE_STDLIB),
    "storage": _rule("core", "grpc asyncio server"),
    "transport": _rule("core proto", "storage api"),
    "server": _rule("core storage transport", "api cli layers"),
    "layers": _rule("core server", "grpc"),
    "api": _rule("proto layers server storage.commands storage.errors", "storage"),
    "client": _rule("proto", "server core"),
    "cli": _rule("client server.config", "core storage"),
    "sim": _rule("core server layers storage", "grpc lmdb socket subprocess transport api"),
}

# (importing file, imported module): why it is allowed for now. Keep it short and honest.
_COMPOSITION = ("server/lifecycle.py builds the gRPC services: the composition root sits in server/ while "
                "the table says server never imports api; needs the root moved or the table amended")
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    # server -> api and proto: the process is assembled in server/lifecycle.py.
    ("server/lifecycle.py", "raftkv.api.admin_service"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.etcd"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.forward"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.kv_service"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.maintenance_service"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.coordination"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.api.witness_guard"): _COMPOSITION,
    ("server/lifecycle.py", "raftkv.proto.stubs"): _COMPOSITION,
    ("server/identity.py", "raftkv.proto.stubs"): "checks peer batches in their wire form; belongs in transport/",
    # api -> core: the api names core types and errors.
    ("api/admin_service.py", "raftkv.core.types"): "member changes and roles named with core types",
    ("api/errors.py", "raftkv.core.errors"): "maps ConfChangeRejected to a status",
    ("api/etcd/cluster.py", "raftkv.core.types"): "member changes named with core types",
    ("api/etcd/maintenance.py", "raftkv.core.types"): "MoveLeader waits on the node's role",
    ("api/etcd/errors.py", "raftkv.core.errors"): "maps ConfChangeRejected to etcd's status",
    # client -> server-side packages: the client shares the session token and the range-end rule.
    ("client/sync_client.py", "raftkv.layers.session"): "session token format shared with layers/",
    ("client/requests.py", "raftkv.storage.commands"): "prefix_end shared with the state machine",
    # cli -> server and proto: `raftkv serve` starts a node in-process; `kv` builds a request itself.
    ("cli/kv.py", "raftkv.proto.stubs"): "builds a request from the stubs, not through client/",
    ("cli/server_main.py", "raftkv.server.lifecycle"): "`raftkv serve` runs the node; table's cli row "
                                                        "names only client and config",
    ("cli/server_main.py", "raftkv.server.logging_setup"): "`raftkv serve` sets up the node's logging",
    ("cli/server_main.py", "raftkv.server.restore"): "`raftkv restore` writes a data directory in-process",
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to raftkv/
    line: int
    module: str  # absolute: "raftkv.core.types", "grpc", "os.path"


def _package_of(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "raftkv":
        return None
    base = ROOT.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@cache
def _reexports(package: str) -> dict[str, str]:
    """Name -> defining module, for names a package's __init__ imports from its own submodules."""
    init = _module_file(package)
    out: dict[str, str] = {}
    if init is None or init.name != "__init__.py":
        return out
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{package}.{node.module}"
    return out


def _resolve(module: str, name: str) -> str:
    """The module that `from module import name` really depends on: a submodule, the submodule a package
    re-exports `name` from, or `module` itself."""
    sub = f"{module}.{name}"
    if _module_file(sub) is not None:
        return sub
    return _reexports(module).get(name, module)


def imports_of(path: Path) -> list[Import]:
    rel = path.relative_to(PKG)
    here = ["raftkv", *rel.with_suffix("").parts]
    base = here[:-1]  # the package this file is in (for __init__.py: the package itself)
    out: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(str(rel), node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("raftkv"):
                out += [Import(str(rel), node.lineno, _resolve(module, a.name)) for a in node.names]
            else:
                out.append(Import(str(rel), node.lineno, module))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] != "proto")


@cache
def _leaf_externals(leaf: str) -> frozenset[str]:
    path = _module_file(f"raftkv.{leaf}")
    assert path is not None, leaf
    return frozenset(i.module.split(".")[0] for i in imports_of(path) if not i.module.startswith("raftkv"))


def _allowed(target: str, may: frozenset[str]) -> bool:
    """Is raftkv module `target` ("raftkv.server.config.x") covered by one of `may` ("server.config")?"""
    rest = target.split(".")[1:]
    return any(rest[: len(m.split("."))] == m.split(".") for m in may)


def violation(imp: Import) -> str | None:
    """Why `imp` breaks the table, or None."""
    pkg = _package_of(Path(imp.file))
    rule = RULES.get(pkg)
    if rule is None:
        return None  # a leaf module or the package root: checked through whoever imports it
    if not imp.module.startswith("raftkv"):
        top = imp.module.split(".")[0]
        if top in rule.never:
            return f"{pkg} must never import {top}"
        if rule.only_external is not None and top not in rule.only_external:
            return f"{pkg} may import only stdlib data types, not {top}"
        return None
    if imp.module == "raftkv":
        return f"{pkg} imports the raftkv package root"
    target = imp.module.split(".")[1]
    if target == pkg:
        return None
    if target in LEAF_MODULES:
        if rule.only_external is not None:
            return f"{pkg} may import only stdlib data types, not raftkv.{target}"
        bad = sorted(_leaf_externals(target) & rule.never)
        return f"{pkg} must never import {', '.join(bad)} (through raftkv.{target})" if bad else None
    if _allowed(imp.module, rule.may):
        return None
    if _allowed(imp.module, frozenset(n for n in rule.never if n in RULES)):
        return f"{pkg} must never import {target}"
    return f"{pkg} may import {', '.join(sorted(rule.may)) or 'no other raftkv package'}, not {imp.module}"


def all_violations() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for path in _sources():
        for imp in imports_of(path):
            why = violation(imp)
            if why is not None:
                lines = found.setdefault((imp.file, imp.module), [])
                line = f"raftkv/{imp.file}:{imp.line}: {why}"
                if line not in lines:  # `from m import a, b` is one import of m
                    lines.append(line)
    return found


def test_every_package_is_in_the_table() -> None:
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"proto"}
    leaves = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert packages == set(RULES), "a package is missing from DESIGN.md §2's table (or from RULES)"
    assert leaves == LEAF_MODULES, "a new top-level module: put it in a package, or list it as a leaf"


def test_imports_follow_the_design_table() -> None:
    found = all_violations()
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not new, "imports that break DESIGN.md §2:\n" + "\n".join(line for v in new.values() for line in v)


def test_known_violations_are_still_real() -> None:
    """The allow-list only shrinks: a violation that was removed must leave the list with it."""
    found = all_violations()
    stale = sorted(k for k in KNOWN_VIOLATIONS if k not in found)
    assert not stale, f"no longer violations, remove them from KNOWN_VIOLATIONS: {stale}"


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The parser resolves relative, lazy and re-exported imports; the rules refuse what the table refuses."""
    assert _resolve("raftkv.core", "Message") == "raftkv.core.types"
    assert _resolve("raftkv.storage", "commands") == "raftkv.storage.commands"
    assert violation(Import("core/raft.py", 1, "time")) == "core must never import time"
    assert violation(Import("core/raft.py", 1, "json")) is not None
    assert violation(Import("core/raft.py", 1, "raftkv.storage.node_store")) is not None
    assert violation(Import("core/raft.py", 1, "raftkv.exit_codes")) is not None
    assert violation(Import("storage/log.py", 1, "raftkv.server.host")) == "storage must never import server"
    assert violation(Import("layers/acks.py", 1, "raftkv.status")) is not None  # grpc through status
    assert violation(Import("client/client.py", 1, "raftkv.core.types")) == "client must never import core"
    assert violation(Import("cli/kv.py", 1, "raftkv.server.config")) is None
    assert violation(Import("api/convert.py", 1, "raftkv.storage.commands")) is None
    assert violation(Import("api/kv_service.py", 1, "raftkv.storage.node_store")) is not None
    host = imports_of(PKG / "server" / "host.py")
    assert any(i.module == "raftkv.core.node" for i in host)  # `from ..core import RaftNode`
    assert any(i.module == "random" for i in host)  # imported inside a function


if __name__ == "__main__":
    for (file, module), lines in sorted(all_violations().items()):
        mark = "known" if (file, module) in KNOWN_VIOLATIONS else "NEW  "
        for line in lines:
            print(mark, line)
    sys.exit(0)
