"""`kv lock NAME [-- COMMAND...]`, `kv elect NAME PROPOSAL`, `kv elect -l NAME`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

import click

from .kv_args import EXIT_ERROR, fail


def fenced_put(c: Any, key: bytes, value: bytes, lease: int, run: Any) -> Any:
    """A put that lands only while the lock named by $KV_LOCK_KEY is held with token $KV_LOCK_TOKEN."""
    from ..client.lock import fence_compare
    from ..client.requests import op_put

    lock_key, token = os.environ.get("KV_LOCK_KEY", ""), os.environ.get("KV_LOCK_TOKEN", "")
    if not lock_key or not token.isdigit():
        fail("--fence needs $KV_LOCK_KEY and $KV_LOCK_TOKEN (run it under `kv lock NAME -- ...`)", 2)
    op = op_put(key, value)
    op.put.lease = lease
    r = run(lambda: c.client.txn([fence_compare(c.b(lock_key, "KV_LOCK_KEY"), int(token))], [op]))
    if not r.succeeded:
        fail(f"write refused: lock {lock_key} is no longer held with token {token} (fenced)", EXIT_ERROR)
    return r


def _hold(c: Any, lk: Any, command: tuple[str, ...], what: str) -> None:
    """Run COMMAND with the token in its environment (or wait for Ctrl-C), then let the lock go."""
    env = dict(os.environ, KV_LOCK_TOKEN=str(lk.token), KV_LOCK_KEY=c.show(lk.key))
    try:
        if command:
            proc = subprocess.Popen(list(command), env=env)
            code = proc.wait()
            if lk.keep_alive.error is not None and not lk.keep_alive.alive:
                fail(f"the {what} was lost while the command ran: {lk.keep_alive.error}", EXIT_ERROR)
            if code:
                raise SystemExit(code)
            return
        click.echo(c.show(lk.key))
        click.echo(f"token {lk.token}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                if not lk.keep_alive.alive:
                    fail(f"the {what} was lost: {lk.keep_alive.error}", EXIT_ERROR)
        except KeyboardInterrupt:
            pass
    finally:
        try:
            c.client.unlock(lk)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            pass


def register(main: click.Group, kv: Any) -> None:
    """Add the verbs to `main`; `kv`: the kv module as loaded (its Ctx, whether run as __main__ or not)."""
    pass_ctx = kv.pass_ctx
    run = kv.run

    @main.command(context_settings={"ignore_unknown_options": True})
    @click.argument("name")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @click.option("--ttl", type=int, default=10, show_default=True, help="Lease TTL of the lock, seconds.")
    @pass_ctx
    def lock(c: Any, name: str, command: tuple[str, ...], ttl: int) -> None:
        """Wait for lock NAME and hold it while COMMAND runs (its fencing token in $KV_LOCK_TOKEN, the lock
        key in $KV_LOCK_KEY), or until Ctrl-C. Writes it protects must be fenced with the token."""
        lk = run(lambda: c.client.lock(c.b(name, "NAME"), ttl))
        _hold(c, lk, command, "lock")

    @main.command()
    @click.argument("name")
    @click.argument("proposal", required=False)
    @click.option("-l", "--listen", is_flag=True, help="Observe: print each new leader's proposal.")
    @click.option("--ttl", type=int, default=10, show_default=True)
    @pass_ctx
    def elect(c: Any, name: str, proposal: str | None, listen: bool, ttl: int) -> None:
        """Campaign in election NAME with PROPOSAL (printed once leader, held until Ctrl-C), or observe it."""
        n = c.b(name, "NAME")
        if listen:
            def observe() -> None:
                from ..client.lock import ELECTION_PREFIX

                last = None
                base = ELECTION_PREFIX + n + b"/"
                cur = c.client.leader(n)
                if cur is not None:
                    last = cur.key
                    click.echo(c.show(cur.value))
                for _ in c.client.watch(base, prefix=True):
                    cur = c.client.leader(n)
                    if cur is not None and cur.key != last:
                        last = cur.key
                        click.echo(c.show(cur.value))

            run(observe)
            return
        if proposal is None:
            fail("PROPOSAL is needed to campaign (or -l to observe)", 2)
        lk = run(lambda: c.client.campaign(n, c.b(proposal, "PROPOSAL"), ttl))
        _hold(c, lk, (), "leadership")
