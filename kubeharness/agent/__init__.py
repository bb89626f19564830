"""The node agent: a kubelet-compatible core in Python that runs pods through CRI and reports their status.

It is configured like kubelet (a ``KubeletConfiguration`` file), takes pods from the same sources (static
pod files, an HTTP URL), and serves kubelet's read-only endpoints, so the same tests drive it or a real
kubelet. It reaches the runtime only over CRI; it never imports the emulators.
"""
