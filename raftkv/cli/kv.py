"""`kv`: the raftkv command-line client, in the manner of etcdctl.

Global flags: --endpoints (env KV_ENDPOINTS; the flag wins), --dial-timeout, --command-timeout,
--cacert/--cert/--key (TLS), -w/--write-out simple|json|table, --hex; they may stand before or after
the command. Errors print one line `Error: ...` on stderr and exit non-zero (kv_args: 1 error, 2 usage,
3 outcome unknown)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from .kv_args import (
    EXIT_BAD_USAGE,
    EXIT_ERROR,
    EXIT_OUTCOME_UNKNOWN,
    SECONDS,
    UINT32,
    UINT64,
    KvGroup,
    fail,
    hoist_global_flags,
    show,
    to_bytes,
)
from .kv_pressure import pressure_cell, status_error

__all__ = ["EXIT_BAD_USAGE", "EXIT_ERROR", "EXIT_OUTCOME_UNKNOWN", "hoist_global_flags", "main"]


class Ctx:
    def __init__(self, endpoints: str, dial_timeout: float, command_timeout: float, out: str,
                 tls: tuple[str, str, str] = ("", "", ""), hex_mode: bool = False) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self.dial_timeout = dial_timeout
        self.command_timeout = command_timeout
        self.out = out
        self.hex = hex_mode
        self._client: Any = None

    def b(self, arg: str, what: str = "KEY") -> bytes:
        """A key, value or range end as given on the command line (hex with --hex)."""
        return to_bytes(arg, self.hex, what)

    def show(self, data: bytes) -> str:
        return show(data, self.hex)

    @property
    def client(self) -> Any:
        if self._client is None:
            from ..client import Client
            from ..tls import TlsError, TlsFiles

            try:
                tls = TlsFiles(*self.tls) if any(self.tls) else None
                self._client = Client(self.endpoints, timeout=self.command_timeout, tls=tls,
                                      connect_timeout=min(self.dial_timeout, self.command_timeout), dial_bound=True)
                if tls is not None:
                    tls.channel_credentials()  # unreadable files fail here, in one line
            except TlsError as e:
                fail(str(e), EXIT_BAD_USAGE)
        return self._client


def run(fn: Callable[[], Any]) -> Any:
    """Call the client; any error becomes one line on stderr and a non-zero exit (3: a write whose
    outcome is unknown)."""
    from ..client import OutcomeUnknownError, RaftKVError

    try:
        return fn()
    except OutcomeUnknownError as e:
        fail(str(e).splitlines()[0], EXIT_OUTCOME_UNKNOWN)
    except RaftKVError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except ValueError as e:
        fail(str(e), EXIT_BAD_USAGE)


def token_text(tok: bytes) -> str:
    return base64.urlsafe_b64encode(tok).decode().rstrip("=")


def token_bytes(s: str) -> bytes:
    import binascii

    try:
        tok = base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError, binascii.Error):
        tok = b""
    if not tok:
        fail("--session-token is not a token printed by kv", EXIT_BAD_USAGE)
    return tok


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


@click.group(cls=KvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", envvar="KV_ENDPOINTS", default="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
              show_default=True, help="Comma-separated node addresses (env KV_ENDPOINTS).")
@click.option("--dial-timeout", type=SECONDS, default=2.0, show_default=True,
              help="Seconds to wait for one node's connection before trying the next.")
@click.option("--command-timeout", type=SECONDS, default=5.0, show_default=True, help="Seconds per command.")
@click.option("-w", "--write-out", "-o", "out", type=click.Choice(["simple", "json", "table"]), default="simple",
              show_default=True, help="Output format.")
@click.option("--cacert", envvar="KV_CACERT", default="", help="Verify TLS nodes with this PEM CA (env KV_CACERT).")
@click.option("--cert", envvar="KV_CERT", default="", help="Client certificate, PEM (env KV_CERT).")
@click.option("--key", envvar="KV_KEY", default="", help="Key of --cert, PEM (env KV_KEY).")
@click.option("--hex", "hex_mode", is_flag=True,
              help="Keys, values and range ends are given and printed as hex (for binary data).")
@click.pass_context
def main(ctx: click.Context, endpoints: str, dial_timeout: float, command_timeout: float, out: str, cacert: str,
         cert: str, key: str, hex_mode: bool) -> None:
    """kv: talk to a raftkv cluster.

    Exit codes: 0 done, 1 failed, 2 bad usage, 3 outcome unknown (a write was sent but its answer was
    lost: it may or may not have been applied; read the key back before writing again)."""
    if not endpoints.strip():
        fail("--endpoints is empty", EXIT_BAD_USAGE)
    # gRPC's C core logs each failed TLS handshake on stderr at INFO; kv says it once, in its own words.
    # Read when gRPC is first imported, which is below (lazily); GRPC_VERBOSITY set by the user wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    ctx.obj = Ctx(endpoints, dial_timeout, command_timeout, out, (cacert, cert, key), hex_mode)


def write_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--ack", type=click.Choice(["default", "leader", "majority", "semi_sync", "sync"]),
                     default="default", help="How durable before the reply (leader = async: can be lost).")(f)
    f = click.option("--min-replicas", type=UINT32, default=0, help="semi_sync: replicas to wait for.")(f)
    f = click.option("--timeout-ms", type=UINT32, default=0, help="semi_sync wait / sync deadline (ms).")(f)
    return f


def read_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--consistency", type=click.Choice(["linearizable", "lease", "serializable", "eventual",
                                                         "bounded_staleness", "session"]),
                     default="linearizable", show_default=True)(f)
    f = click.option("--max-staleness-ms", type=UINT32, help="bounded_staleness: how old the data may be.")(f)
    f = click.option("--max-lag-entries", type=UINT64, help="bounded_staleness: how many entries behind.")(f)
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
@click.argument("value", required=False)
@click.option("--prev-kv", is_flag=True, help="Print the previous value.")
@click.option("--print-token", is_flag=True, help="Print the session token of this write.")
@click.option("--lease", type=str, default="0", help="Attach the key to this lease id (hex, as `kv lease grant` prints).")
@click.option("--fence", is_flag=True,
              help="Only while the lock of `kv lock` is still held: $KV_LOCK_KEY must still have create revision "
                   "$KV_LOCK_TOKEN (refused otherwise).")
@write_options
@pass_ctx
def put(c: Ctx, key: str, value: str | None, prev_kv: bool, print_token: bool, ack: str, min_replicas: int,
        timeout_ms: int, lease: str, fence: bool) -> None:
    """Put KEY VALUE. Without VALUE, the value is standard input, byte for byte (with --hex, hex digits)."""
    from .kv_lease import parse_lease_id
    from .kv_lock import fenced_put

    k, v = c.b(key), _value_arg(c, value)
    lid = parse_lease_id(lease) if lease != "0" else 0
    if fence:
        r = fenced_put(c, k, v, lid, run)
    else:
        r = run(lambda: c.client.put(k, v, ack=ack, min_replicas=min_replicas, timeout_ms=timeout_ms,
                                     prev_kv=prev_kv, lease=lid))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
        return
    for line in _write_meta_lines(r.meta):
        click.echo(line, err=line.startswith("warning"))
    if prev_kv and r.has_prev_kv:
        click.echo(c.show(r.prev_kv.key))
        click.echo(c.show(r.prev_kv.value))
    if print_token:
        _print_token(c, r.meta.session_token)


def _value_arg(c: Ctx, value: str | None) -> bytes:
    if value is not None:
        return c.b(value, "VALUE")
    if sys.stdin is None or sys.stdin.isatty():
        fail("put needs a VALUE, or the value on standard input (kv put KEY < file)", EXIT_BAD_USAGE)
    data = sys.stdin.buffer.read()
    return c.b(data.decode("ascii", "replace").strip(), "VALUE") if c.hex else data


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
                         [[c.show(kv.key), c.show(kv.value), kv.create_revision, kv.mod_revision, kv.version]
                          for kv in kvs]))
    else:
        for kv in kvs:
            click.echo(c.show(kv.key))
            if not keys_only:
                click.echo(c.show(kv.value))


@main.command()
@click.argument("key")
@read_options
@pass_ctx
def get(c: Ctx, key: str, consistency: str, max_staleness_ms: int | None, max_lag_entries: int | None,
        strict: bool, session_token: str | None, print_token: bool) -> None:
    """Get KEY (prints KEY and VALUE; nothing if absent)."""
    kw = _read_kwargs(consistency, max_staleness_ms, max_lag_entries, strict, session_token)
    k = c.b(key)
    r = run(lambda: c.client.get(k, **kw))
    _print_kvs(c, [r.kv] if r.found else [], r)
    if print_token:
        _print_token(c, r.meta.session_token)


@main.command(name="range")
@click.argument("key", default="")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--from-key", is_flag=True, help="Every key >= KEY.")
@click.option("--limit", type=UINT64, default=0, help="At most this many keys (0 = no limit).")
@click.option("--after", "after", default=None, metavar="KEY",
              help="Start just after this key (the next page: the note of a range that has more).")
@click.option("--keys-only", is_flag=True)
@click.option("--count-only", is_flag=True)
@read_options
@pass_ctx
def range_cmd(c: Ctx, key: str, range_end: str, prefix: bool, from_key: bool, limit: int, after: str | None,
              keys_only: bool, count_only: bool, consistency: str, max_staleness_ms: int | None,
              max_lag_entries: int | None, strict: bool, session_token: str | None, print_token: bool) -> None:
    """Range over keys: KEY [RANGE_END), --prefix, or --from-key.

    When the answer stops short of the range (--limit, or the server's own bound), a note on stderr says
    how to go on: `--after LAST_KEY`, with the same range and flags."""
    if not key and not from_key and not prefix:
        fail("give a KEY, or --prefix / --from-key", EXIT_BAD_USAGE)
    start = c.b(key)
    end = b"\0" if from_key else c.b(range_end, "RANGE_END")
    if prefix:
        from ..client.requests import prefix_end

        end, prefix = (prefix_end(start) if start else b"\0"), False  # an empty prefix selects every key
    if after is not None:
        start = c.b(after, "--after") + b"\0"  # the smallest key after it
        if not end:  # a single KEY has nothing after it
            fail("--after goes with a range (RANGE_END, --prefix or --from-key)", EXIT_BAD_USAGE)
    kw = _read_kwargs(consistency, max_staleness_ms, max_lag_entries, strict, session_token)
    r = run(lambda: c.client.range(start, end, limit=limit, keys_only=keys_only, count_only=count_only, **kw))
    if count_only:
        click.echo(json.dumps(to_json(r)) if c.out == "json" else str(r.count))
    else:
        _print_kvs(c, list(r.kvs), r, keys_only)
        if r.more and c.out != "json":  # -w json carries `more` itself
            click.echo(_more_note(c, list(r.kvs), r.count), err=True)
    if print_token:
        _print_token(c, r.meta.session_token)


def _more_note(c: Ctx, kvs: list[Any], count: int) -> str:
    """Never a silently short answer: how many were shown, and how to ask for the rest."""
    shown = f"{len(kvs)} of {count} shown" if count > len(kvs) else f"{len(kvs)} shown"
    if not kvs:
        return f"(more keys: {shown})"
    last = kvs[-1].key
    if c.hex:
        return f"(more keys: {shown}; continue with --after {last.hex()})"
    try:
        printable = last.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        printable = False
    if not printable:
        return f"(more keys: {shown}; the last key is binary: continue with --hex --after {last.hex()})"
    return f"(more keys: {shown}; continue with --after {shlex.quote(last.decode())})"


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
    k, end = c.b(key), c.b(range_end, "RANGE_END")
    r = run(lambda: c.client.delete(k, end, prefix=prefix, prev_kv=prev_kv, ack=ack, min_replicas=min_replicas,
                                    timeout_ms=timeout_ms))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
    else:
        click.echo(str(r.deleted))
        for kv in r.prev_kvs:
            click.echo(c.show(kv.key))
            click.echo(c.show(kv.value))
    if print_token:
        _print_token(c, r.meta.session_token)


def _parse_compare(c: Ctx, s: str) -> Any:
    """`value(k) = v`, `version(k) > 3`, `create(k) = 0`, `mod(k) < 9`, `exists(k) = 1` (with --hex, k and v
    in hex)."""
    import re

    from ..client import compare

    m = re.fullmatch(r"\s*(value|version|create|mod|exists)\((.+?)\)\s*(=|==|!=|<|>)\s*(.*)\s*", s)
    if not m:
        fail(f"cannot parse compare {s!r}; e.g. 'value(k) = v' or 'version(k) > 2'", EXIT_BAD_USAGE)
        raise SystemExit
    target, key, op, operand = m.groups()
    operand = operand.strip().strip('"')
    if target != "value":
        if not operand.lstrip("-").isdigit() or not -2 ** 63 <= int(operand) < 2 ** 63:
            fail(f"{target} compares take a number, not {operand!r}", EXIT_BAD_USAGE)
        return compare(c.b(key), target, op, operand)
    return compare(c.b(key), target, op, c.b(operand, "compare value"))


def _parse_op(c: Ctx, s: str) -> Any:
    """`put k v`, `del k`, `get k` (with --hex, k and v in hex)."""
    from ..client import op_delete, op_get, op_put

    parts = s.split(None, 2)
    if len(parts) == 3 and parts[0] == "put":
        return op_put(c.b(parts[1]), c.b(parts[2], "VALUE"))
    if len(parts) == 2 and parts[0] in ("del", "delete"):
        return op_delete(c.b(parts[1]))
    if len(parts) == 2 and parts[0] == "get":
        return op_get(c.b(parts[1]))
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
    cmp = [_parse_compare(c, s) for s in compares]
    ok_ops = [_parse_op(c, s) for s in then_ops]
    bad_ops = [_parse_op(c, s) for s in else_ops]
    r = run(lambda: c.client.txn(cmp, ok_ops, bad_ops, ack=ack, min_replicas=min_replicas, timeout_ms=timeout_ms))
    if c.out == "json":
        click.echo(json.dumps(to_json(r)))
    else:
        click.echo("SUCCESS" if r.succeeded else "FAILURE")
        for resp in r.responses:
            kind = resp.WhichOneof("response")
            if kind == "range":
                for kv in resp.range.kvs:
                    click.echo(c.show(kv.key))
                    click.echo(c.show(kv.value))
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
            rows.append([ep, "-", "unreachable", "-", "-", "-", "-", "-", "-", "-"])
            continue
        leader_lag = {f.id: f for f in s.followers}
        lag = ",".join(f"{f.id}:{f.lag_entries}e/{f.flush_lag_seconds:.2f}s{'!' if f.critical else ''}"
                       f"{'unreachable' if f.unreachable else ''}" for f in leader_lag.values()) or "-"
        rows.append([ep, s.id, s.role, s.term, s.leader_id, s.commit, s.applied, f"{s.db_size_bytes / 1e6:.1f} MB",
                     lag, pressure_cell(s)])
    return rows


@main.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Status of every endpoint (like `etcdctl endpoint status`), with replication lag on the leader."""
    from ..client import RaftKVError

    out = []
    last: RaftKVError | None = None
    errors: dict[str, RaftKVError] = {}
    for ep in c.endpoints.split(","):
        ep = ep.strip()
        try:
            out.append((ep, c.client.status(endpoint=ep, timeout=min(c.dial_timeout, c.command_timeout))))
        except RaftKVError as e:
            out.append((ep, None))
            last = errors[ep] = e
    if all(s is None for _, s in out):
        fail(f"no endpoint answered ({c.endpoints}); last: {str(last).splitlines()[0] if last else '-'}")
    if c.out == "json":
        click.echo(json.dumps([{"endpoint": ep, **(to_json(s) if s else status_error(c.client, ep, errors.get(ep)))}
                               for ep, s in out]))
        return
    headers = ["endpoint", "id", "role", "term", "leader", "commit", "applied", "db size",
               "lag (follower:entries/secs, ! critical)", "pressure"]
    rows = _status_rows(out)
    if c.out == "table":
        click.echo(table(headers, rows))
    else:
        for r in rows:
            click.echo(", ".join(str(v) for v in r))
    for ep, s in out:
        if s is not None and s.identity_problem:
            click.echo(f"{ep}: NOT READY: {s.identity_problem}")
        for alarm in s.alarms if s is not None else ():
            click.echo(f"{ep}: ALARM {alarm}")
    views = [s for _, s in out if s is not None]
    view = next((s for s in views if s.role == "leader"), views[0])
    spares = [str(m.id) for m in view.members if m.spare]
    if spares:
        click.echo(f"spares (hot spare learners, promoted in place of a dead voter): {', '.join(spares)}")
    witnesses = [str(m.id) for m in view.members if m.witness]
    if witnesses:
        click.echo(f"witnesses (vote, hold no data, serve no client): {', '.join(witnesses)}")


def _lag_rows(r: Any) -> list[list[Any]]:
    return [[f.id, "learner" if f.learner else "voter", f.state, f.match, f.lag_entries, f.lag_bytes,
             f"{f.flush_lag_seconds:.3f}", f"{f.replay_lag_seconds:.3f}",
             "-" if f.last_contact_seconds < 0 else f"{f.last_contact_seconds:.2f}", _lag_status(f)]
            for f in r.followers]


def _lag_status(f: Any) -> str:
    """UNREACHABLE: the leader has not heard from it for a critical period (or ever); CRITICAL: behind."""
    return "UNREACHABLE" if f.unreachable else "CRITICAL" if f.critical else "ok"


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
@click.option("--count", type=UINT64, default=0, help="With --watch: stop after this many refreshes (0 = forever).")
@pass_ctx
def lag(c: Ctx, watch: bool, interval: float, count: int) -> None:
    """Replication lag of every follower, as the leader sees it."""
    if not (0 < interval < float("inf")):  # also refuses nan
        fail("--interval must be a positive number of seconds", EXIT_BAD_USAGE)
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


@main.group(invoke_without_command=True)
@click.pass_context
def snapshot(ctx: click.Context) -> None:
    """Snapshot the first endpoint's state machine now and compact its log; `save` and `status` handle
    backup files (kv_maint.py)."""
    if ctx.invoked_subcommand is not None:
        return
    c: Ctx = ctx.obj
    ep = c.endpoints.split(",")[0].strip()
    r = run(lambda: c.client.snapshot(endpoint=ep))
    click.echo(json.dumps(to_json(r)) if c.out == "json" else f"snapshot at index {r.index}")


from . import kv_members  # noqa: E402 - its groups first: kv_ops aliases them

kv_members.register(main, sys.modules[__name__])
from .kv_ops import register as _register_ops  # noqa: E402 - after the commands it aliases

_register_ops(main)
from .kv_maint import register as _register_maint  # noqa: E402 - verbs of kv_maint.py join the group

_register_maint(main)
from . import kv_lease, kv_lock, kv_watch  # noqa: E402 - register their verbs

kv_watch.register(main, sys.modules[__name__])
kv_lease.register(main, sys.modules[__name__])
kv_lock.register(main, sys.modules[__name__])

if __name__ == "__main__":
    main(prog_name="kv")
