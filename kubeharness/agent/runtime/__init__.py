"""Carrying pods out through CRI: the runtime client, kubelet's computePodActions, crash-loop back-off, the
SyncPod/KillPod steps, lifecycle hooks and termination messages."""
