"""`raftkv serve --force-new-cluster`: one survivor of a permanent quorum loss becomes a one-member cluster
that keeps its data (as etcd's flag of that name), so the service can come back and the lost members can
be re-added fresh (`kv members add ID ADDR --learner`, `raftkv serve --join`, `kv members promote ID`).

How: before the node serves, one conf change removing each other member is appended to its own log, in
its current term, in one synced transaction. raftkv takes a configuration from its log as soon as it is
appended (core/membership.py), so the node starts as the only voter, elects itself, and commits the
removals with the first entry of its new term; they are then applied like any membership change (the
member registry forgets the removed members, which are refused should they ever come back).

What is kept, what may be lost: everything in the survivor's log is kept, including entries it had not
yet learned were committed (they are committed now, as a new leader would). Writes the old cluster
acknowledged that never reached this survivor's log are lost: so force the survivor with the highest
last index (`kv status` shows it; or the log line `node started ... last_index`). The cluster keeps its
id; its other members' data directories must never serve again (their nodes are refused).

The flag is for one start: a node already alone in its configuration is left as it is, but once others
have been re-added, starting again with the flag would remove them again. Remove it after the start.
"""

from __future__ import annotations

import structlog

from ..core import ConfChange, ConfChangeType, Entry, EntryType
from ..core.membership import ConfLog
from ..storage import LmdbNodeStore

log = structlog.get_logger("raftkv.server")


class ForceNewClusterRefused(Exception):
    """This node cannot be made a one-member cluster (it is no voter of its own configuration)."""


def force_new_cluster(store: LmdbNodeStore, node_id: int) -> list[int]:
    """Make `node_id` the only member of the configuration in its log; returns the members removed
    ([] when it is alone already)."""
    if store.created:
        raise ForceNewClusterRefused(f"{store.path} held no data: --force-new-cluster keeps a survivor's data, "
                                     "and there is none here")
    hs, base = store.initial_state()
    confs = ConfLog(store.first_index() - 1, base)
    last = store.last_index()
    confs.observe(store.entries(store.first_index(), last + 1))
    conf = confs.current
    if node_id not in conf.voters:
        raise ForceNewClusterRefused(
            f"node {node_id} is not a voter of the configuration in its log (voters {sorted(conf.voters)}, "
            f"learners {sorted(conf.learners)}): --force-new-cluster keeps a voter's data only")
    others = sorted(conf.members() - {node_id})
    if not others:
        return []
    term = max(hs.term, store.term(last))
    entries = [Entry(term, last + 1 + i, EntryType.CONF_CHANGE,
                     ConfChange(ConfChangeType.REMOVE_NODE, nid).encode()) for i, nid in enumerate(others)]
    store.persist(None, entries, None, None)
    log.warning("forced a new one-member cluster: the other members are removed; remove --force-new-cluster "
                "before the next start", removed=others, kept_last_index=last, term=term)
    return others
