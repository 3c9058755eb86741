"""Witness topologies for the partition suite: `--topology 2+1` (2 data nodes + 1 witness) and `4+1`.

The witnesses are the highest slots. Every founder is told who they are (`--witnesses`, beside
`--peers`), and a witness is started with `--witness`; a node that rejoins under a new id after the
membership nemesis removed it comes back as a data node (no witness flags). The `kill-data` nemesis kills
-9 any one data node and restarts it: a witness topology must keep taking majority writes meanwhile
and lose none of those it acknowledged (the register and ack-levels checkers)."""

from __future__ import annotations

from dataclasses import dataclass

TOPOLOGIES = ("2+1", "4+1")


@dataclass(frozen=True, slots=True)
class WitnessTopology:
    data: int
    witnesses: int

    @property
    def nodes(self) -> int:
        return self.data + self.witnesses

    @property
    def witness_slots(self) -> frozenset[int]:
        return frozenset(range(self.data + 1, self.nodes + 1))

    @property
    def data_slots(self) -> list[int]:
        return list(range(1, self.data + 1))

    def flags(self, slot: int) -> list[str]:
        """The founding flags of the node in `slot` (identical --witnesses on every founder)."""
        out = ["--witnesses", ",".join(str(s) for s in sorted(self.witness_slots))]
        return out + (["--witness"] if slot in self.witness_slots else [])


def parse_topology(text: str) -> WitnessTopology:
    """`2+1` -> 2 data nodes and 1 witness. Refuses anything without a data majority among voters."""
    try:
        data, witnesses = (int(x) for x in text.split("+"))
    except ValueError:
        raise ValueError(f"topology {text!r} must look like DATA+WITNESSES, e.g. 2+1") from None
    if data < 1 or witnesses < 1:
        raise ValueError(f"topology {text!r} needs at least one data node and one witness")
    if witnesses >= data:
        raise ValueError(f"topology {text!r}: witnesses must be fewer than data nodes")
    return WitnessTopology(data, witnesses)
