"""`kv members list|add|remove|promote|update` and `kv leader transfer`: who is in the cluster, and who leads."""

from __future__ import annotations

import json
from typing import Any

import click

from .kv_args import NODE_ID


def register(main: click.Group, kv: Any) -> None:
    """Add the verbs to `main`; `kv`: the kv module as loaded (its Ctx, whether run as __main__ or not)."""
    pass_ctx = kv.pass_ctx
    run = kv.run
    table = kv.table
    to_json = kv.to_json
    Ctx = kv.Ctx  # noqa: N806 - the class, under its own name

    @main.group()
    def members() -> None:
        """List and change cluster membership."""

    def _print_members(c: Ctx, r: Any) -> None:
        if c.out == "json":
            click.echo(json.dumps(to_json(r)))
            return
        rows = [[m.id, m.address, "learner" if m.learner else "witness" if m.witness else "voter", "sync" if m.sync else "",
                 "semi_sync" if m.semi_sync else "", "spare" if m.spare else ""] for m in r.members]
        if c.out == "table":
            click.echo(table(["id", "address", "role", "sync", "semi-sync", "spare"], rows))
        else:
            for row in rows:
                click.echo(", ".join(str(v) for v in row if v != ""))

    @members.command(name="list")
    @pass_ctx
    def members_list(c: Ctx) -> None:
        _print_members(c, run(lambda: c.client.members()))

    @members.command(name="add")
    @click.argument("node_id", type=NODE_ID)
    @click.argument("address")
    @click.option("--learner", is_flag=True, help="Add as a learner (replicates, never votes or counts).")
    @click.option("--sync", "sync_mark", is_flag=True, help="Count it in the sync set.")
    @click.option("--semi-sync", is_flag=True, help="Count it in the semi-sync set.")
    @click.option("--spare", is_flag=True, help="With --learner: a hot spare, promoted in place of a dead voter.")
    @click.option("--witness", is_flag=True, help="A witness: a voter that holds no data (start it with --witness).")
    @click.option("--peer-addr", default="", help="Its TCP peer port (its --peer-listen); default: peers use gRPC.")
    @pass_ctx
    def members_add(c: Ctx, node_id: int, address: str, learner: bool, sync_mark: bool, semi_sync: bool,
                    spare: bool, witness: bool, peer_addr: str) -> None:
        """Add NODE_ID at ADDRESS (then start it with `raftkv serve --join`)."""
        _print_members(c, run(lambda: c.client.member_add(node_id, address, learner, sync_mark, semi_sync, spare,
                                                          witness, peer_addr)))

    @members.command(name="remove")
    @click.argument("node_id", type=NODE_ID)
    @pass_ctx
    def members_remove(c: Ctx, node_id: int) -> None:
        _print_members(c, run(lambda: c.client.member_remove(node_id)))

    @members.command(name="promote")
    @click.argument("node_id", type=NODE_ID)
    @pass_ctx
    def members_promote(c: Ctx, node_id: int) -> None:
        """Make learner NODE_ID a voter."""
        _print_members(c, run(lambda: c.client.member_promote(node_id)))

    @members.command(name="update")
    @click.argument("node_id", type=NODE_ID)
    @click.option("--address", default="")
    @click.option("--sync/--no-sync", "sync_mark", default=None, help="Mark (or unmark) it for the sync set.")
    @click.option("--semi-sync/--no-semi-sync", default=None, help="Mark (or unmark) it for the semi-sync set.")
    @click.option("--spare/--no-spare", default=None, help="Mark (or unmark) a learner as a hot spare.")
    @click.option("--peer-addr", default=None, help="Its TCP peer port (\"\": none, peers use gRPC); default: kept.")
    @pass_ctx
    def members_update(c: Ctx, node_id: int, address: str, sync_mark: bool | None, semi_sync: bool | None,
                       spare: bool | None, peer_addr: str | None) -> None:
        """Change a member's address, peer port or replication marks (what is not named keeps its value)."""
        _print_members(c, run(lambda: c.client.member_update(node_id, address, sync_mark, semi_sync, spare,
                                                             peer_addr)))

    @main.group()
    def leader() -> None:
        """Leadership."""

    @leader.command(name="transfer")
    @click.argument("node_id", type=NODE_ID)
    @pass_ctx
    def leader_transfer(c: Ctx, node_id: int) -> None:
        """Hand leadership to NODE_ID."""
        r = run(lambda: c.client.transfer_leader(node_id))
        click.echo(json.dumps(to_json(r)) if c.out == "json" else table(["leader"], [[r.leader_id]]) if c.out == "table"
                   else f"leader is now {r.leader_id}")
