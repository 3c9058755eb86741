"""Command-line entry points: `raftkv` (serve, dev) and `kv` (the client tool)."""
