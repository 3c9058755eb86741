"""`kv`: the raftkv command-line client, in the manner of etcdctl.

Global flags: --endpoints (env KV_ENDPOINTS; the flag wins), --dial-timeout, --command-timeout,
--cacert/--cert/--key (TLS), -w/--write-out simple|json|table; they may stand before or after the
command. Errors print one line `Error: ...` on stderr and exit non-zero."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

EXIT_ERROR = 1
EXIT_BAD_USAGE = 2


class Ctx:
    def __init__(self, endpoints: str, dial_timeout: float, command_timeout: float, out: str,
                 tls: tuple[str, str, str] = ("", "", "")) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self.dial_timeout = dial_timeout
        self.command_timeout = command_timeout
        self.out = out
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from ..client import Client
            from ..tls import TlsError, TlsFiles

            try:
                tls = TlsFiles(*self.tls) if any(self.tls) else None
                self._client = Client(self.endpoints, timeout=self.command_timeout, tls=tls)
                if tls is not None:
                    tls.channel_credentials()  # unreadable files fail here, in one line
            except TlsError as e:
                fail(str(e), EXIT_BAD_USAGE)
        return self._client


def fail(msg: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(code)


def run(fn: Callable[[], Any]) -> Any:
    """Call the client; any error becomes one line on stderr and a non-zero exit."""
    from ..client import RaftKVError

    try:
        return fn()
    except RaftKVError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except ValueError as e:
        fail(str(e), EXIT_BAD_USAGE)


def text(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def token_text(tok: bytes) -> str:
    return base64.urlsafe_b64encode(tok).decode().rstrip("=")


def token_bytes(s: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (ValueError, TypeError):
        fail("--session-token is not a token printed by kv", EXIT_BAD_USAGE)
        raise


def to_json(msg: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    for r in rows:
        out.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |")
    out.append(line)
    return "\n".join(out)


pass_ctx = click.make_pass_decorator(Ctx)

GLOBAL_FLAGS_WITH_VALUE = frozenset({"--endpoints", "--dial-timeout", "--command-timeout", "-w", "-o", "--write-out",
                                     "--cacert", "--cert", "--key"})


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move global flags given after the command to the front, as etcdctl accepts them anywhere
    (`kv status -w table`). Nothing after `--` is touched."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg.split("=", 1)[0] in GLOBAL_FLAGS_WITH_VALUE:
            if "=" in arg or i + 1 == len(args):
                front.append(arg)
            else:
                front += [arg, args[i + 1]]
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


class KvGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_flags(args))


@click.group(cls=KvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", envvar="KV_ENDPOINTS", default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
              show_default=True, help="Comma-separated node addresses (env KV_ENDPOINTS).")
@click.option("--dial-timeout", type=float, default=2.0, show_default=True, help="Seconds to connect.")
@click.option("--command-timeout", type=float, default=5.0, show_default=True, help="Seconds per command.")
@click.option("-w", "--write-out", "-o", "out", type=click.Choice(["simple", "json", "table"]), default="simple",
              show_default=True, help="Output format.")
@click.option("--cacert", envvar="KV_CACERT", default="", help="Verify TLS nodes with this PEM CA (env KV_CACERT).")
@click.option("--cert", envvar="KV_CERT", default="", help="Client certificate, PEM (env KV_CERT).")
@click.option("--key", envvar="KV_KEY", default="", help="Key of --cert, PEM (env KV_KEY).")
@click.pass_context
def main(ctx: click.Context, endpoints: str, dial_timeout: float, command_timeout: float, out: str, cacert: str,
         cert: str, key: str) -> None:
    """kv: talk to a raftkv cluster."""
    if not endpoints.strip():
        fail("--endpoints is empty", EXIT_BAD_USAGE)
    ctx.obj = Ctx(endpoints, dial_timeout, command_timeout, out, (cacert, cert, key))


def write_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--ack", type=click.Choice(["default", "leader", "majority", "semi_sync", "sync"]),
                     default="default", help="How durable before the reply (leader = async: can be lost).")(f)
    f = click.option("--min-replicas", type=int, default=0, help="semi_sync: replicas to wait for.")(f)
    f = click.option("--timeout-ms", type=int, default=0, help="semi_sync wait / sync deadline (ms).")(f)
    return f


def read_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--consistency", type=click.Choice(["linearizable", "lease", "serializable", "eventual",
                                                         "bounded_staleness", "session"]),
                     default="linearizable", show_default=True)(f)
    f = click.option("--max-staleness-ms", type=int, help="bounded_staleness: how old the data may be.")(f)
    f = click.option("--max-lag-entries", type=int, help="bounded_staleness: how many entries behind.")(f)
    f = click.option("--strict", is_flag=True, help="bounded_staleness: fail instead of forwarding.")(f)
    f = click.option("--session-token", help="session: a token printed by an earlier command (--print-token).")(f)
    f = click.option("--print-token", is_flag=True, help="Also print the reply's session token.")(f)
    return f


def _write_meta_lines(meta: Any) -> list[str]:
    from ..proto.stubs import kv_pb2 as pb

    ack = pb.Ack.Name(meta.ack_achieved).removeprefix("ACK_").lower()
    lines = [f"OK (index {meta.index}, term {meta.term}, ack {ack}"
             + (", DEGRADED" if meta.degraded else "")
             + f", confirmed by {','.join(map(str, meta.confirmed_by)) or '-'}"
             + f", {meta.commit_latency_us / 1000:.1f} ms)"]
    if meta.may_be_lost or meta.ack_achieved == pb.ACK_LEADER:
        lines.append("warning: acknowledged before commit (ack=leader); it is lost if the leader fails first")
    return lines


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--prev-kv", is_flag=True, help="Print the previous value.")
@click.option("--print-token", is_flag=True, help="Print the session token of this write.")
@write_options
@pass_ctx
def put(c: Ctx, key: str, value: str, prev_kv: bool, print_token: bool, ack: str, min_replicas: int,
        timeout_ms: int) -> None:
    """Put KEY VALUE."""
    r = run(lambda: c.client.put(key, value, ack=ack, min_replicas=min_replicas, timeout_ms=timeout_ms,
                                 prev_kv=prev_kv))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
        return
    for line in _write_meta_lines(r.meta):
        click.echo(line, err=line.startswith("warning"))
    if prev_kv and r.has_prev_kv:
        click.echo(text(r.prev_kv.key))
        click.echo(text(r.prev_kv.value))
    if print_token:
        _print_token(c, r.meta.session_token)


def _print_token(c: Ctx, token: bytes) -> None:
    """The reply's session token, for a later `--consistency session --session-token ...` (on stderr with
    -w json, so stdout stays one JSON document)."""
    click.echo(f"session-token: {token_text(token)}", err=c.out == "json")


def _read_kwargs(consistency: str, max_staleness_ms: int | None, max_lag_entries: int | None, strict: bool,
                 session_token: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"consistency": consistency}
    if consistency == "bounded_staleness":
        if max_staleness_ms is None and max_lag_entries is None:
            fail("bounded_staleness needs --max-staleness-ms and/or --max-lag-entries", EXIT_BAD_USAGE)
        kw.update(max_staleness_ms=max_staleness_ms, max_lag_entries=max_lag_entries, strict=strict)
    if consistency == "session":
        if not session_token:
            fail("session consistency needs --session-token (print one with --print-token)", EXIT_BAD_USAGE)
        kw["session_token"] = token_bytes(session_token)
    return kw


def _print_kvs(c: Ctx, kvs: list[Any], reply: Any, keys_only: bool = False) -> None:
    if c.out == "json":
        click.echo(json.dumps(to_json(reply)))
    elif c.out == "table":
        click.echo(table(["key", "value", "create", "mod", "version"],
                         [[text(kv.key), text(kv.value), kv.create_revision, kv.mod_revision, kv.version]
                          for kv in kvs]))
    else:
        for kv in kvs:
            click.echo(text(kv.key))
            if not keys_only:
                click.echo(text(kv.value))


@main.command()
@click.argument("key")
@read_options
@pass_ctx
def get(c: Ctx, key: str, consistency: str, max_staleness_ms: int | None, max_lag_entries: int | None,
        strict: bool, session_token: str | None, print_token: bool) -> None:
    """Get KEY (prints KEY and VALUE; nothing if absent)."""
    kw = _read_kwargs(consistency, max_staleness_ms, max_lag_entries, strict, session_token)
    r = run(lambda: c.client.get(key, **kw))
    _print_kvs(c, [r.kv] if r.found else [], r)
    if print_token:
        _print_token(c, r.meta.session_token)


@main.command(name="range")
@click.argument("key", default="")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key >= KEY.")
@click.option("--limit", type=int, default=0)
@click.option("--keys-only", is_flag=True)
@click.option("--count-only", is_flag=True)
@read_options
@pass_ctx
def range_cmd(c: Ctx, key: str, range_end: str, prefix: bool, from_key: bool, limit: int, keys_only: bool,
              count_only: bool, consistency: str, max_staleness_ms: int | None, max_lag_entries: int | None,
              strict: bool, session_token: str | None, print_token: bool) -> None:
    """Range over keys: KEY [RANGE_END), --prefix, or --from-key."""
    if not key and not from_key and not prefix:
        fail("give a KEY, or --prefix / --from-key", EXIT_BAD_USAGE)
    end = "\0" if from_key else range_end
    if prefix and not key:  # an empty prefix selects every key
        end, prefix = "\0", False
    kw = _read_kwargs(consistency, max_staleness_ms, max_lag_entries, strict, session_token)
    r = run(lambda: c.client.range(key, end, prefix=prefix, limit=limit, keys_only=keys_only,
                                   count_only=count_only, **kw))
    if count_only:
        click.echo(json.dumps(to_json(r)) if c.out == "json" else str(r.count))
    else:
        _print_kvs(c, list(r.kvs), r, keys_only)
    if print_token:
        _print_token(c, r.meta.session_token)


@main.command(name="del")
@click.argument("key")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True)
@click.option("--prev-kv", is_flag=True)
@click.option("--print-token", is_flag=True, help="Print the session token of this write.")
@write_options
@pass_ctx
def delete(c: Ctx, key: str, range_end: str, prefix: bool, prev_kv: bool, print_token: bool, ack: str,
           min_replicas: int, timeout_ms: int) -> None:
    """Delete KEY (or [KEY, RANGE_END), or --prefix); prints how many were deleted."""
    r = run(lambda: c.client.delete(key, range_end, prefix=prefix, prev_kv=prev_kv, ack=ack,
                                    min_replicas=min_replicas, timeout_ms=timeout_ms))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
    else:
        click.echo(str(r.deleted))
        for kv in r.prev_kvs:
            click.echo(text(kv.key))
            click.echo(text(kv.value))
    if print_token:
        _print_token(c, r.meta.session_token)


def _parse_compare(s: str) -> Any:
    """`value(k) = v`, `version(k) > 3`, `create(k) = 0`, `mod(k) < 9`, `exists(k) = 1`."""
    import re

    from ..client import compare

    m = re.fullmatch(r"\s*(value|version|create|mod|exists)\((.+?)\)\s*(=|==|!=|<|>)\s*(.*)\s*", s)
    if not m:
        fail(f"cannot parse compare {s!r}; e.g. 'value(k) = v' or 'version(k) > 2'", EXIT_BAD_USAGE)
        raise SystemExit
    target, key, op, operand = m.groups()
    operand = operand.strip().strip('"')
    if target != "value" and not operand.lstrip("-").isdigit():
        fail(f"{target} compares take a number, not {operand!r}", EXIT_BAD_USAGE)
    return compare(key, target, op, operand)


def _parse_op(s: str) -> Any:
    """`put k v`, `del k`, `get k`."""
    from ..client import op_delete, op_get, op_put

    parts = s.split(None, 2)
    if len(parts) == 3 and parts[0] == "put":
        return op_put(parts[1], parts[2])
    if len(parts) == 2 and parts[0] in ("del", "delete"):
        return op_delete(parts[1])
    if len(parts) == 2 and parts[0] == "get":
        return op_get(parts[1])
    fail(f"cannot parse operation {s!r}; use 'put KEY VALUE', 'del KEY' or 'get KEY'", EXIT_BAD_USAGE)
    raise SystemExit


@main.command()
@click.option("--compare", "compares", multiple=True, help="e.g. 'value(balance) = 1000' (all must hold).")
@click.option("--then", "then_ops", multiple=True, help="Operation if every compare holds: 'put k v', 'del k', 'get k'.")
@click.option("--else", "else_ops", multiple=True, help="Operation otherwise.")
@click.option("--print-token", is_flag=True, help="Print the session token of this transaction.")
@write_options
@pass_ctx
def txn(c: Ctx, compares: tuple[str, ...], then_ops: tuple[str, ...], else_ops: tuple[str, ...], print_token: bool,
        ack: str, min_replicas: int, timeout_ms: int) -> None:
    """An atomic compare-and-swap transaction (prints SUCCESS or FAILURE, then the results)."""
    cmp = [_parse_compare(s) for s in compares]
    ok_ops = [_parse_op(s) for s in then_ops]
    bad_ops = [_parse_op(s) for s in else_ops]
    r = run(lambda: c.client.txn(cmp, ok_ops, bad_ops, ack=ack, min_replicas=min_replicas, timeout_ms=timeout_ms))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
    else:
        click.echo("SUCCESS" if r.succeeded else "FAILURE")
        for resp in r.responses:
            kind = resp.WhichOneof("response")
            if kind == "range":
                for kv in resp.range.kvs:
                    click.echo(text(kv.key))
                    click.echo(text(kv.value))
            elif kind == "put":
                click.echo("OK")
            else:
                click.echo(str(resp.delete.deleted))
    if print_token:
        _print_token(c, r.meta.session_token)


def _status_rows(statuses: list[tuple[str, Any]]) -> list[list[Any]]:
    rows = []
    for ep, s in statuses:
        if s is None:
            rows.append([ep, "-", "unreachable", "-", "-", "-", "-", "-", "-"])
            continue
        leader_lag = {f.id: f for f in s.followers}
        lag = ",".join(f"{f.id}:{f.lag_entries}e/{f.flush_lag_seconds:.2f}s{'!' if f.critical else ''}"
                       for f in leader_lag.values()) or "-"
        rows.append([ep, s.id, s.role, s.term, s.leader_id, s.commit, s.applied, f"{s.db_size_bytes / 1e6:.1f} MB",
                     lag])
    return rows


@main.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Status of every endpoint (like `etcdctl endpoint status`), with replication lag on the leader."""
    from ..client import RaftKVError

    out = []
    for ep in c.endpoints.split(","):
        ep = ep.strip()
        try:
            out.append((ep, c.client.status(endpoint=ep, timeout=c.dial_timeout)))
        except RaftKVError:
            out.append((ep, None))
    if all(s is None for _, s in out):
        fail(f"no endpoint answered ({c.endpoints})")
    if c.out == "json":
        click.echo(json.dumps([{"endpoint": ep, **(to_json(s) if s else {"error": "unreachable"})} for ep, s in out]))
        return
    headers = ["endpoint", "id", "role", "term", "leader", "commit", "applied", "db size", "lag (follower:entries/secs)"]
    rows = _status_rows(out)
    if c.out == "table":
        click.echo(table(headers, rows))
    else:
        for r in rows:
            click.echo(", ".join(str(v) for v in r))
    for ep, s in out:
        if s is not None and s.identity_problem:
            click.echo(f"{ep}: NOT READY: {s.identity_problem}")


def _lag_rows(r: Any) -> list[list[Any]]:
    return [[f.id, "learner" if f.learner else "voter", f.state, f.match, f.lag_entries, f.lag_bytes,
             f"{f.flush_lag_seconds:.3f}", f"{f.replay_lag_seconds:.3f}",
             "-" if f.last_contact_seconds < 0 else f"{f.last_contact_seconds:.2f}", "CRITICAL" if f.critical else "ok"]
            for f in r.followers]


LAG_HEADERS = ["follower", "role", "state", "match", "lag entries", "lag bytes", "flush lag s", "replay lag s",
               "last contact s", "status"]


def _lag_frame(r: Any, watch: bool) -> str:
    lines = []
    if watch:
        lines.append(f"leader {r.leader_id}  commit {r.commit}  last index {r.last_index}  "
                     f"{time.strftime('%H:%M:%S')}  (Ctrl-C to stop)")
    lines.append(table(LAG_HEADERS, _lag_rows(r)))
    return "\n".join(lines)


@main.command()
@click.option("--watch", is_flag=True, help="A live table, refreshed every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=1.0, show_default=True)
@click.option("--count", type=int, default=0, help="With --watch: stop after this many refreshes (0 = forever).")
@pass_ctx
def lag(c: Ctx, watch: bool, interval: float, count: int) -> None:
    """Replication lag of every follower, as the leader sees it."""
    if interval <= 0:
        fail("--interval must be > 0", EXIT_BAD_USAGE)
    if not watch:
        r = run(lambda: c.client.lag())
        click.echo(json.dumps(to_json(r)) if c.out == "json" else _lag_frame(r, False))
        return
    from ..client import RaftKVError

    live = sys.stdout.isatty() and c.out != "json"
    n = 0
    try:
        while True:
            try:
                r = c.client.lag()
                frame = json.dumps(to_json(r)) if c.out == "json" else _lag_frame(r, True)
            except RaftKVError as e:  # an election or a dead node: keep watching, say what happened
                frame = f"{time.strftime('%H:%M:%S')}  no answer: {str(e).splitlines()[0] if str(e) else e!r}"
            # On a terminal the table is redrawn in place; piped output gets one frame after another.
            click.echo(("\x1b[H\x1b[2J" if live else "") + frame)
            n += 1
            if count and n >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@main.group()
def members() -> None:
    """List and change cluster membership."""


def _print_members(c: Ctx, r: Any) -> None:
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
        return
    rows = [[m.id, m.address, "learner" if m.learner else "voter", "sync" if m.sync else "",
             "semi_sync" if m.semi_sync else ""] for m in r.members]
    if c.out == "table":
        click.echo(table(["id", "address", "role", "sync", "semi-sync"], rows))
    else:
        for row in rows:
            click.echo(", ".join(str(v) for v in row if v != ""))


@members.command(name="list")
@pass_ctx
def members_list(c: Ctx) -> None:
    _print_members(c, run(lambda: c.client.members()))


@members.command(name="add")
@click.argument("node_id", type=int)
@click.argument("address")
@click.option("--learner", is_flag=True, help="Add as a learner (replicates, never votes or counts).")
@click.option("--sync", "sync_mark", is_flag=True, help="Count it in the sync set.")
@click.option("--semi-sync", is_flag=True, help="Count it in the semi-sync set.")
@pass_ctx
def members_add(c: Ctx, node_id: int, address: str, learner: bool, sync_mark: bool, semi_sync: bool) -> None:
    """Add NODE_ID at ADDRESS (then start it with `raftkv serve --join`)."""
    _print_members(c, run(lambda: c.client.member_add(node_id, address, learner, sync_mark, semi_sync)))


@members.command(name="remove")
@click.argument("node_id", type=int)
@pass_ctx
def members_remove(c: Ctx, node_id: int) -> None:
    _print_members(c, run(lambda: c.client.member_remove(node_id)))


@members.command(name="promote")
@click.argument("node_id", type=int)
@pass_ctx
def members_promote(c: Ctx, node_id: int) -> None:
    """Make learner NODE_ID a voter."""
    _print_members(c, run(lambda: c.client.member_promote(node_id)))


@members.command(name="update")
@click.argument("node_id", type=int)
@click.option("--address", default="")
@click.option("--sync/--no-sync", "sync_mark", default=None, help="Mark (or unmark) it for the sync set.")
@click.option("--semi-sync/--no-semi-sync", default=None, help="Mark (or unmark) it for the semi-sync set.")
@pass_ctx
def members_update(c: Ctx, node_id: int, address: str, sync_mark: bool | None, semi_sync: bool | None) -> None:
    """Change a member's address or replication marks (a mark not named keeps its value)."""
    _print_members(c, run(lambda: c.client.member_update(node_id, address, sync_mark, semi_sync)))


@main.group()
def leader() -> None:
    """Leadership."""


@leader.command(name="transfer")
@click.argument("node_id", type=int)
@pass_ctx
def leader_transfer(c: Ctx, node_id: int) -> None:
    """Hand leadership to NODE_ID."""
    r = run(lambda: c.client.transfer_leader(node_id))
    click.echo(json.dumps(to_json(r)) if c.out == "json" else f"leader is now {r.leader_id}")


@main.command()
@pass_ctx
def snapshot(c: Ctx) -> None:
    """Snapshot the first endpoint's state machine now and compact its log."""
    ep = c.endpoints.split(",")[0].strip()
    r = run(lambda: c.client.snapshot(endpoint=ep))
    click.echo(json.dumps(to_json(r)) if c.out == "json" else f"snapshot at index {r.index}")


if __name__ == "__main__":
    main()
