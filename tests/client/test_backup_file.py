"""The backup file format (raftkv/backup_file.py): what it accepts, and that it refuses a file that is
damaged, truncated or re-sealed around a bad piece, in one line naming the file."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgpack
import pytest

from raftkv.backup_file import BackupError, BackupHeader, BackupWriter, read_backup, summarize
from raftkv.storage import ha_commands
from raftkv.storage.alarms import AlarmTable
from raftkv.storage.commands import decode


def write(path: Path, pieces: list[list[object]], crc_of=zlib.crc32) -> None:
    w = BackupWriter()
    out = w.header(BackupHeader(42, 3, b"\x01" * 16, [1, 2, 3], [], [b"members", b"kv"], 2, 0.0))
    for flat in pieces:
        data = msgpack.packb(flat, use_bin_type=True)
        out += w.piece(data, crc_of(data), len(flat) // 3)
    path.write_bytes(out + w.end())


def test_a_whole_file_reads_back(tmp_path: Path) -> None:
    f = tmp_path / "b.snap"
    write(f, [[1, b"a", b"x" * 8, 1, b"b", b"y" * 8], [0, b"\0" * 7 + b"\1", msgpack.packb({"address": "h:1"})]])
    s = summarize(f)
    assert (s.header.revision, s.records, s.keys, s.members) == (42, 3, 2, {1: "h:1"})
    assert s.size == f.stat().st_size and len(s.sha256) == 64


@pytest.mark.parametrize("damage", ["flip", "truncate", "bad-piece"])
def test_a_damaged_file_is_refused(tmp_path: Path, damage: str) -> None:
    f = tmp_path / "b.snap"
    if damage == "bad-piece":  # sealed correctly around a piece whose own crc is wrong
        write(f, [[1, b"a", b"x"]], crc_of=lambda d: zlib.crc32(d) ^ 1)
        want = "piece 0 fails its checksum"
    else:
        write(f, [[1, b"a", b"x"]])
        data = bytearray(f.read_bytes())
        if damage == "flip":
            data[30] ^= 0x10
            want = "fails its SHA-256"
        else:
            data = data[:-10]
            want = "no seal"
        f.write_bytes(bytes(data))
    with pytest.raises(BackupError) as e:
        _, pieces = read_backup(f)
        list(pieces)
    assert want in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_ha_commands_round_trip_and_alarms_apply_once() -> None:
    for cmd in (ha_commands.HashKV(), ha_commands.AlarmRaise("CORRUPT", 2, 9, "m"),
                ha_commands.AlarmDisarm("CORRUPT", 0)):
        assert decode(ha_commands.encode(cmd)) == cmd
    with pytest.raises(ValueError):
        decode(msgpack.packb(["ha", "CORRUPT"]))
    t = AlarmTable()
    t.apply(ha_commands.AlarmRaise("CORRUPT", 2, 9, "m"))
    t.apply(ha_commands.AlarmRaise("CORRUPT", 2, 11, "again"))  # re-applied after a crash: the same
    assert [(a.member, a.revision) for a in AlarmTable(t.encode()).all()] == [(2, 9)]
    t.apply(ha_commands.AlarmDisarm("CORRUPT", 0))
    assert t.all() == []
