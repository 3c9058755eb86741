"""Real corruption for tests: bytes flipped in a real `data.mdb`, where LMDB keeps them."""

from __future__ import annotations

from pathlib import Path


def flip_value_bytes(data_file: Path, value: bytes) -> int:
    """Flip one byte in the middle of every stored record body holding `value` (msgpack [value, ...]:
    fixarray 4, bin 8 header, the value): the `kv` record and the change history's copies, not the log's
    (a command encodes its value elsewhere than first). Returns how many copies were hit."""
    raw = bytearray(data_file.read_bytes())
    pattern = b"\x94\xc4" + bytes([len(value)]) + value
    hits, at = 0, raw.find(pattern)
    while at >= 0:
        raw[at + 3 + len(value) // 2] ^= 0x20
        hits += 1
        at = raw.find(pattern, at + 1)
    data_file.write_bytes(bytes(raw))
    return hits
