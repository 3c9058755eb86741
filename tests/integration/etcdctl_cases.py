"""The etcdctl (ETCDCTL_API=3, Debian's 3.4) commands that raftkv's etcd v3 API is checked with, the
normalisation that makes two systems' outputs comparable, and the recorder of real etcd's transcript.

The cases run in order against an empty store, on one endpoint. A transcript holds, per case, the exit
code, stdout and the `Error: ...` line of stderr. Comparing two transcripts compares exit codes, the
exact text where it does not depend on the system (values, counts, etcd's error messages), and the shape
of `-w json` / `-w table` output (the same fields and columns; numbers that name revisions, IDs, sizes
and terms are masked, as they differ between any two clusters).

Record real etcd's transcript again (starts etcd on free loopback ports in a temp dir, ends it by PID):

    .venv/bin/python -m tests.integration.etcdctl_cases record
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
TRANSCRIPT = Path(__file__).parent / "data" / "etcdctl-3.4-transcript.json"
MAX_REQUEST_BYTES = 4096
"""Both systems run with this request limit, so a 5,000-byte put is "request is too large" on both."""
BIG = "x" * 5000


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    stdin: str = ""
    shape_only: bool = False
    """Compare only the shape of the output (JSON fields / table columns), not its text."""


def _c(name: str, *args: str, stdin: str = "", shape_only: bool = False) -> Case:
    return Case(name, args, stdin, shape_only)


CASES: list[Case] = [
    _c("put", "put", "foo", "bar"),
    _c("put-2", "put", "foo2", "baz"),
    _c("put-3", "put", "foo3", "qux"),
    _c("put-other", "put", "a", "1"),
    _c("put-prev-kv", "put", "foo", "bar2", "--prev-kv"),
    _c("put-json", "put", "zz", "1", "-w", "json", shape_only=True),
    _c("get", "get", "foo"),
    _c("get-missing", "get", "nothing"),
    _c("get-json", "get", "foo", "-w", "json", shape_only=True),
    _c("get-prefix", "get", "--prefix", "foo"),
    _c("get-range", "get", "foo", "foo3"),
    _c("get-limit-json", "get", "--prefix", "foo", "--limit", "2", "-w", "json", shape_only=True),
    _c("get-limit", "get", "--prefix", "foo", "--limit", "2"),
    _c("get-from-key-keys-only", "get", "foo", "--from-key", "--keys-only"),
    _c("get-sort-value-desc", "get", "--prefix", "foo", "--sort-by=VALUE", "--order=DESCEND"),
    _c("get-sort-create-asc", "get", "--prefix", "foo", "--sort-by=CREATE", "--order=ASCEND", "--print-value-only"),
    _c("get-sort-modify-desc-limit", "get", "--prefix", "foo", "--sort-by=MODIFY", "--order=DESCEND", "--limit=1"),
    _c("get-sort-version-desc", "get", "--prefix", "foo", "--sort-by=VERSION", "--order=DESCEND", "--keys-only"),
    _c("get-sort-key-desc", "get", "--prefix", "foo", "--order=DESCEND", "--print-value-only"),
    _c("get-everything-keys-only", "get", "", "--prefix", "--keys-only", "--limit=3"),
    _c("get-serializable", "get", "foo", "--consistency=s"),
    _c("get-print-value-only", "get", "foo", "--print-value-only"),
    _c("get-table", "get", "foo", "-w", "table"),
    _c("compact", "compact", "5", shape_only=True),
    _c("get-compacted-rev", "get", "foo", "--rev=2"),
    _c("get-future-rev", "get", "foo", "--rev=999999"),
    _c("compact-future", "compact", "999999"),
    _c("put-lease", "put", "k", "v", "--lease=1234"),
    _c("put-ignore-value-missing", "put", "nokey", "--ignore-value"),
    _c("put-ignore-value", "put", "foo", "--ignore-value"),
    _c("get-after-ignore-value", "get", "foo"),
    _c("put-ignore-lease", "put", "foo", "bar2", "--ignore-lease"),
    _c("put-ignore-lease-missing", "put", "nokey", "v", "--ignore-lease"),
    _c("put-too-large", "put", "big", BIG),
    _c("del", "del", "foo", "--prev-kv"),
    _c("del-missing", "del", "foo"),
    _c("del-prefix", "del", "--prefix", "foo"),
    _c("get-prefix-empty", "get", "--prefix", "foo"),
    _c("txn-success", "txn", "-i", stdin='value("a") = "1"\n\nput a 2\nput b x\n\nput a 3\n\n'),
    _c("txn-failure", "txn", "-i", stdin='version("a") = "7"\n\nput a 4\n\nget a\nget b\n\n'),
    _c("txn-missing-key-not-equal", "txn", "-i", stdin='value("nokey") != "x"\n\nput c yes\n\nput c no\n\n'),
    _c("txn-mod-create", "txn", "-i", stdin='mod("a") > "0"\ncreate("b") > "0"\n\ndel b\n\n\n'),
    _c("txn-json", "txn", "-i", "-w", "json", stdin='version("a") > "0"\n\nget a\nput z 1\n\n\n', shape_only=True),
    _c("txn-duplicate-key", "txn", "-i", stdin='\nput d 1\nput d 2\n\n\n'),
    _c("get-after-txn", "get", "a"),
    _c("get-with-user", "--user", "root:secret", "get", "a"),  # auth is off: the client goes on without it
    _c("alarm-list", "alarm", "list"),
    _c("defrag", "defrag", shape_only=True),
    _c("endpoint-health", "endpoint", "health"),
    _c("endpoint-status-json", "endpoint", "status", "-w", "json", shape_only=True),
    _c("endpoint-status-table", "endpoint", "status", "-w", "table", shape_only=True),
    _c("member-list-json", "member", "list", "-w", "json", shape_only=True),
    _c("member-list-table", "member", "list", "-w", "table", shape_only=True),
    _c("member-add-learner", "member", "add", "newbie", "--learner", "--peer-urls={NEW_PEER}", shape_only=True),
    _c("member-promote-not-ready", "member", "promote", "{NEW_ID}", shape_only=True),
    _c("member-update", "member", "update", "{NEW_ID}", "--peer-urls={NEW_PEER2}", shape_only=True),
    _c("member-remove", "member", "remove", "{NEW_ID}", shape_only=True),
    _c("member-remove-missing", "member", "remove", "{NEW_ID}", shape_only=True),
]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    e["ETCDCTL_API"] = "3"
    return e


def run_case(case: Case, endpoint: str, subst: dict[str, str], timeout: float = 20.0) -> dict[str, Any]:
    args = [a.format(**subst) if "{" in a else a for a in case.args]
    p = subprocess.run([ETCDCTL, f"--endpoints={endpoint}", "--command-timeout=10s", *args], input=case.stdin,
                       capture_output=True, text=True, env=env(), timeout=timeout)
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    return {"args": args, "stdin": case.stdin, "rc": p.returncode, "stdout": p.stdout,
            "error": errors[-1] if errors else ""}


def run_all(endpoint: str, subst: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every case in order; the new member's ID (from `member add`) fills {NEW_ID} in later cases."""
    out: dict[str, dict[str, Any]] = {}
    subst.setdefault("NEW_ID", "0")
    for case in CASES:
        res = run_case(case, endpoint, subst)
        m = re.search(r"Member +([0-9a-f]+) added", res["stdout"])
        if m:
            subst["NEW_ID"] = m.group(1)
        out[case.name] = res
    return out


# -- comparison ---------------------------------------------------------------------------------------
_MASKED_JSON = {"cluster_id", "member_id", "revision", "raft_term", "create_revision", "mod_revision", "ID",
                "dbSize", "dbSizeInUse", "leader", "raftIndex", "raftTerm", "raftAppliedIndex"}


def json_shape(v: Any, key: str = "") -> Any:
    """The fields of a JSON value, with masked numbers and strings that name hosts replaced by their type."""
    if isinstance(v, dict):
        return {k: json_shape(x, k) for k, x in sorted(v.items())}
    if isinstance(v, list):  # rows that look alike count once (one member or three)
        rows = [json_shape(x, key) for x in v]
        return [r for i, r in enumerate(rows) if r not in rows[:i]]
    if key in _MASKED_JSON or key in ("Endpoint", "name", "peerURLs", "clientURLs", "version"):
        return type(v).__name__
    return v


def text_shape(text: str) -> str:
    """Table and simple output with what differs between clusters masked: hex IDs, URLs and addresses,
    sizes, numbers, durations, and the padding that their widths set."""
    t = re.sub(r"\bnewbie\b|\braftkv-\d+\b|\be1\b", "<name>", text)
    t = re.sub(r"https?://[\w.:\-]+", "<url>", t)
    t = re.sub(r"\b\d+\.\d+\.\d+\.\d+:\d+\b", "<addr>", t)
    t = re.sub(r"took = [\d.]+\w+", "took = <t>", t)
    t = re.sub(r"\b\d+(\.\d+)? ?[kMG]?B\b", "<size>", t)
    t = re.sub(r"\b[0-9a-f]{1,16}\b", "<n>", t)
    t = re.sub(r"ETCD_NAME=\S+|ETCD_INITIAL_CLUSTER=\S+|ETCD_INITIAL_ADVERTISE_PEER_URLS=\S+", "<env>", t)
    t = re.sub(r"\b(true|false)\b", "<bool>", t)
    t = re.sub(r"-+", "-", t)
    t = re.sub(r" +", " ", t)
    # One member or three, one endpoint or three: rows that look alike count once.
    return "".join(dict.fromkeys(t.splitlines(keepends=True)))


TXN_PROMPTS = ("compares:", "success requests (get, put, del):", "failure requests (get, put, del):")


def comparable(case: Case, res: dict[str, Any]) -> dict[str, Any]:
    out = res["stdout"]
    if case.shape_only:
        out = "".join(line for line in out.splitlines(keepends=True) if line.rstrip("\n") not in TXN_PROMPTS)
        try:
            out = json_shape(json.loads(out))
        except ValueError:
            out = text_shape(out)
    return {"rc": res["rc"], "stdout": out, "error": res["error"]}


# -- recording real etcd ------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record() -> int:
    client, peer, spare, spare2 = (_free_port() for _ in range(4))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [ETCD, "--name", "e1", "--data-dir", f"{tmp}/data",
               "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls",
               f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"e1=http://127.0.0.1:{peer}", "--max-request-bytes", str(MAX_REQUEST_BYTES)]
        with open(f"{tmp}/etcd.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            endpoint = f"127.0.0.1:{client}"
            deadline = time.monotonic() + 30
            while run_case(_c("health", "endpoint", "health"), endpoint, {})["rc"] != 0:
                if time.monotonic() > deadline:
                    print("Error: etcd did not become healthy", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            version = subprocess.run([ETCD, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            results = run_all(endpoint, {"NEW_PEER": f"http://127.0.0.1:{spare}",
                                         "NEW_PEER2": f"http://127.0.0.1:{spare2}"})
        finally:
            proc.terminate()
            proc.wait(15)
    TRANSCRIPT.parent.mkdir(exist_ok=True)
    TRANSCRIPT.write_text(json.dumps({"recorded_with": version, "endpoint": endpoint, "cases": results},
                                     indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(results)} cases from {version} into {TRANSCRIPT}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["record"]:
        print("usage: python -m tests.integration.etcdctl_cases record", file=sys.stderr)
        sys.exit(64)
    sys.exit(record())
