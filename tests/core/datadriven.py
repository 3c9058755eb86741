"""Datadriven scenarios of the core, in the style of etcd-io/raft's testdata/: each file is a list of cases,

    # what this step shows (comment lines belong to the case below them)
    command arg arg key=value
    ----
    the output the command produced: every Ready handled, every message delivered or lost
    (blank line ends a case)

A command's output is what the cluster did while it ran (see harness.describe_ready and
describe_message), or `ok` when it did nothing visible. Running a file compares each output with the
expected one under `----`; run with `--rewrite` (pytest) or RAFTKV_REWRITE=1 to write the actual outputs
back into the file instead, then read the diff. `expect ...` commands are assertions and fail the
scenario even when rewriting: the printed output records what happened, `expect` says what must.

Every command has its own handler below (`@command("name")`); scenarios/README.md lists them.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.core import ConfChange, ConfChangeType, EntryType, Message, StateRole

from .harness import Net, describe_message

ROLE_NAMES = {
    "leader": StateRole.LEADER,
    "follower": StateRole.FOLLOWER,
    "candidate": StateRole.CANDIDATE,
    "pre-candidate": StateRole.PRE_CANDIDATE,
}

SEPARATOR = "----"


# ------------------------------------------------------------------------------------------------
# The file format
# ------------------------------------------------------------------------------------------------

@dataclass
class Case:
    comments: list[str]
    command: str
    lineno: int
    expected: list[str] | None = None  # None: the file has no output for it yet


def parse(text: str) -> tuple[list[Case], list[str]]:
    """The cases of a scenario file, and the comment lines after the last one."""
    cases: list[Case] = []
    comments: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            comments.append(line)
            continue
        case = Case(comments, line.strip(), i)
        comments = []
        if i < len(lines) and lines[i].strip() == SEPARATOR:
            i += 1
            case.expected = []
            while i < len(lines) and lines[i].strip():
                case.expected.append(lines[i])
                i += 1
        cases.append(case)
    return cases, comments


def render(cases: list[Case], outputs: list[list[str]], trailing: list[str]) -> str:
    blocks = ["\n".join([*c.comments, c.command, SEPARATOR, *out]) for c, out in zip(cases, outputs, strict=True)]
    if trailing:
        blocks.append("\n".join(trailing))
    return "\n\n".join(blocks) + "\n"


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------

@dataclass
class Env:
    net: Net | None = None
    out: list[str] = field(default_factory=list)
    cfg: dict[str, object] = field(default_factory=dict)

    @property
    def cluster(self) -> Net:
        if self.net is None:
            raise ScenarioError("no cluster yet: start with `cluster N`")
        return self.net

    def ids(self, spec: str) -> list[int]:
        return sorted(self.cluster.nodes) if spec == "*" else [int(x) for x in spec.split(",")]


class ScenarioError(AssertionError):
    """A command that cannot run, or an expectation that does not hold."""


Handler = Callable[[Env, list[str], dict[str, str]], None]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn
    return register


def _value(v: str) -> object:
    return {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)


@command("cluster")
def _cluster(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """cluster N [learner-ids] [witnesses=IDS] [option=value ...]: voters 1..N (and learners; the voters
    named by `witnesses` hold no data), Config options as given."""
    learners = [int(x) for x in args[1].split(",")] if len(args) > 1 else []
    witnesses = [int(x) for x in opts.pop("witnesses", "").split(",") if x]
    cfg = dict(env.cfg) | {k: _value(v) for k, v in opts.items()}
    env.net = Net(list(range(1, int(args[0]) + 1)), learners, witnesses=witnesses, **cfg)


@command("add-node")
def _add_node(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """add-node ID: a brand-new empty node, to be added by a membership change."""
    env.cluster.add_node(int(args[0]))


@command("campaign")
def _campaign(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.cluster.node(int(args[0])).campaign()
    env.cluster.process_all()


@command("propose")
def _propose(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.out.append(f"index {env.cluster.node(int(args[0])).propose(args[1].encode())}")
    env.cluster.process_all()


_CONF_KINDS = {"add": ConfChangeType.ADD_VOTER, "remove": ConfChangeType.REMOVE_NODE,
               "learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.PROMOTE_LEARNER,
               "witness": ConfChangeType.ADD_WITNESS}


@command("conf-change")
def _conf_change(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """conf-change LEADER add|remove|learner|promote ID"""
    index = env.cluster.node(int(args[0])).propose_conf_change(ConfChange(_CONF_KINDS[args[1]], int(args[2])))
    env.out.append(f"index {index}")
    env.cluster.process_all()


@command("transfer")
def _transfer(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.cluster.node(int(args[0])).transfer_leader(int(args[1]))
    env.cluster.process_all()


@command("read-index")
def _read_index(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.cluster.node(int(args[0])).read_index(args[1].encode())
    env.cluster.process_all()


@command("tick")
def _tick(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """tick IDS [N]: N ticks (default 1) on each node named, handling their Readys; nothing delivered."""
    for nid in env.ids(args[0]):
        env.cluster.tick(nid, int(args[1]) if len(args) > 1 else 1)
    env.cluster.process_all()


@command("tick-all")
def _tick_all(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """tick-all N: N times, tick every node once, then stabilize."""
    env.cluster.tick_all(int(args[0]))


@command("stabilize")
def _stabilize(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """Handle Readys and deliver messages until nothing moves."""
    env.cluster.stabilize()


@command("deliver")
def _deliver(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """deliver FROM TO [max-index=N]: the messages queued on one link (after handling pending Readys).
    With max-index, entries past N are cut from them on the way, as if the sender had crashed before
    sending the rest."""
    keep = None
    if "max-index" in opts:
        limit = int(opts["max-index"])

        def keep(m: Message) -> bool:
            m.entries = [e for e in m.entries if e.index <= limit]
            return True

    env.cluster.deliver(int(args[0]), int(args[1]), keep=keep)


@command("drop")
def _drop(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """drop FROM TO | drop *: lose the messages queued on one link (or all), after handling Readys."""
    net = env.cluster
    net.process_all()
    frm, to = (None, None) if args[0] == "*" else (int(args[0]), int(args[1]))
    gone = [m for m in net.queue if frm is None or (m.frm == frm and m.to == to)]
    net.queue = [m for m in net.queue if m not in gone]
    if net.trace is not None:
        net.trace.extend(f"> lost: {describe_message(m)}" for m in gone)


@command("isolate")
def _isolate(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.cluster.isolate(int(args[0]))


@command("partition")
def _partition(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """partition 1,2 3,4,5: cut every link between the groups."""
    env.cluster.partition(*[[int(x) for x in g.split(",")] for g in args])


@command("heal")
def _heal(env: Env, args: list[str], opts: dict[str, str]) -> None:
    env.cluster.heal()


@command("hold")
def _hold(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """hold ID: the node's next Ready is handed over as a host does while its fsync runs: the messages
    that may leave before persisting leave, the rest of the Ready waits for `persist ID`. Meanwhile the
    node is stepped as usual (a leader hears its followers' acknowledgements) but has no other Ready."""
    env.cluster.nodes[int(args[0])].hold_next = True


@command("persist")
def _persist(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """persist ID: the held Ready became durable: written, its persisted messages sent, advanced."""
    env.cluster.persist(int(args[0]))
    env.cluster.process_all()


@command("crash")
def _crash(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """crash ID: restart the node from its storage; messages to and from it in flight are lost."""
    env.cluster.crash(int(args[0]))


@command("raft-log")
def _raft_log(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """raft-log IDS: each node's commit index and log (term/index, and the data of normal entries)."""
    for nid in env.ids(args[0]):
        log = env.cluster.node(nid).raft_log
        ents = [f"{e.term}/{e.index}" + (f" {e.data.decode(errors='replace')!r}" if e.data and e.type == EntryType.NORMAL
                                          else "") for e in log.entries(log.first_index())]
        env.out.append(f"{nid}: commit={log.committed} {', '.join(ents) or '(empty)'}")


@command("raft-state")
def _raft_state(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """raft-state [IDS]: role, term, vote, leader and commit index of each node."""
    for nid in env.ids(args[0] if args else "*"):
        n = env.cluster.node(nid)
        hs = n.hard_state()
        env.out.append(f"{nid}: {n.role.name.lower().replace('_', '-')} term={n.term} vote={hs.vote} leader={n.leader_id} "
                       f"commit={hs.commit}")


@command("expect")
def _expect(env: Env, args: list[str], opts: dict[str, str]) -> None:
    """expect WHAT IDS VALUE...: an assertion on each node named (see the branches for WHAT)."""
    net = env.cluster
    what, want = args[0], args[2:]
    for nid in env.ids(args[1]):
        n = net.node(nid)
        if what == "role":
            got: object = n.role
            exp: object = ROLE_NAMES[want[0]]
        elif what == "term":
            got, exp = n.term, int(want[0])
        elif what == "commit":
            got, exp = n.raft_log.committed, int(want[0])
        elif what == "leader":
            got, exp = n.leader_id, int(want[0])
        elif what == "last-index":
            got, exp = n.raft_log.last_index(), int(want[0])
        elif what == "log":  # index:term pairs
            got = net.log_terms(nid)
            exp = [tuple(int(x) for x in p.split(":")) for p in want]
        elif what == "applied":
            got = [e.data.decode() for e in net.nodes[nid].applied if e.data and e.type == EntryType.NORMAL]
            exp = want
        elif what == "voters":
            got = sorted(n.conf.voters)
            exp = [int(x) for x in want[0].split(",")] if want else []
        elif what == "learners":
            got = sorted(n.conf.learners)
            exp = [int(x) for x in want[0].split(",")] if want else []
        elif what == "payloads":  # the payloads of the normal entries stored on the node
            got = [e.data.decode() for e in net.nodes[nid].storage.entries_[1:] if e.type == EntryType.NORMAL
                   and e.data]
            exp = want
        elif what == "read-states":
            got = [(rs.index, rs.context.decode()) for rs in net.nodes[nid].read_states]
            exp = [(int(p.split(":")[0]), p.split(":")[1]) for p in want]
        elif what == "removed-at":  # index of the configuration a leader said this node is not in (0: none)
            got, exp = n.removed_at(), int(want[0])
        elif what == "lease-held":  # the lease's conditions that need no clock
            got, exp = n.lease_held(), want[0] == "yes"
        elif what == "confirmed-round":  # term:number:commit of the newest confirmed round, or none
            cr = n.confirmed_round()
            got = "none" if cr is None else f"{cr.term}:{cr.number}:{cr.commit}"
            exp = want[0]
        elif what == "round-sent":  # term:number of the newest round a Ready reported sent, or none
            sent = net.nodes[nid].rounds_sent
            got = f"{sent[-1][0]}:{sent[-1][1]}" if sent else "none"
            exp = want[0]
        else:
            raise ScenarioError(f"unknown expectation {what}")
        if got != exp:
            if what == "role":
                got, exp = got.name.lower(), exp.name.lower()  # type: ignore[attr-defined]
            raise ScenarioError(f"node {nid} {what} is {got}, expected {exp}")


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------

def _quiet_summary(trace: list[str]) -> str:
    readys = sum(1 for line in trace if line.endswith(" handling Ready"))
    lost = sum(1 for line in trace if line.startswith("> lost:"))
    delivered, receiving = 0, False
    for line in trace:
        if line.startswith(">"):
            receiving = line.endswith(" receiving messages")
        elif receiving:
            delivered += 1
    return f"ok (quiet: {readys} Readys, {delivered} messages delivered, {lost} lost)"


def run_case(env: Env, case: Case) -> list[str]:
    """Run one command; its output lines (never empty)."""
    words = shlex.split(case.command.split("#", 1)[0])
    name, rest = words[0], words[1:]
    quiet = "quiet" in rest
    args = [w for w in rest if "=" not in w and w != "quiet"]
    opts = dict(w.split("=", 1) for w in rest if "=" in w)
    handler = COMMANDS.get(name)
    if handler is None:
        raise ScenarioError(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    trace: list[str] = []
    if env.net is not None:
        env.net.trace = trace
    env.out = []
    handler(env, args, opts)
    if env.net is not None:
        env.net.trace = None
    if quiet:
        return [_quiet_summary(trace), *env.out]
    return [*trace, *env.out] or ["ok"]


def run_file(path: Path, rewrite: bool = False, **cfg: object) -> None:
    """Run a scenario file: compare each case's output with the file's, or (rewrite) write them back.
    A failed `expect` or a command that cannot run fails in both modes, naming the file and line."""
    cases, trailing = parse(path.read_text())
    env = Env(cfg=dict(cfg))
    outputs: list[list[str]] = []
    for case in cases:
        where = f"{path.name}:{case.lineno}: {case.command}"
        try:
            out = run_case(env, case)
        except ScenarioError as e:
            raise ScenarioError(f"{where}: {e}") from None
        outputs.append(out)
        if not rewrite:
            if case.expected is None:
                raise ScenarioError(f"{where}: no expected output in the file; run with --rewrite")
            if out != case.expected:
                diff = "\n".join(difflib.unified_diff(case.expected, out, "expected", "actual", lineterm=""))
                raise ScenarioError(f"{where}: output differs (run with --rewrite to accept it):\n{diff}")
    if rewrite:
        path.write_text(render(cases, outputs, trailing))
