"""Pod admission beside the eviction manager's: kubelet's ``pkg/kubelet/lifecycle`` (``predicate``)."""
