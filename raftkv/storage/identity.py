"""Who a data directory is: the node it belongs to, the cluster it belongs to, and its incarnation.

- The **incarnation** is a random id a data directory gets when it is created. It never changes while the
  directory lives, so a member whose directory was wiped (or replaced by another one) comes back with a
  different incarnation. The cluster records each member's incarnation through the log
  (`raftkv.server.members`) and refuses a member that shows another one: a node that lost its term, vote
  and log must not vote or count for commit under its old identity.
- The **cluster id** says which cluster founded the data. Founders given `--initial-cluster-token` derive
  it from the founding peers and the token, so they agree on it without talking and know it from their
  first second. Without a token it is chosen at random by the cluster's first leader and committed through
  the log (see `raftkv.server.identity`), so two clusters founded separately with the same `--peers` still
  get different ids.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

INCARNATION_BYTES = 8
CLUSTER_ID_BYTES = 16


def new_incarnation() -> bytes:
    return os.urandom(INCARNATION_BYTES)


def new_cluster_id() -> bytes:
    return os.urandom(CLUSTER_ID_BYTES)


def token_cluster_id(peers: dict[int, str], token: str) -> bytes:
    """A founding cluster's id derived from its founding members and its token: the same on every founder."""
    spec = ",".join(f"{nid}={addr}" for nid, addr in sorted(peers.items())) + "|" + token
    return hashlib.sha256(spec.encode()).digest()[:CLUSTER_ID_BYTES]


def has_data(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds a data file at all (its content is checked when the store opens it)."""
    return (Path(data_dir) / "data.mdb").exists()


def short(ident: bytes) -> str:
    """How an incarnation or cluster id is shown to an operator."""
    return ident.hex() if ident else "none"
