"""CSI v1 (csi.v1) API: our csi.proto and the stubs generated from it."""
