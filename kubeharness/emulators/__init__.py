"""The emulators: CRI runtime (gRPC), CSI plugin (gRPC) and CNI plugin (executable)."""
