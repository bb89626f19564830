"""The CSI emulator: a CSI v1 plugin (Identity, Controller, Node) that behaves like a correct driver and
misbehaves on purpose under a fault plan (``kubeharness csi serve``)."""
