"""State-machine commands of high-availability operations (wire tags starting with "h"), beside the
client's commands of commands.py:

- `HashKV` ["hk"]: every member hashes its key-value state when it applies this entry, so all members
  hash the state of one revision (the entry's index) whatever their speed (`kv check hash`);
- `AlarmRaise` ["ha", type, member, revision, message] and `AlarmDisarm` ["hd", type, member]: the
  cluster's alarms (CORRUPT), decided by the leader and committed through the log, so every member holds
  the same alarms and a new leader keeps refusing writes (alarms.py).

None of them touches a key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

TAGS = ("hk", "ha", "hd")


@dataclass(slots=True, frozen=True)
class HashKV:
    pass


@dataclass(slots=True, frozen=True)
class AlarmRaise:
    kind: str
    member: int
    revision: int
    message: str


@dataclass(slots=True, frozen=True)
class AlarmDisarm:
    kind: str
    member: int
    """0: every member's alarm of this kind."""


HaCommand = HashKV | AlarmRaise | AlarmDisarm


def encode(cmd: HaCommand) -> bytes:
    if isinstance(cmd, HashKV):
        body: list[Any] = ["hk"]
    elif isinstance(cmd, AlarmRaise):
        body = ["ha", cmd.kind, cmd.member, cmd.revision, cmd.message]
    else:
        body = ["hd", cmd.kind, cmd.member]
    return msgpack.packb(body, use_bin_type=True)


def from_wire(w: list[Any]) -> HaCommand:
    """The command of a decoded wire list whose tag is one of TAGS; ValueError if it is malformed."""
    try:
        if w[0] == "hk":
            return HashKV()
        if w[0] == "ha":
            return AlarmRaise(str(w[1]), int(w[2]), int(w[3]), str(w[4]))
        if w[0] == "hd":
            return AlarmDisarm(str(w[1]), int(w[2]))
    except (IndexError, TypeError, ValueError):
        raise ValueError(f"malformed {w[0]!r} command") from None
    raise ValueError(f"unknown operation {w[0]!r}")
