"""`kv` verbs for operating a cluster rather than using it: `kv dev` (drive the `raftkv dev` supervisor),
`kv snapshot save|status` (backups), `kv check hash` and `kv alarm list|disarm` (divergence checks).

Registered on the `kv` group by `register(main)`; `kv snapshot` with no subcommand keeps its old meaning
(snapshot and compact the first endpoint's log)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import click

from .kv_args import EXIT_BAD_USAGE, NODE_ID, fail

DEV_SOCKET = "control.sock"


def dev_call(data: str, line: str, timeout: float = 30.0) -> dict[str, Any]:
    """One line to the `raftkv dev` supervisor of folder `data` (raftkv/cli/dev_cluster.py), its JSON answer."""
    path = Path(data).resolve() / DEV_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            fail(f"no `raftkv dev` runs with --data {data} (no {path}); start one, or pass its --data")
        except OSError as e:
            fail(f"cannot reach the `raftkv dev` supervisor at {path}: {e.strerror or e}")
        s.sendall(line.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        reply: dict[str, Any] = json.loads(buf)
    except ValueError:
        fail(f"the `raftkv dev` supervisor at {path} gave no answer")
    if not reply.get("ok"):
        fail(str(reply.get("error", "refused")))
    return reply


def _dev_option(f: Any) -> Any:
    return click.option("--data", "data", default="dev-cluster", show_default=True,
                        help="The folder `raftkv dev --data` was given.")(f)


@click.group()
def dev() -> None:
    """Drive a running `raftkv dev` cluster: kill, stop or restart a node, to watch a failover."""


def _show_node(out: str, v: dict[str, Any]) -> None:
    if out == "json":
        click.echo(json.dumps(v))
        return
    last = v["last_exit"] if v["last_exit"] is not None else "-"
    extra = f", restart in {v['restart_in_seconds']}s" if "restart_in_seconds" in v else ""
    click.echo(f"node {v['id']}: {v['state']}, pid {v['pid'] or '-'}, last exit {last}, "
               f"restarts in the last hour {v['restarts_last_hour']}{extra}")


def _verb(verb: str, doc: str) -> None:
    @dev.command(name=verb, help=doc)
    @click.argument("node_id", type=NODE_ID)
    @_dev_option
    @click.pass_context
    def cmd(ctx: click.Context, node_id: int, data: str) -> None:
        _show_node(_out(ctx), dev_call(data, f"{verb} {node_id}")["node"])


_verb("kill", "SIGKILL node NODE_ID; it stays down (no automatic restart) until `kv dev restart`.")
_verb("stop", "SIGTERM node NODE_ID (a clean stop); it stays down until `kv dev restart`.")
_verb("restart", "Start node NODE_ID again now (after kill, stop, a refusal or giving up).")


@dev.command(name="status")
@_dev_option
@click.pass_context
def dev_status(ctx: click.Context, data: str) -> None:
    """Every node of the dev cluster: state, pid, last exit code, restarts in the last hour."""
    nodes = dev_call(data, "status")["nodes"]
    if _out(ctx) == "json":
        click.echo(json.dumps(nodes))
        return
    for v in nodes:
        _show_node("simple", v)


def _out(ctx: click.Context) -> str:
    obj = ctx.find_root().obj
    return getattr(obj, "out", "simple")


# ---------------------------------------------------------------------------------------------- backups
def _maint(ctx: click.Context) -> Any:
    """A MaintenanceClient with the global flags of `kv` (endpoints, timeouts, TLS)."""
    from ..client.maintenance import MaintenanceClient
    from ..tls import TlsError, TlsFiles

    c = ctx.find_root().obj
    try:
        tls = TlsFiles(*c.tls) if any(c.tls) else None
        return MaintenanceClient(c.endpoints, timeout=c.command_timeout, tls=tls,
                                 connect_timeout=min(c.dial_timeout, c.command_timeout))
    except TlsError as e:
        fail(str(e), EXIT_BAD_USAGE)


def _run(fn: Any) -> Any:
    from ..client import RaftKVError

    try:
        return fn()
    except RaftKVError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _summary_lines(s: Any, path: str) -> list[str]:
    h = s.header
    return [f"file: {path}", f"revision: {h.revision}", f"keys: {s.keys}", f"records: {s.records}",
            f"size: {s.size} bytes", f"sha256: {s.sha256}", f"cluster id: {h.cluster_id.hex() or 'none'}",
            f"members: {', '.join(f'{i}={a}' for i, a in sorted(s.members.items())) or '-'} "
            f"(voters {','.join(map(str, h.voters))}{'; learners ' + ','.join(map(str, h.learners)) if h.learners else ''})",
            f"taken from: node {h.node}"]


def _summary_json(s: Any, path: str) -> str:
    h = s.header
    return json.dumps({"file": path, "revision": h.revision, "keys": s.keys, "records": s.records, "size": s.size,
                       "sha256": s.sha256, "cluster_id": h.cluster_id.hex(), "voters": h.voters,
                       "learners": h.learners, "members": {str(i): a for i, a in s.members.items()},
                       "node": h.node, "created_unix": h.created_unix})


def save(ctx: click.Context, file: str) -> None:
    """Stream a point-in-time backup of the first endpoint's state machine into FILE (any member serves
    one; writes go on meanwhile). FILE appears only once the whole stream checked out."""
    import sys
    import time

    client = _maint(ctx)
    live = sys.stderr.isatty()
    started = time.monotonic()

    def progress(got: int, estimate: int, revision: int) -> None:
        if live:
            of = f" of ~{estimate / 1e6:.1f} MB" if estimate else ""
            click.echo(f"\rsaving revision {revision}: {got / 1e6:.1f} MB{of}", nl=False, err=True)

    try:
        s = _run(lambda: client.save_snapshot(file, progress=progress,
                                              timeout=max(ctx.find_root().obj.command_timeout, 3600.0)))
    finally:
        client.close()
        if live:
            click.echo("", err=True)
    if _out(ctx) == "json":
        click.echo(_summary_json(s, file))
        return
    click.echo(f"Snapshot saved at {file}: revision {s.header.revision}, {s.keys} keys, {s.size} bytes, "
               f"sha256 {s.sha256} ({time.monotonic() - started:.1f}s)")


def status(ctx: click.Context, file: str) -> None:
    """Verify FILE (its SHA-256 and every piece's checksum) and print what it holds."""
    from ..backup_file import BackupError, summarize

    try:
        s = summarize(file)
    except BackupError as e:
        fail(str(e))
    if _out(ctx) == "json":
        click.echo(_summary_json(s, file))
    else:
        click.echo("\n".join(_summary_lines(s, file)))


# ---------------------------------------------------------------------------------------------- checks
@click.group()
def check() -> None:
    """Checks of the cluster's health (etcdctl's `check`)."""


@check.command(name="hash")
@click.pass_context
def check_hash(ctx: click.Context) -> None:
    """Compare every member's state-machine hash at one revision (committed through the log, so all hash
    the same one). A member that differs raises the CORRUPT alarm: writes stop until an operator acts.
    Exit 0: all members answered and agree; 1: a member differs or did not answer."""
    client = _maint(ctx)
    try:
        r = _run(lambda: client.check_hash(timeout=max(ctx.find_root().obj.command_timeout, 30.0)))
    finally:
        client.close()
    if _out(ctx) == "json":
        from google.protobuf.json_format import MessageToDict

        click.echo(json.dumps(MessageToDict(r, preserving_proto_field_name=True)))
    else:
        click.echo(f"revision {r.revision} (leader {r.leader_id})")
        for m in r.members:
            state = "ok" if m.matches else ("DIFFERS" if m.hash else "no answer")
            detail = m.error if not m.hash else f"{m.hash.hex()}  {m.keys} keys"
            click.echo(f"  node {m.member_id} {m.address}: {state}  {detail}")
    if r.corrupt:
        bad = ", ".join(str(m.member_id) for m in r.members if m.hash and not m.matches)
        fail(f"node(s) {bad} differ at revision {r.revision}: the CORRUPT alarm is raised and writes are refused "
             "(docs/runbooks/corruption-alarm.md)")
    missing = [str(m.member_id) for m in r.members if not m.hash]
    if missing:
        fail(f"node(s) {', '.join(missing)} gave no hash at revision {r.revision}: the check is incomplete")


@click.group()
def alarm() -> None:
    """Alarms that stop writes: CORRUPT (a member's state machine differs) and NOSPACE (a disk is full)."""


def _print_alarms(ctx: click.Context, alarms: list[Any]) -> None:
    if _out(ctx) == "json":
        click.echo(json.dumps([{"type": a.type, "member_id": a.member_id, "revision": a.revision,
                                "message": a.message} for a in alarms]))
        return
    for a in alarms:
        click.echo(f"memberID:{a.member_id} alarm:{a.type}  {a.message}")


@alarm.command(name="list")
@click.pass_context
def alarm_list(ctx: click.Context) -> None:
    """Every alarm: the cluster's CORRUPT alarms and each endpoint's own NOSPACE alarm."""
    from ..client import RaftKVError

    client = _maint(ctx)
    seen: dict[tuple[str, int], Any] = {}
    answered = 0
    last = ""
    try:
        for ep in [e.strip() for e in ctx.find_root().obj.endpoints.split(",") if e.strip()]:
            try:
                r = client.alarms(endpoint=ep)
            except RaftKVError as e:
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
                continue
            answered += 1
            for a in r.alarms:
                seen.setdefault((a.type, a.member_id), a)
    finally:
        client.close()
    if not answered:
        fail(f"no endpoint answered ({ctx.find_root().obj.endpoints}); last: {last}")
    _print_alarms(ctx, [seen[k] for k in sorted(seen)])


@alarm.command(name="disarm")
@click.option("--member", "member", type=NODE_ID, default=None, help="Only this member's alarm (default: all).")
@click.pass_context
def alarm_disarm(ctx: click.Context, member: int | None) -> None:
    """Disarm the CORRUPT alarm (committed through the log) once the member it names was replaced; writes
    are taken again. Prints the alarms that remain."""
    client = _maint(ctx)
    try:
        r = _run(lambda: client.disarm("CORRUPT", member or 0))
    finally:
        client.close()
    _print_alarms(ctx, list(r.alarms))


def register(main: click.Group) -> None:
    """Add this module's verbs to the `kv` group (`kv snapshot` is defined in kv.py, a group here)."""
    main.add_command(dev)
    existing = main.commands.get("check")  # `kv check perf` (kv_ops.py) shares the group
    if isinstance(existing, click.Group):
        existing.add_command(check_hash)
    else:
        main.add_command(check)
    main.add_command(alarm)
    snap = main.commands.get("snapshot")
    if isinstance(snap, click.Group):
        file_arg = click.argument("file", type=click.Path(dir_okay=False))
        snap.command(name="save")(click.pass_context(file_arg(save)))
        snap.command(name="status")(click.pass_context(file_arg(status)))


__all__ = ["EXIT_BAD_USAGE", "register"]
