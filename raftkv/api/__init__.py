"""gRPC services for clients (KV) and operators (Admin): validation, read levels, error mapping."""
