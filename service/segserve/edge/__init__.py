"""The only rooms that see protobuf or grpc: servicers, protobuf <-> types, auth, server factory."""
