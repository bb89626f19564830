"""Where things are in a kind node: the paths, port and socket the kind target and the stand-in share."""

MANIFESTS = "/etc/kubernetes/manifests"  # the kubelet's staticPodPath
POD_LOGS = "/var/log/pods"  # the kubelet's podLogsDir
READ_ONLY_PORT = 10255  # kind's kubelet has it off: the cluster's configuration turns it on (README)
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
