"""kubeharness: emulators for what a Kubernetes node talks to (CRI, CSI, CNI), fault injection,
a kubelet-like agent and a node conformance suite."""

__version__ = "0.1.0"
