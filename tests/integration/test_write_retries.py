"""The client must never apply a write twice by retrying it after the server may have received it.

Found by the partition suite: a put sent to a leader that died mid-call was committed by the next
leader, and the client's retry applied it again after another client's write, undoing that write."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from raftkv.client import Client, RaftKVError

from .local_cluster import LocalCluster


def test_put_is_not_retried_after_the_connection_broke_mid_call(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    others = [i for i in cluster.ports if i != leader]
    with Client([cluster.address(leader)] + [cluster.address(i) for i in others], timeout=10) as c:
        c.put("warm", "1")  # the connection to the leader is up
        cluster.signal(leader, signal.SIGSTOP)  # the next put reaches its socket, nothing answers
        outcome: list[object] = []
        t = threading.Thread(target=lambda: outcome.append(_attempt(c)), daemon=True)
        t.start()
        time.sleep(0.5)
        cluster.kill(leader)  # the connection breaks after the request was sent
        t.join(15)
    # The leader may have received it (here it did not, being stopped, but the client cannot know):
    # the caller learns the outcome is unknown instead of a second copy being sent elsewhere.
    assert outcome and isinstance(outcome[0], RaftKVError), f"the put was retried elsewhere: {outcome}"
    assert outcome[0].code == grpc.StatusCode.UNAVAILABLE


def _attempt(c: Client) -> object:
    try:
        return c.put("k", "v")
    except RaftKVError as e:
        return e


@pytest.fixture
def cluster(tmp_path):  # noqa: ANN001, ANN201 - a fresh 3-node cluster per test
    c = LocalCluster(tmp_path).start_all()
    try:
        yield c
    finally:
        for i in c.procs:
            c.signal(i, signal.SIGCONT)
        c.stop_all()
