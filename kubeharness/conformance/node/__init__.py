"""The node conformance suite's machinery: node targets (an agent on the emulator or on containerd, a kubelet
binary, a kind node), the specs' view of them, and the pytest plugin that picks one.

The specs live in ``conformance/node``; run them with ``pytest conformance/node --node-target=agent
--runtime=emulator`` (the default) or ``--runtime=containerd``.
"""
