"""How the `kv` sub-database holds its records: checksummed, and with keys of any length.

**Checksums.** A stored record is `crc32 (4 bytes, big-endian) || body`, the body being msgpack
[value, create_revision, mod_revision, version], and the crc covering the full key and the body. It is
verified on every read, so a flipped byte in `data.mdb` is refused (CorruptionError naming the node, the
file and the key), never served, applied over or copied into a snapshot.

**Long keys.** LMDB refuses keys over 511 bytes, but clients may send keys up to `--max-key-bytes` (etcd
takes keys of any length inside its request limit). So a key shorter than `BUCKET_THRESHOLD` bytes is
stored as itself, and every key of `BUCKET_THRESHOLD` bytes or more is stored inside a *bucket*: one LMDB
record under the key's first `BUCKET_THRESHOLD` bytes, holding the sorted full keys that share that
prefix, each with its own sealed record. The bucket is sealed as well (its crc covers the prefix).

LMDB's order of its keys is the lexical order of the full keys: a plain key is shorter than every bucket
prefix, so it differs from a prefix within its own length or is a proper prefix of it, and in both
cases it compares to the prefix as it compares to every full key under it; two prefixes of equal length
differ within that length, and so do all their full keys. Scans therefore walk LMDB in order and open
each bucket in place.

A bucket is rewritten whole when one of its keys changes: fine for keys that share 480 bytes now and
then, costly if thousands do (each such write rewrites them all).
"""

from __future__ import annotations

import bisect
import struct
import zlib

import msgpack

from .errors import CorruptionError

BUCKET_THRESHOLD = 480
"""Keys this long or longer live in buckets under their first BUCKET_THRESHOLD bytes (< LMDB's 511)."""

_CRC = struct.Struct(">I")
SEAL_BYTES = _CRC.size


def show_key(key: bytes) -> str:
    """A key as an operator reads it in one line: its first bytes and, if long, its length."""
    if len(key) <= 40:
        return repr(bytes(key))
    return f"{bytes(key[:40])!r}... ({len(key)} bytes)"


def seal(key: bytes, body: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(body, zlib.crc32(key))) + body


def unseal(key: bytes, record: bytes, where: str) -> bytes:
    """The body of `record`, stored under `key`; CorruptionError if its checksum does not match."""
    if len(record) < SEAL_BYTES or _CRC.unpack_from(record)[0] != zlib.crc32(
            memoryview(record)[SEAL_BYTES:], zlib.crc32(key)):
        raise CorruptionError(f"{where}: the stored record of key {show_key(key)} fails its checksum "
                              "(data corrupted on disk)")
    return bytes(record[SEAL_BYTES:])


def check(key: bytes, record: bytes, where: str) -> None:
    unseal(key, record, where)


def open_bucket(prefix: bytes, raw: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """The (full key, sealed record) pairs of a bucket, sorted by key, checked against the bucket's seal."""
    if len(raw) < SEAL_BYTES or _CRC.unpack_from(raw)[0] != zlib.crc32(memoryview(raw)[SEAL_BYTES:],
                                                                      zlib.crc32(prefix)):
        raise CorruptionError(f"{where}: the bucket of keys starting with {show_key(prefix)} fails its checksum "
                              "(data corrupted on disk)")
    try:
        pairs = msgpack.unpackb(memoryview(raw)[SEAL_BYTES:])
        return [(bytes(k), bytes(r)) for k, r in pairs]
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CorruptionError(f"{where}: the bucket of keys starting with {show_key(prefix)} cannot be decoded "
                              "(data corrupted on disk)") from None


def close_bucket(prefix: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    return seal(prefix, msgpack.packb([[k, r] for k, r in pairs], use_bin_type=True))


def bucket_set(pairs: list[tuple[bytes, bytes]], key: bytes, record: bytes | None) -> list[tuple[bytes, bytes]]:
    """`pairs` with `key` set to `record` (removed when None), still sorted."""
    keys = [k for k, _ in pairs]
    i = bisect.bisect_left(keys, key)
    present = i < len(keys) and keys[i] == key
    out = list(pairs)
    if record is None:
        if present:
            del out[i]
    elif present:
        out[i] = (key, record)
    else:
        out.insert(i, (key, record))
    return out
