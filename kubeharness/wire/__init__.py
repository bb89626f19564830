"""Wire definitions (protobuf/gRPC) that kubeharness speaks, with their generated stubs."""
