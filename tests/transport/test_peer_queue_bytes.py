"""A follower that does not read (its process stopped: the port accepts TCP, nothing answers) never makes
the leader queue without bound: past `queue_bytes_limit` of entries, appends to it are refused, the host is
told it is unreachable (the leader then probes it and it catches up from the log), and the other
follower's stream is unaffected."""

from __future__ import annotations

import asyncio
import socket

import pytest

from raftkv.core import Entry, Message, MessageType
from raftkv.transport import Transport

CLUSTER = b"c" * 16


def _append(to: int, i: int, size: int) -> Message:
    return Message(MessageType.APP, to=to, frm=1, term=3, index=i, log_term=3,
                   entries=[Entry(3, i + 1, data=b"x" * size)], commit=i)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["grpc", "tcp"])
async def test_a_peer_that_reads_nothing_holds_at_most_the_byte_bound(kind: str) -> None:
    mute = socket.socket()  # listens, accepts into its backlog, never reads (nor speaks HTTP/2)
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    unreachable: list[int] = []
    t = Transport(1, "127.0.0.1:1", lambda: CLUSTER, on_message=lambda _: None, on_unreachable=unreachable.append,
                  adopt_cluster_id=lambda _: None, queue_bytes_limit=1 << 20)
    try:
        mute_address = f"127.0.0.1:{mute.getsockname()[1]}"
        t.add_peer(2, mute_address, mute_address if kind == "tcp" else "")
        await asyncio.sleep(0.05)
        t.send([_append(2, i, 64 << 10) for i in range(100)])  # 6.4 MiB offered
        assert t.queued_bytes(2) <= 1 << 20
        assert t.queued_bytes(2) >= (1 << 20) - (64 << 10)
        assert unreachable and set(unreachable) == {2}
        assert t.dropped == 100 - len(t.peers[2].queue)
        # One entry larger than the bound still goes once the queue has drained (never stuck behind it).
        t.peers[2].clear()
        t.send([_append(2, 200, 2 << 20)])
        assert t.queued_bytes(2) == 2 << 20
        assert t.queued_bytes(9) == 0
    finally:
        await t.stop()
        mute.close()
