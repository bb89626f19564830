"""Kubernetes CRI runtime.v1 API: our api.proto and the stubs generated from it."""
