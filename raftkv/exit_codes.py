"""Exit codes of `raftkv serve`, chosen so a supervisor can tell "restart me" from "call an operator".

They follow the BSD sysexits convention that supervisors and init systems already know:

| code | name | meaning | what a supervisor does |
|---|---|---|---|
| 0 | OK | stopped on SIGTERM / SIGINT | nothing |
| 64 | USAGE | a flag or setting makes no sense | nothing: fix the command line |
| 65 | NEEDS_OPERATOR | data fails its checksum, is truncated, belongs to another node, cluster or incarnation, or this member was removed or its data replaced | never restart automatically |
| 75 | RETRY | a transient fault: an I/O error, the port or data directory in use, the host loop stopped | restart with backoff, a bounded number of times |

`raftkv dev` and the Kubernetes manifests restart only RETRY.
"""

from __future__ import annotations

OK = 0
USAGE = 64
NEEDS_OPERATOR = 65
RETRY = 75

RESTARTABLE = frozenset({RETRY})
