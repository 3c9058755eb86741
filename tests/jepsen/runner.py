"""One run: topology up, cluster up, workload and nemesis for the time limit, heal everything, final
reads, check, write the results folder, tear everything down (always, also on errors)."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftkv.client import Client, RaftKVError

from .checkers import Verdict
from .checkers.members import check_corruption_probes, check_members_agree
from .disks import Disks
from .history import History, Op
from .nemesis import NEEDS_DISKS, Nemesis
from .nodes import Cluster
from .report import write_report
from .topology import Topology
from .witness_topology import WitnessTopology, parse_topology
from .workloads import WORKLOADS


@dataclass
class RunConfig:
    workload: str
    nemesis: str
    seed: int = 1
    time_limit: float = 20.0
    nodes: int = 5
    op_timeout: float = 1.0
    prefix: str = "rkvjm"
    net: int = 1
    quiet: tuple[float, float] = (1.0, 2.0)
    hold: tuple[float, float] = (2.0, 4.0)
    topology: str = ""
    """"" (every node a data node), or a witness topology such as "2+1" (witness_topology.py), which sets
    the number of nodes."""

    peer_transport: str = "grpc"
    """How the nodes send each other Raft batches: `grpc` streams or `tcp` peer ports (`--peer-listen`)."""

    def __post_init__(self) -> None:
        if self.topology:
            self.nodes = parse_topology(self.topology).nodes

    @property
    def witnesses(self) -> WitnessTopology | None:
        return parse_topology(self.topology) if self.topology else None

    @property
    def name(self) -> str:
        topo = f"--w{self.topology.replace('+', 'p')}" if self.topology else ""
        return f"{self.workload}--{self.nemesis}--s{self.seed}{topo}"


@dataclass
class RunResult:
    config: RunConfig
    out: Path
    verdicts: list[Verdict] = field(default_factory=list)
    operations: int = 0
    reads_ok: int = 0
    read_nodes: list[int] = field(default_factory=list)
    """Members that served at least one successful read."""
    faults: int = 0
    faults_injected: int = 0
    """Fault windows whose fault really happened and was healed (not those whose injection raised)."""
    injection_errors: int = 0
    fault_kinds: dict[str, int] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    @property
    def valid(self) -> bool | None:
        if self.error:
            return False
        vals = [v.valid for v in self.verdicts]
        if False in vals:
            return False
        return None if None in vals or not vals else True

    def summary(self) -> dict[str, Any]:
        return {"run": self.config.name, "workload": self.config.workload, "nemesis": self.config.nemesis,
                "seed": self.config.seed, "time_limit_s": self.config.time_limit, "nodes": self.config.nodes,
                "operations": self.operations, "reads_ok": self.reads_ok, "read_nodes": self.read_nodes,
                "faults": self.faults, "faults_injected": self.faults_injected,
                "injection_errors": self.injection_errors, "fault_kinds": self.fault_kinds,
                "valid": self.valid, "error": self.error, "seconds": round(self.seconds, 1),
                "checkers": [v.to_json() for v in self.verdicts]}


def run_one(cfg: RunConfig, out_root: Path) -> RunResult:
    out = out_root / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    res = RunResult(cfg, out)
    topo = Topology(cfg.prefix, cfg.nodes, cfg.net)
    history = History()
    workload = WORKLOADS[cfg.workload](cfg.seed)
    cluster: Cluster | None = None
    nemesis: Nemesis | None = None
    disks: Disks | None = None
    try:
        topo.setup()
        cluster = Cluster(topo, out / "nodes", extra=list(workload.server_flags), witnesses=cfg.witnesses,
                          peer_tcp=cfg.peer_transport == "tcp")
        if cfg.nemesis in NEEDS_DISKS:
            disks = Disks(out / "disks", sorted(cluster.nodes)).setup()
            for slot, node in cluster.nodes.items():
                node.disk = disks.mounts[slot]
        cluster.start_all()
        cluster.wait_leader(60)
        _setup(workload, cluster)
        history = History()
        workload.started(history)
        nemesis = Nemesis(cluster, history, cfg.nemesis, cfg.seed, cfg.quiet, cfg.hold, disks)
        _drive(cfg, cluster, workload, nemesis, history)
        history.note("harness", "final-phase", None)
        leader = cluster.wait_leader(60)
        with Client(cluster.endpoints, timeout=3) as c:
            workload.final(c, history)
            # Witnesses hold no data to compare (and serve no range).
            members = {m.id: m.address for m in c.members().members if not m.witness}
        history.close_open()
        ops = history.ops()
        res.operations = sum(1 for o in ops if o.process != "final")
        res.reads_ok, res.read_nodes = _reads(ops)
        res.verdicts = workload.check(ops)
        res.verdicts.append(check_members_agree(members, leader.id))
        if nemesis.probes:
            res.verdicts.append(check_corruption_probes(nemesis.probes))
    except Exception as e:  # noqa: BLE001 - the run's failure is its verdict, reported with the rest
        res.error = f"{type(e).__name__}: {e}"
    finally:
        try:
            workload.stop()
        except Exception as e:  # noqa: BLE001 - a run whose workload lives on failed, but the matrix goes on
            res.error = res.error or f"{type(e).__name__}: {e}"
        if nemesis is not None:
            nemesis.stop()
            nemesis.close()
            res.faults = nemesis.fault_count
            res.faults_injected = nemesis.injected
            res.injection_errors = len(nemesis.errors)
            for w in nemesis.windows:
                res.fault_kinds[w.kind] = res.fault_kinds.get(w.kind, 0) + 1
            if nemesis.errors:
                res.fault_kinds["injection_errors"] = len(nemesis.errors)
        if cluster is not None:
            if res.error or any(v.valid is not True for v in res.verdicts):
                _record_failure(cluster, out)
            cluster.stop_all()
        if disks is not None:
            disks.teardown()
        topo.teardown()
        history.close_open()
        res.seconds = time.monotonic() - started
        history.write(out / "history.jsonl")
        write_report(res, history, nemesis.windows if nemesis else [], out)
        if nemesis is not None and nemesis.errors:
            (out / "nemesis-errors.txt").write_text("\n".join(nemesis.errors) + "\n")
    return res


def _record_failure(cluster: Cluster, out: Path) -> None:
    """Before a failed run's nodes stop: what each node answers now (or, for a silent one, what a fresh
    process gets from it) into `at-failure.txt`, and every node's thread stacks into its log."""
    try:
        (out / "at-failure.txt").write_text(cluster.statuses().replace("; ", "\n") + "\n")
    except Exception as e:  # noqa: BLE001 - a record of the failure must not hide the failure
        (out / "at-failure.txt").write_text(f"could not ask the nodes: {e!r}\n")
    cluster.dump_stacks()


def _reads(ops: list[Op]) -> tuple[int, list[int]]:
    """Successful reads by the clients during the run, and the members that served them."""
    reads = [o for o in ops if o.f == "read" and o.ok and o.process not in ("final", "setup")]
    return len(reads), sorted({o.node for o in reads if o.node is not None})


def _setup(workload: Any, cluster: Cluster, timeout: float = 30.0) -> None:
    """The initial state, retried while nodes are still coming up (set-up writes are idempotent)."""
    deadline = time.monotonic() + timeout
    with Client(cluster.endpoints, timeout=5) as c:
        while True:
            try:
                workload.setup(c)
                return
            except RaftKVError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _drive(cfg: RunConfig, cluster: Cluster, workload: Any, nemesis: Nemesis, history: History) -> None:
    stop = threading.Event()
    endpoints = cluster.endpoints
    errors: list[str] = []

    def worker(p: int) -> None:
        rng = random.Random(f"{cfg.seed}-{p}")
        with Client(endpoints, timeout=cfg.op_timeout, **workload.client_options) as client:
            while not stop.is_set():
                try:
                    workload.step(p, client, history, rng, endpoints)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"worker {p}: {type(e).__name__}: {e}")
                    return
                time.sleep(workload.pause_s)

    threads = [threading.Thread(target=worker, args=(p,), name=f"worker-{p}", daemon=True)
               for p in range(workload.workers)]
    for t in threads:
        t.start()
    nemesis.start()
    stop.wait(cfg.time_limit)
    nemesis.stop()
    nemesis.heal_all()
    # Let the clients run a little on the healed cluster, then stop them.
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(cfg.op_timeout * 8 + 10)
    if errors:
        raise RuntimeError("; ".join(errors[:3]))


def write_matrix_summary(results: list[RunResult], out_root: Path) -> str:
    rows = [r.summary() for r in results]
    (out_root / "matrix.json").write_text(json.dumps(rows, indent=2, default=repr))
    from .report import matrix_table

    text = matrix_table(results)
    (out_root / "matrix.txt").write_text(text)
    return text
