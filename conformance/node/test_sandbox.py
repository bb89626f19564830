"""Node specs: the pod sandbox (kubelet's pause container and the pod's network namespace).

As test/e2e/common/node's pod and container specs: one sandbox holds a pod's network for all its
containers and for all their restarts. Seen from outside through what the node reports (``/pods``) and its
runtime's sandboxes (CRI ListPodSandbox).
"""

from __future__ import annotations

from kubeharness.conformance.node.pods import container, khelper, pod, restarts, status
from kubeharness.conformance.node.target import NodeTarget, Pods


async def test_the_pause_sandbox_outlives_its_crashing_container(node: NodeTarget) -> None:
    node.write("crashing", pod("crashing", khelper("app", "--exit-after=1s", "--exit-code=1")))
    name = node.pod_name("crashing")
    await node.until(lambda p: restarts(p, name, "app") >= 1, 120, "the first restart")
    first = await node.sandboxes(name)
    assert len(first) == 1 and first[0][1], f"one ready sandbox, not {first}"
    await node.until(lambda p: restarts(p, name, "app") >= 3, 180, "three restarts")
    assert await node.sandboxes(name) == first  # the same sandbox, still ready: only the container was restarted


async def test_containers_of_a_pod_share_its_network(node: NodeTarget) -> None:
    # the client's readiness probe goes to the pod's IP, port 8080, where only the server listens: it
    # succeeds because the two containers are in one network namespace, the sandbox's
    client = khelper("client")
    client["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2}
    node.write("shared", pod("shared", khelper("server", "--http-port=8080"), client))
    name = node.pod_name("shared")

    def both_ready(pods: Pods) -> bool:
        return all(container(pods, name, c).get("ready") for c in ("server", "client"))

    pods = await node.until(both_ready, 60, "the client ready through the server's port")
    assert status(pods, name).get("podIP") and len(await node.sandboxes(name)) == 1
