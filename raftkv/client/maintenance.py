"""The Maintenance service from the client side: backups to a file, divergence checks, alarms."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ..backup_file import BackupError, BackupSummary, summarize
from ..proto import maintenance_pb2 as mpb
from ..proto import maintenance_pb2_grpc
from .errors import RaftKVError, from_rpc_error
from .sync_client import Client


class _Unreachable(Exception):
    """An endpoint that could not be reached before any byte of the backup arrived: try the next."""


class MaintenanceClient(Client):
    """A `Client` whose admin calls go to the Maintenance service (leader discovery and retries as usual)."""

    def _stub(self, address: str, admin: bool) -> Any:
        if admin:
            return maintenance_pb2_grpc.MaintenanceStub(self._channel(address))
        return super()._stub(address, admin)

    def save_snapshot(self, path: str | Path, endpoint: str | None = None,
                      progress: Callable[[int, int, int], None] | None = None,
                      timeout: float | None = None) -> BackupSummary:
        """Stream a backup from `endpoint` (default: the first endpoint that answers, in order) into `path`,
        verify it whole, and only then give it its name (`path`.part meanwhile, removed on failure).
        `progress(bytes so far, size estimate, revision)` is called as chunks arrive."""
        addresses = [endpoint] if endpoint else list(self.endpoints.addresses)
        for i, address in enumerate(addresses):
            try:
                return self._save_from(address, Path(path), progress, timeout)
            except _Unreachable as e:
                if i == len(addresses) - 1:
                    raise RaftKVError(f"no endpoint could send a backup; last: {e}") from None
        raise RaftKVError("no endpoint given")

    def _save_from(self, address: str, target: Path, progress: Callable[[int, int, int], None] | None,
                   timeout: float | None) -> BackupSummary:
        part = target.with_name(target.name + ".part")
        stub = maintenance_pb2_grpc.MaintenanceStub(self._channel(address))
        received = estimate = revision = 0
        try:
            with open(part, "wb") as f:
                for chunk in stub.SnapshotSave(mpb.SnapshotSaveRequest(), timeout=timeout or self.timeout):
                    if chunk.revision:
                        revision, estimate = chunk.revision, chunk.size_estimate
                    f.write(chunk.data)
                    received += len(chunk.data)
                    if progress is not None:
                        progress(received, estimate, revision)
                f.flush()
                os.fsync(f.fileno())
            summary = summarize(part)
            os.replace(part, target)
            return summary
        except grpc.RpcError as e:
            if received == 0 and e.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                raise _Unreachable(f"{address}: {e.details()}") from None  # type: ignore[attr-defined]
            raise from_rpc_error(e) from None
        except BackupError as e:
            raise RaftKVError(f"the backup received from {address} does not check out: {e}") from None
        except OSError as e:
            raise RaftKVError(f"cannot write {part}: {e.strerror or e}") from None
        finally:
            if part.exists():
                part.unlink()

    def hash_kv(self) -> mpb.HashKVResponse:
        return self.call("HashKV", mpb.HashKVRequest(), "txn", admin=True)

    def check_hash(self, timeout: float | None = None) -> mpb.CheckHashResponse:
        return self.call("CheckHash", mpb.CheckHashRequest(), "txn", admin=True, timeout=timeout)

    def alarms(self, endpoint: str | None = None) -> mpb.AlarmListResponse:
        return self.call("AlarmList", mpb.AlarmListRequest(), "read", admin=True, endpoint=endpoint)

    def disarm(self, kind: str = "CORRUPT", member_id: int = 0) -> mpb.AlarmListResponse:
        return self.call("AlarmDisarm", mpb.AlarmDisarmRequest(type=kind, member_id=member_id), "txn", admin=True)
