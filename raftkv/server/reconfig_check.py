"""The strict reconfiguration check: refuse a membership change that would silently take fault tolerance
away (etcd's `--strict-reconfig-check`, on by default, made stricter where etcd lets a hazard through).

It runs on the leader, before the change is proposed, over what the leader knows right now. A member is
*healthy* when the leader heard from it within the last election timeout and its log is at most
`CAUGHT_UP_ENTRIES` entries behind the leader's (the leader itself always is). A node that is not yet a
member is never healthy: it holds none of the log, so it cannot help commit anything until it has
caught up, and nothing says it is even running. Then:

- an addition (a voter added directly, or a learner promoted) is refused if the healthy voters could
  not commit in the new configuration, or would survive fewer failures than they do now. Adding a voter
  where nothing runs, or one that has yet to receive the log, to a 3-voter cluster makes every write
  need all three old voters: one more failure and writes stop. The way in is a learner: add it, start
  it with `--join`, and promote it once it has caught up;
- a learner is promoted only if it is healthy itself (running and caught up);
- a removal (or a voter's demotion to learner) is refused if the healthy voters that remain could not commit in the new configuration;
- an address already used by another member is refused (two ids on one address: one of them would be
  unreachable, or a node would receive another's traffic).

Nothing here talks to the network or blocks: the host passes in a `ClusterView` it built from the core's
progress table and the lag monitor's last-contact times.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import ConfChange, ConfChangeRejected, ConfChangeType, ConfState

CAUGHT_UP_ENTRIES = 1000
"""A member at most this many entries behind the leader's last index counts as caught up."""


@dataclass(slots=True, frozen=True)
class MemberHealth:
    match: int
    last_contact_s: float | None
    """Seconds since the leader last heard from it; None if never (this term)."""
    recent_active: bool


@dataclass(slots=True, frozen=True)
class ClusterView:
    leader: int
    conf: ConfState
    last_index: int
    election_timeout_s: float
    members: dict[int, MemberHealth]
    """Per member other than the leader, what the leader knows of it."""
    addresses: dict[int, str]

    def behind(self, nid: int) -> int | None:
        """Entries `nid` is behind the leader's log (0 for the leader), None for a non-member."""
        if nid == self.leader:
            return 0
        h = self.members.get(nid)
        return None if h is None else max(0, self.last_index - h.match)

    def heard_recently(self, nid: int) -> bool:
        if nid == self.leader:
            return True
        h = self.members.get(nid)
        if h is None:
            return False
        return h.recent_active or (h.last_contact_s is not None and h.last_contact_s <= self.election_timeout_s)

    def healthy(self, nid: int) -> bool:
        behind = self.behind(nid)
        return behind is not None and behind <= CAUGHT_UP_ENTRIES and self.heard_recently(nid)


def _quorum(n: int) -> int:
    return n // 2 + 1


def _tolerance(voters: frozenset[int], healthy: set[int]) -> int:
    """How many more healthy voters may fail with the rest still able to commit (< 0: cannot commit now)."""
    return len(voters & healthy) - _quorum(len(voters))


def _names(ids: set[int] | frozenset[int]) -> str:
    return ", ".join(str(n) for n in sorted(ids)) or "none"


def _nodes(ids: set[int] | frozenset[int]) -> str:
    return ("node " if len(ids) == 1 else "nodes ") + _names(ids)


def check_change(cc: ConfChange, view: ClusterView, address: str = "") -> None:
    """Raise ConfChangeRejected (FAILED_PRECONDITION to the client) if `cc` would weaken the cluster.
    `address` is the member address the change records (adds and updates)."""
    if cc.type in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.UPDATE_NODE,
                   ConfChangeType.ADD_WITNESS) and address:
        _check_address(cc.node_id, address, view)
    conf = view.conf
    try:
        new = conf.apply(cc)
    except ValueError as e:
        raise ConfChangeRejected(str(e)) from None
    if new.voters == conf.voters:
        return  # learners and address updates never change who commits
    healthy = {n for n in conf.members() if view.healthy(n)}
    before, after = _tolerance(conf.voters, healthy), _tolerance(new.voters, healthy)
    unhealthy = new.voters - healthy
    n = cc.node_id
    if cc.type == ConfChangeType.PROMOTE_LEARNER or (cc.type == ConfChangeType.ADD_VOTER and n in conf.learners):
        if n not in healthy:
            raise ConfChangeRejected(_not_caught_up(n, view))
    if cc.type in (ConfChangeType.REMOVE_NODE, ConfChangeType.DEMOTE_VOTER):
        if after < 0:
            what = "removing" if cc.type == ConfChangeType.REMOVE_NODE else "demoting"
            raise ConfChangeRejected(
                f"{what} node {n} would leave voters {_names(new.voters)}, of which only "
                f"{_names(new.voters & healthy)} are healthy now (heard from within the election timeout and "
                f"caught up): they could not commit, and writes would stop. Bring back "
                f"{_nodes(unhealthy)} first, or remove one that is down")
        return
    if after < 0 or after < before:
        if cc.type == ConfChangeType.ADD_WITNESS:
            down = unhealthy - {n}
            hint = ("a witness is added as a voter directly (a learner would receive data): add it where it raises "
                    "the voter count from even to odd" + (f", or bring back {_nodes(down)} first" if down else ""))
        elif n not in conf.members():
            hint = (f"node {n} is not a member yet, so it holds none of the log and cannot help commit: "
                    f"add it as a learner (kv members add {n} ADDR --learner), start it with `raftkv serve "
                    f"--join`, and promote it once it has caught up (kv members promote {n})")
        else:
            hint = f"bring back {_nodes(unhealthy)} first"
        survive = (f"could not commit with the healthy voters ({_names(new.voters & healthy)})" if after < 0 else
                   f"would survive {after} failures instead of {before}")
        raise ConfChangeRejected(f"adding voter {n}: the cluster {survive}; {hint}")


def check_transfer(target: int, view: ClusterView) -> None:
    """Leadership moves only to a healthy voter: one that is down or far behind could not take over
    within the election timeout, and the transfer would only hold up writes meanwhile."""
    if target != view.leader and target in view.conf.voters and not view.healthy(target):
        raise ConfChangeRejected(f"node {target} cannot take over leadership: it is {_state(target, view)}; "
                                 f"leadership moves only to a voter that is running and caught up")


def _state(n: int, view: ClusterView) -> str:
    h = view.members.get(n)
    contact = ("never heard from" if h is None or h.last_contact_s is None
               else f"last heard from {h.last_contact_s:.1f}s ago")
    return (f"{view.behind(n)} entries behind the leader (at most {CAUGHT_UP_ENTRIES} allowed) and was {contact} "
            f"(it must be within {view.election_timeout_s:.1f}s)")


def _not_caught_up(n: int, view: ClusterView) -> str:
    return (f"node {n} has not caught up: it is {_state(n, view)}; start it (raftkv serve --join) if it is not "
            f"running, and promote it once `kv lag` shows it replicating with no lag")


def _check_address(nid: int, address: str, view: ClusterView) -> None:
    key = address.strip().lower()
    for other, addr in sorted(view.addresses.items()):
        if other != nid and addr.strip().lower() == key:
            raise ConfChangeRejected(f"address {address} is already used by node {other}; each member needs its own "
                                     f"address (remove node {other} first if it is being replaced)")
