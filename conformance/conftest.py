"""The CRI conformance suite: run with ``pytest conformance`` (emulator) or add ``--cri-endpoint unix://...``."""

pytest_plugins = ["kubeharness.conformance.plugin"]
