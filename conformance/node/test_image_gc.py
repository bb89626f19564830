"""Node specs: image garbage collection by age (kubelet's imageMaximumGCAge, the ImageMaximumGCAge feature).

Kubelet's image GC runs at its start and every 5 minutes (ImageGCPeriod); with ``imageMaximumGCAge`` set, a
pass removes every image that no container has used for longer than that, whatever the disk usage, once
the kubelet itself has run that long; an image a container uses stays. Followed on a virtual clock; on a
real clock it takes 5 to 9 minutes, so it runs there with ``--node-long``.
"""

from __future__ import annotations

import pytest

from kubeharness.conformance.node.pods import khelper, phase, pod
from kubeharness.conformance.node.target import BUSYBOX, KHELPER, NodeTarget

GC_PERIOD_S = 300  # kubelet's ImageGCPeriod
MAX_AGE_S = 180  # above imageMinimumGCAge (2 minutes by default), as kubelet requires


@pytest.mark.timeout(900)
@pytest.mark.node_long("5 to 9 minutes")
@pytest.mark.node_config(imageMaximumGCAge="3m")
async def test_an_image_unused_for_longer_than_the_maximum_age_is_removed_and_one_in_use_stays(
        node: NodeTarget) -> None:
    node.write("keeper", pod("keeper", khelper("app")))  # uses khelper all along
    node.write("brief", pod("brief", {"name": "once", "image": BUSYBOX, "command": ["true"]}, restart="Never"))
    brief = node.pod_name("brief")
    await node.until(lambda p: phase(p, brief) == "Succeeded", 120, "the busybox pod done")
    node.remove("brief")  # its container goes with it: from then on no container uses busybox
    await node.until(lambda p: brief not in p, 120, "the busybox pod gone")
    assert BUSYBOX in await node.images()
    began = node.elapsed_s()
    deadline = GC_PERIOD_S + MAX_AGE_S + 60  # the first pass once the kubelet has run and the image idled 3 min
    while BUSYBOX in await node.images():
        assert node.elapsed_s() - began < deadline, f"{BUSYBOX} still there {deadline} s after its last use"
        await node.wait(node.poll_s * 10)
    # not before it had been unused for the maximum age
    idle = node.elapsed_s() - began
    assert idle >= MAX_AGE_S - node.poll_s * 10, f"{BUSYBOX} removed after {idle:g} s unused"
    assert KHELPER in await node.images()  # in use by the keeper: never a candidate
