"""The partition suite: real `raftkv serve` processes in Linux network namespaces, faults injected with
iptables and signals, histories checked for linearizability, lost writes, bank totals, session and
staleness guarantees. `python -m tests.jepsen --help` runs it; `make jepsen` runs the full matrix."""
