"""The fault-injecting CRI proxy: a CRI endpoint that forwards every call to a real runtime and applies
fault plans on the way (``kubeharness cri proxy``)."""
