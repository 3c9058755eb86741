"""`kv watch KEY [--prefix] [--rev R] [--prev-kv]` and `kv compact REV`."""

from __future__ import annotations

import json
from typing import Any

import click

from .kv_args import EXIT_BAD_USAGE, UINT64, fail


def register(main: click.Group, kv: Any) -> None:
    """Add the verbs to `main`; `kv`: the kv module as loaded (its Ctx, whether run as __main__ or not)."""
    pass_ctx = kv.pass_ctx
    run = kv.run
    to_json = kv.to_json

    @main.command()
    @click.argument("key")
    @click.argument("range_end", required=False, default="")
    @click.option("--prefix", is_flag=True, help="Watch every key starting with KEY.")
    @click.option("--rev", type=UINT64, default=0, help="Every event after this revision (default: from now).")
    @click.option("--prev-kv", is_flag=True, help="Print each key's previous value too.")
    @click.option("--count", type=UINT64, default=0, help="Stop after this many events (0: until Ctrl-C).")
    @pass_ctx
    def watch(c: Any, key: str, range_end: str, prefix: bool, rev: int, prev_kv: bool, count: int) -> None:
        """Print every change of KEY (or [KEY, RANGE_END), or the prefix) after --rev, in order, once; resumes
        on another node if the serving one fails. Each event: PUT|DELETE, key, value (and previous value)."""
        if prefix and range_end:
            fail("--prefix and RANGE_END do not go together", EXIT_BAD_USAGE)
        k = c.b(key)
        end = c.b(range_end, "RANGE_END") if range_end else b""
        seen = 0

        def go() -> None:
            nonlocal seen
            for r in c.client.watch(k, end, prefix=prefix, after_revision=rev, prev_kv=prev_kv):
                for e in r.events:
                    if c.out == "json":
                        click.echo(json.dumps(to_json(e)))
                    else:
                        click.echo("DELETE" if e.type == e.DELETE else "PUT")
                        click.echo(c.show(e.kv.key))
                        if e.type != e.DELETE:
                            click.echo(c.show(e.kv.value))
                        if prev_kv and e.HasField("prev_kv"):
                            click.echo(c.show(e.prev_kv.value))
                    seen += 1
                    if count and seen >= count:
                        return

        run(go)

    @main.command()
    @click.argument("revision", type=UINT64)
    @pass_ctx
    def compact(c: Any, revision: int) -> None:
        """Discard the watch history before REVISION on every node (watches from before get OUT_OF_RANGE)."""
        r = run(lambda: c.client.compact(revision))
        click.echo(json.dumps(to_json(r)) if c.out == "json" else f"compacted: oldest revision is {r.oldest_revision}")
