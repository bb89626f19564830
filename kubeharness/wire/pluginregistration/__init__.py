"""Kubelet plugin registration API v1 (package pluginregistration): our api.proto and its stubs."""
