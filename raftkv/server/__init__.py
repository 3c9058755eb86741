"""The node host: one asyncio loop driving the pure core, LMDB storage and the gRPC transport."""
