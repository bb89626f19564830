"""The node's own status (kubelet's ``pkg/kubelet/nodestatus``): capacity, allocatable, conditions and node
info as a ``v1`` Node object, served by the agent while there is no API server to report it to."""
