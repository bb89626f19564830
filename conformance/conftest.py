"""The conformance suites: CRI (``pytest conformance --ignore=conformance/node``, emulator, or add
``--cri-endpoint unix://...``) and node (``pytest conformance/node --node-target=agent --runtime=emulator``)."""

pytest_plugins = ["kubeharness.conformance.plugin", "kubeharness.conformance.node.plugin"]
