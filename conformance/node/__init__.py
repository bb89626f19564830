"""The node conformance specs (see kubeharness.conformance.node)."""
