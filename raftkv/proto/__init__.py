"""Generated gRPC stubs (from proto/raftkv/v1 by `make proto`); see generate.py. Import them through
`raftkv.proto.stubs`, which says what to do when they have not been generated yet."""
