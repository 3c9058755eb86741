"""One Client shared by threads (a lease's keep-alive thread beside the caller's): its channels are made
once per address, and a thread never sees a channel without its connectivity watch."""

from __future__ import annotations

import threading

from raftkv.client import Client


def test_channels_made_by_concurrent_threads() -> None:
    addresses = [f"127.0.0.1:{port}" for port in range(20000, 20300)]
    c = Client(addresses)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        try:
            for a in addresses:
                c._channel(a)
                assert c._watches[a] is not None  # what `call` reads right after
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors[:3]
        assert len(c._channels) == len(addresses) == len(c._watches)
    finally:
        c.close()
