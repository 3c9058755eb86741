"""`raftkv restore`: the data directory of one member of a NEW cluster, made from a backup file.

Every member of the new cluster is restored from the same file with the same `--peers`; each then starts
with `raftkv serve` and those same `--peers`. What a restored directory holds:

- the file's records, copied verbatim into the state machine's sub-databases (`kv` keeps its own sealed
  records, so every key keeps its value, create and mod revisions and version);
- a **new cluster id**: derived from `--peers` and `--initial-cluster-token` when a token is given (the
  same rule as `raftkv serve`, so a token given to both agrees), else from the file's SHA-256 and
  `--peers`, so every member restored from one file into one member list agrees without talking, and
  the new cluster's id differs from the old one's: an old member that is still alive somewhere is
  refused by the new cluster, and it by the old;
- a **new incarnation** per directory (storage/identity.py), recorded by the new cluster's first leader;
- the member list of `--peers` (voters, addresses), replacing the file's;
- a log compacted at the backup's revision R (its term 1, its membership the new voters), the applied
  index R and a hard state of term 1 with no vote: the new cluster's first entry is R + 1, so revisions
  go on increasing from where the backup left them.

A file that fails its SHA-256 (or any piece its crc) is refused before anything is written: exit 65
NEEDS_OPERATOR (the data needs a person: find an intact copy). A directory that already holds data, an id
not in `--peers`, or bad flags: exit 64 USAGE. A failing disk: exit 75 RETRY.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import msgpack

from .. import exit_codes
from ..backup_file import BackupError, file_sha256, read_backup
from ..storage import LmdbNodeStore, StorageError, cluster_id_for, history
from ..storage.identity import CLUSTER_ID_BYTES, has_data, token_cluster_id
from ..storage.snapshots import SNAPSHOT_DBS
from .members import MemberInfo, MemberRegistry

BACKUP_DBS = SNAPSHOT_DBS
"""The sub-databases a backup carries, in stream order (those of a snapshot)."""
RESTORED_TERM = 1
_U64 = struct.Struct(">Q")


def restored_cluster_id(file_digest: bytes, peers: dict[int, str], token: str) -> bytes:
    """The new cluster's id, the same for every member restored from one file into one member list."""
    if token:
        return token_cluster_id(peers, token)
    spec = ",".join(f"{nid}={addr}" for nid, addr in sorted(peers.items()))
    return hashlib.sha256(b"raftkv-restore|" + file_digest + b"|" + spec.encode()).digest()[:CLUSTER_ID_BYTES]


def restore(file: str, data_dir: str, node_id: int, peers: dict[int, str], token: str = "") -> int:
    """Restore and print one line of what was done; returns the process exit code."""
    def refuse(code: int, msg: str) -> int:
        print(f"Error: {msg}", file=sys.stderr)
        return code

    if not Path(file).is_file():
        return refuse(exit_codes.USAGE, f"{file}: no such backup file")
    if node_id not in peers:
        return refuse(exit_codes.USAGE, f"--id {node_id} is not in --peers ({', '.join(map(str, sorted(peers)))})")
    if has_data(data_dir):
        return refuse(exit_codes.USAGE, f"{data_dir} already holds data: restore into an empty directory "
                                        "(a restore founds a new cluster; it never merges into a member)")
    try:
        header, pieces = read_backup(file)
        for _ in pieces:  # a first pass checks every piece: a bad file is refused before a byte is written
            pass
        digest, _, size = file_sha256(file)
    except BackupError as e:
        return refuse(exit_codes.NEEDS_OPERATOR, f"refusing the backup: {e}")
    if header.revision < 1:
        return refuse(exit_codes.NEEDS_OPERATOR, f"refusing the backup: {file} holds revision 0 (no state)")
    cluster_id = restored_cluster_id(digest, peers, token)
    try:
        records = _write(data_dir, node_id, peers, cluster_id, file)
        check = LmdbNodeStore(data_dir, node_id, cluster_id, founding=cluster_id_for(peers))
        try:
            if check.applied_index() != header.revision:
                return refuse(exit_codes.RETRY, f"{data_dir}: the restored store reads back applied index "
                                                f"{check.applied_index()}, not {header.revision}")
        finally:
            check.close()
    except BackupError as e:  # the file changed between the passes
        return refuse(exit_codes.NEEDS_OPERATOR, f"refusing the backup: {e} (delete {data_dir} before trying again)")
    except StorageError as e:
        return refuse(exit_codes.NEEDS_OPERATOR if "belongs to" in str(e) else exit_codes.RETRY, str(e))
    except OSError as e:
        return refuse(exit_codes.RETRY, f"{data_dir}: {e.strerror or e}")
    print(f"restored revision {header.revision} ({records} records, {size} bytes, sha256 {digest.hex()[:16]}...) "
          f"into {data_dir} as node {node_id} of new cluster {cluster_id.hex()}; start it with the same --peers")
    return exit_codes.OK


def _write(data_dir: str, node_id: int, peers: dict[int, str], cluster_id: bytes, file: str) -> int:
    """Create the store and fill it from the file, piece by piece, in one transaction (memory holds one
    piece; a crash half-way leaves a directory that is refused as holding data already: delete it and
    restore again)."""
    header, pieces = read_backup(file)
    store = LmdbNodeStore(data_dir, node_id, cluster_id, founding=cluster_id_for(peers))
    try:
        if not store.created:
            raise StorageError(f"{data_dir} already holds data")
        voters = sorted(peers)
        conf = [voters, []]
        members = MemberRegistry._encode({nid: MemberInfo(addr) for nid, addr in peers.items()}, cluster_id)
        count = 0
        with store.env.begin(write=True) as txn:
            handles = {name: store.env.open_db(name, txn=txn) for name in header.dbs if name != b"members"}
            for piece in pieces:
                by_db: dict[bytes, list[tuple[bytes, bytes]]] = {}
                for db, k, v in piece:
                    name = header.dbs[db]
                    if name != b"members":  # the new member list replaces the old one
                        by_db.setdefault(name, []).append((k, v))
                for name, pairs in by_db.items():
                    _, added = txn.cursor(db=handles[name]).putmulti(pairs, append=True)
                    if added != len(pairs):
                        raise StorageError(f"the backup's records of {name.decode()} are out of order")
                    count += added
            members_db = store.env.open_db(b"members", txn=txn)
            txn.drop(members_db, delete=False)
            for nid, info in members.items():
                txn.put(_U64.pack(nid), info, db=members_db)
            meta = store.meta_db
            rev = header.revision
            txn.put(b"hardstate", msgpack.packb([RESTORED_TERM, 0, rev]), db=meta)
            txn.put(b"compacted", msgpack.packb([rev, RESTORED_TERM, conf]), db=meta)
            txn.put(b"applied", msgpack.packb([rev, conf]), db=meta)
            txn.put(b"snapmeta", msgpack.packb([rev, RESTORED_TERM, conf, None]), db=meta)
            # No change history before the backup's revision: a watch from earlier is refused (OUT_OF_RANGE
            # naming rev + 1), never served from an empty history as if nothing had changed.
            txn.put(history.FLOOR_KEY, _U64.pack(rev + 1), db=meta)
            txn.put(b"restored_from", msgpack.packb({"revision": rev, "cluster_id": header.cluster_id,
                                                     "node": header.node, "created_unix": header.created_unix}),
                    db=meta)
        return count
    finally:
        store.close()

