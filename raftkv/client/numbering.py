"""Exactly-once numbering of a client's writes (storage/sessions.py): the client's session, registered
through the log on its first write, and the sequence number each put, delete or transaction gets. A
number is given once per logical write and kept across its retries, which is what lets the cluster tell
a retry from a new write."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from ..proto.stubs import overload_pb2 as opb
from .errors import RaftKVError

NUMBERED = frozenset({"Put", "Delete", "Txn"})


class Numbering:
    def __init__(self, enabled: bool, ttl_s: int) -> None:
        self.enabled = enabled
        self.ttl_s = ttl_s
        self.session_id = 0
        self._seq = itertools.count(1)
        self.lock = threading.Lock()

    def wanted(self, method: str, request: Any) -> bool:
        return self.enabled and method in NUMBERED and not request.write.client_session

    def register_request(self) -> opb.RegisterSessionRequest:
        return opb.RegisterSessionRequest(ttl_seconds=self.ttl_s)

    def number(self, request: Any) -> bool:
        """Give `request` this session's next sequence number (in its WriteOptions)."""
        request.write.client_session = self.session_id
        request.write.sequence = next(self._seq)
        return True

    def failed(self, err: RaftKVError) -> None:
        """A session the cluster no longer holds (it expired): the next write registers a new one."""
        if err.reason == "SESSION_UNKNOWN":
            self.session_id = 0
            self._seq = itertools.count(1)
