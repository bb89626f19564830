"""A kind cluster's node from outside, through its Docker engine: files, commands and a CRI bridge.

A kind node is a Docker container running a kubelet and containerd. :mod:`.transport` reaches it with the
Docker SDK (put and read files, run commands, open a byte stream to a program inside); :mod:`.bridge`
carries a local unix socket to the node's containerd socket over ``docker exec``, so that any CRI client
(the conformance suite, ``kubeharness bench cri``) reaches it; :mod:`.standin` makes, for these machines
(where kind's privileged nodes cannot run), an unprivileged container of our own that stands in for a
node: a CRI emulator and our agent where kind has containerd and a kubelet.
"""
