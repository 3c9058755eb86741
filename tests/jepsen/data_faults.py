"""Faults on a node's data rather than its network or process: real bytes in real files of a stopped node.

- a stored value corrupted: one digit of a user value flipped (XOR 1 keeps it a digit, so the workload
  still parses what a node serves and the checkers judge it) inside `data.mdb` itself, at every place the
  record's bytes occur; undone by writing the original record back through LMDB while the node is stopped
  again, and only if the record is still the corrupted one;
- a data directory wiped, or replaced by an old copy of itself: plain file operations on a stopped node.

These are what an operator's mistake or a failing disk do. What raftkv must do about them (refuse to
start, refuse to serve, DATA_LOSS) is for the checkers and the probes to show; nothing here repairs
raftkv's data except the explicit restore on heal.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import lmdb
import msgpack

from raftkv.storage.snapshots import SNAPSHOT_DBS, generation_names

KV_DB = b"kv"
MAP_SIZE = 4 << 30  # raftkv's default map size: opening with a smaller one would fail on a big file


@dataclass
class Corruption:
    """One corrupted record: where its bytes were flipped and what it looked like before and after."""

    data_dir: Path
    key: bytes
    original: bytes  # the record as raftkv stored it
    corrupted: bytes
    value: bytes  # the user value inside it
    bad_value: bytes
    mod_revision: int | None
    offsets: list[int]

    def describe(self) -> dict[str, object]:
        return {"key": self.key.decode(errors="replace"), "value": self.value.decode(errors="replace"),
                "bad_value": self.bad_value.decode(errors="replace"), "mod_revision": self.mod_revision,
                "places": len(self.offsets)}


def _user_value(raw: bytes) -> tuple[bytes, int | None] | None:
    """The user value in a stored kv record, and its mod revision. The record's body is msgpack
    [value, create, mod, version], after a short header if the format has one (e.g. a 4-byte checksum)."""
    for skip in range(0, 9):
        try:
            rec = msgpack.unpackb(raw[skip:], raw=True, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            continue
        if isinstance(rec, (list, tuple)) and len(rec) == 4 and isinstance(rec[0], bytes) \
                and all(isinstance(x, int) for x in rec[1:]):
            return rec[0], rec[2]
    return None


def _live_kv(env: lmdb.Environment) -> bytes:
    """The name of the live generation of `kv`: a node that installed a streamed snapshot serves the other
    one (raftkv/storage/snapshots.py)."""
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        gen = int(txn.get(b"state_gen") or b"0")
    return generation_names(gen)[SNAPSHOT_DBS.index(KV_DB)]


def _records(data_dir: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(data_dir), map_size=MAP_SIZE, max_dbs=16, readonly=True, lock=False, subdir=True)
    try:
        db = env.open_db(_live_kv(env), create=False)
        with env.begin(db=db) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def corrupt_value(data_dir: Path, rng: random.Random) -> Corruption:
    """Flip one digit of one stored value in the `data.mdb` of a stopped node."""
    candidates = []
    for key, raw in _records(data_dir):
        parsed = _user_value(raw)
        if parsed is not None and any(48 <= b <= 57 for b in parsed[0]):
            candidates.append((key, raw, *parsed))
    if not candidates:
        raise RuntimeError(f"no stored value with a digit in {data_dir}")
    key, raw, value, mod = rng.choice(candidates)
    digits = [i for i, b in enumerate(value) if 48 <= b <= 57]
    pos = rng.choice(digits)
    in_raw = raw.find(value) + pos
    path = data_dir / "data.mdb"
    blob = path.read_bytes()
    offsets = _occurrences(blob, key + raw, len(key)) or _occurrences(blob, raw, 0)
    if not offsets:
        raise RuntimeError(f"record of {key!r} not found verbatim in {path}")
    offsets = [o + in_raw for o in offsets]
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(off)
            fh.write(bytes([blob[off] ^ 0x01]))
        fh.flush()
        os.fsync(fh.fileno())
    bad = bytearray(raw)
    bad[in_raw] ^= 0x01
    bad_value = bytearray(value)
    bad_value[pos] ^= 0x01
    return Corruption(data_dir, key, raw, bytes(bad), value, bytes(bad_value), mod, offsets)


def _occurrences(blob: bytes, needle: bytes, skip: int) -> list[int]:
    out, at = [], blob.find(needle)
    while at >= 0:
        out.append(at + skip)
        at = blob.find(needle, at + 1)
    return out


def restore_value(c: Corruption) -> str:
    """On a stopped node: put the original record back if the corrupted one is still there."""
    env = lmdb.open(str(c.data_dir), map_size=MAP_SIZE, max_dbs=16, subdir=True)
    try:
        db = env.open_db(_live_kv(env), create=False)
        with env.begin(write=True, db=db) as txn:
            now = txn.get(c.key)
            if now is None:
                return "gone"
            if bytes(now) != c.corrupted:
                return "changed since"
            txn.put(c.key, c.original)
            return "restored"
    finally:
        env.close()


def wipe_dir(data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)


def copy_dir(data_dir: Path, to: Path) -> None:
    """A copy of a stopped node's data directory (LMDB's files are consistent while nobody writes)."""
    shutil.rmtree(to, ignore_errors=True)
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir, to)


def put_back(copy: Path, data_dir: Path) -> None:
    """Replace a stopped node's data directory by an old copy of it (the copy moves there)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.move(copy, data_dir)
