"""`kv lease grant|keep-alive|revoke|timetolive|list`. Lease ids are printed and read in hex, as etcdctl."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from .kv_args import EXIT_BAD_USAGE, fail


def parse_lease_id(text: str) -> int:
    try:
        v = int(text, 16)
    except ValueError:
        v = -1
    if v <= 0:
        fail(f"lease id {text!r} is not a lease id (hex, as `kv lease grant` prints)", EXIT_BAD_USAGE)
    return v


def register(main: click.Group, kv: Any) -> None:
    """Add the verbs to `main`; `kv`: the kv module as loaded (its Ctx, whether run as __main__ or not)."""
    pass_ctx = kv.pass_ctx
    run = kv.run
    to_json = kv.to_json

    @main.group()
    def lease() -> None:
        """Leases: keys attached to one (put --lease ID) are deleted when it is not kept alive."""

    @lease.command(name="grant")
    @click.argument("ttl", type=int)
    @pass_ctx
    def lease_grant(c: Any, ttl: int) -> None:
        """A lease of TTL seconds; prints its id."""
        r = run(lambda: c.client.lease_grant(ttl))
        click.echo(json.dumps(to_json(r)) if c.out == "json" else f"lease {r.id:x} granted with TTL({r.ttl}s)")

    @lease.command(name="revoke")
    @click.argument("lease_id")
    @pass_ctx
    def lease_revoke(c: Any, lease_id: str) -> None:
        lid = parse_lease_id(lease_id)
        r = run(lambda: c.client.lease_revoke(lid))
        click.echo(json.dumps(to_json(r)) if c.out == "json" else f"lease {lid:x} revoked ({r.deleted} keys deleted)")

    @lease.command(name="timetolive")
    @click.argument("lease_id")
    @click.option("--keys", is_flag=True, help="List the keys attached to it.")
    @pass_ctx
    def lease_ttl(c: Any, lease_id: str, keys: bool) -> None:
        lid = parse_lease_id(lease_id)
        r = run(lambda: c.client.lease_time_to_live(lid, keys=keys))
        if c.out == "json":
            click.echo(json.dumps(to_json(r)))
            return
        line = f"lease {lid:x} granted with TTL({r.granted_ttl}s), remaining({r.ttl}s)"
        if keys:
            line += ", attached keys(" + ", ".join(c.show(k) for k in r.keys) + ")"
        click.echo(line)

    @lease.command(name="list")
    @pass_ctx
    def lease_list(c: Any) -> None:
        r = run(lambda: c.client.lease_list())
        if c.out == "json":
            click.echo(json.dumps(to_json(r)))
            return
        click.echo(f"found {len(r.leases)} leases")
        for s in r.leases:
            click.echo(f"{s.id:x}")

    @lease.command(name="keep-alive")
    @click.argument("lease_id")
    @click.option("--once", is_flag=True, help="Renew once and exit.")
    @pass_ctx
    def lease_keep_alive(c: Any, lease_id: str, once: bool) -> None:
        """Keep the lease alive until Ctrl-C (exits non-zero once it is gone)."""
        lid = parse_lease_id(lease_id)
        while True:
            r = run(lambda: c.client.lease_keep_alive_once(lid))
            click.echo(f"lease {lid:x} keepalived with TTL({r.ttl})")
            if once:
                return
            time.sleep(max(0.2, r.ttl / 3))
