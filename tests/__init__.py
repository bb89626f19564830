"""kubeharness's own tests (the conformance suite lives in kubeharness.conformance)."""
