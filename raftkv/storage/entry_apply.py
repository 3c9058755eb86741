"""How one committed entry changes the state machine: decoded, applied over the write-back buffer (or
failed alone), its change events taken for watches, the lease table kept in step.

Mixed into LmdbNodeStore (node_store.py), whose `apply` calls `_apply_one` for each committed entry; this
holds the rules every node must follow alike (a bad command fails alone and still counts as applied; a
fault of this node stops it), the store the data's place and durability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lmdb

from ..core import Entry, EntryType
from . import commands, history, kv_records, sessions, state_machine
from .alarms import AlarmTable, RecentHashes, hash_state
from .commands import CompactHistory, LeaseGrant, LeaseRevoke
from .errors import CommandFailed, StorageError
from .ha_commands import AlarmDisarm, AlarmRaise, HashKV
from .history import Event
from .history_store import HistoryRows
from .leases import LeaseTable, RevokeResult
from .write_back import Overlay


def local_fault(err: BaseException) -> bool:
    """A failure of this node rather than of the command being applied: corrupted data, a full or
    failing disk, LMDB's own errors (except its refusal of a key or value size, which every node makes)."""
    if isinstance(err, (StorageError, OSError, MemoryError)):
        return True
    return isinstance(err, lmdb.Error) and not isinstance(err, lmdb.BadValsizeError)



class EntryApplier:
    """The apply step of the store: needs the lease table, the recent state hashes, the alarm table, the
    change history (its rows wait for the buffer's transaction there), and `_compact_history_to` (node_store.py)."""

    leases: LeaseTable
    hashes: RecentHashes
    alarms: AlarmTable
    history: HistoryRows
    _compact_history_to: Callable[[int, int], int]

    @staticmethod
    def _command(e: Entry) -> commands.Command | ValueError | None:
        if e.type != EntryType.NORMAL or not e.data:
            return None
        try:
            return commands.decode(e.data)
        except ValueError as err:
            return err  # a bad command fails alone; the entry still counts as applied

    def _apply_one(self, base: Overlay, e: Entry, events: list[Event] | None = None) -> Any:
        """Apply one entry over `base` (the buffer over LMDB): a command that fails is undone whole and
        fails alone (see `_failed`), and the entry still counts as applied. The change events it makes
        are added to `events`, and the lease table follows the keys' lease ids."""
        cmd = self._command(e)
        if cmd is None or isinstance(cmd, ValueError):
            return cmd
        if isinstance(cmd, (HashKV, AlarmRaise, AlarmDisarm)):
            return self._apply_ha(base, e.index, cmd)
        child = base.child()
        try:
            result = self._apply_command(child, cmd, e.index)
        except Exception as err:  # noqa: BLE001 - classified by _failed
            return self._failed(e, err)
        made = self._events_of(child, e.index)
        base.merge(child)
        if self.leases.leases:  # no lease: no key is attached to one
            for ev in made:
                self.leases.changed(ev.key, history.lease_of(ev.prev_body), history.lease_of(ev.body))
        if isinstance(cmd, LeaseRevoke):
            self.leases.remove(cmd.lease_id)
        if events is not None:
            events.extend(made)
        return result

    def _apply_ha(self, base: Overlay, index: int, cmd: HashKV | AlarmRaise | AlarmDisarm) -> Any:
        """A high-availability command (ha_commands.py): the state's hash at this revision, or an alarm."""
        if isinstance(cmd, HashKV):
            h = hash_state(base.scan(b""), index)
            self.hashes.note(h)
            return h
        self.alarms.apply(cmd)
        return None

    def _apply_command(self, view: Overlay, cmd: commands.Command, index: int) -> Any:
        if isinstance(cmd, LeaseGrant):
            return self.leases.grant(cmd, index)
        if isinstance(cmd, LeaseRevoke):
            keys = self.leases.keys_of(cmd)
            for k in keys:
                view.delete(k)
            return RevokeResult(cmd.lease_id, index, len(keys))
        if isinstance(cmd, CompactHistory):
            return self._compact_history_to(cmd.revision, index)
        return state_machine.apply_command(view, cmd, index, self.leases.__contains__)

    @staticmethod
    def _events_of(child: Overlay, revision: int) -> list[Event]:
        """The change events of one command: each key it changed, its record before and after (bodies
        taken from the sealed records as they are, not decoded: see history.Event)."""
        out: list[Event] = []
        before = child.before or {}
        s = kv_records.SEAL_BYTES
        for k, rec in child.changes.items():
            if sessions.reserved(k):  # client sessions' records are no client's keys: never watched
                continue
            prev = before.get(k)
            if rec is None:
                if prev is not None:
                    out.append(Event(revision, history.DELETE, k, None, bytes(prev[s:])))
            else:
                out.append(Event(revision, history.PUT, k, rec[s:], None if prev is None else bytes(prev[s:])))
        return out

    def _failed(self, e: Entry, err: Exception) -> CommandFailed:
        """A command that raised: if every node would fail it the same way (it is the command's fault,
        such as a key LMDB cannot hold), it fails alone and its error is its result, so that one bad entry
        never wedges the cluster. A fault of this node (corrupted data, a full or failing disk) is raised:
        applying past it would make this node's state differ from its peers'."""
        if local_fault(err):
            raise err
        if isinstance(err, CommandFailed):  # a lease command's own refusal: its message says it all
            return err
        return CommandFailed(f"the command at index {e.index} cannot be applied: {type(err).__name__}: {err}")
