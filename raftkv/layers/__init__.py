"""What users choose per request, layered on the one Raft log: write acknowledgement levels, read
consistency levels, session tokens, replication-lag monitoring. Plain logic with time passed in, so the
server drives it and tests exercise it directly."""
