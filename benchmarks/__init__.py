"""raftkv's benchmark harness: local raftkv and etcd clusters, a bounded multi-process load generator,
and figures (JSON, markdown, PNG) with the command that reproduces them. See benchmarks/README.md."""
