"""The eviction manager (kubelet's ``pkg/kubelet/eviction``): keeps the node alive when memory, disk or PIDs run low.

- ``signals``: eviction signals, the observations made from a stats Summary, thresholds met, Go's quantity
  strings for messages.
- ``rank``: the rankers, plain comparison functions composed per resource.
- ``manager``: :class:`~kubeharness.agent.eviction.manager.EvictionManager`, whose ``synchronize`` is one pass
  (observe, decide, reclaim node-level resources, evict at most one pod), its loop on the agent's clock,
  the node conditions (MemoryPressure, DiskPressure, PIDPressure) and the admission of new pods under
  pressure.
"""
