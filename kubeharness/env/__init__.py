"""Real parts beside the emulators: a local image registry and a containerd the project starts itself.

``kubeharness env up`` builds the pause, busybox and khelper images from local sources, serves them
from a docker-registry on 127.0.0.1 and starts containerd with a generated configuration under a run
directory; ``kubeharness env down`` takes all of it away again.
"""
