"""Eviction through the agent on the CRI emulator's virtual clock: an emulated node of 1 GiB whose pods'
memory grows as their khelper behaviour says (``--memory-mib-per-second``), the emulated stats provider's
Summary, the eviction manager's loop every 10 s, the pods' status on ``/pods`` and the events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from tests.conftest import free_port, private_pod_cidr
from tests.test_agent_e2e import NODE, Node, helper, phase, pod

pytestmark = pytest.mark.timeout(300)


async def start(root: Path) -> Node:
    clock = VirtualClock()
    (root / "manifests").mkdir(exist_ok=True)
    cri_config = CriConfig(pod_cidr=private_pod_cidr())
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock)
    await cri.start()
    port = free_port()
    config = AgentConfig.from_dict({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{root / 'cri.sock'}", "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "1s", "readOnlyPort": port, "address": "127.0.0.1", "healthzPort": 0,
        "podLogsDir": str(root / "pods"), "evictionHard": {"memory.available": "300Mi"},
        "evictionPressureTransitionPeriod": "60s", "kubeharnessNodeCapacity": {"memory": "1Gi"},
    }, node_name=NODE, root_dir=str(root / "kubelet"))
    agent = Agent(config, clock)
    await agent.start()
    return Node(root, clock, cri, agent, port, cri_config)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start(tmp_path)
    try:
        yield n
    finally:
        await n.agent.stop()
        await n.cri.stop(grace=0)


def evictable(p: dict[str, Any]) -> dict[str, Any]:
    p["metadata"]["annotations"] = {"kubeharness.io/evictable": "true"}
    return p


def with_resources(c: dict[str, Any], requests: dict[str, str], limits: dict[str, str] | None = None) -> dict[str, Any]:
    c["resources"] = {"requests": requests, **({"limits": limits} if limits else {})}
    return c


def status(pods: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(pods.get(f"{name}-{NODE}", {}).get("status", {}))


async def test_memory_pressure_evicts_best_effort_then_the_burstable_pod_over_its_request(node: Node) -> None:
    grow = ("--memory-mib=400", "--memory-mib-per-second=4")
    node.write("best", evictable(pod("best", helper("x", *grow))))
    node.write("burst", evictable(pod("burst", with_resources(helper("x", *grow), {"memory": "100Mi"}))))
    node.write("guar", evictable(pod("guar", with_resources(
        helper("x", *grow), {"memory": "500Mi", "cpu": "100m"}, {"memory": "500Mi", "cpu": "100m"}))))
    node.write("static", pod("static", helper("x", "--memory-mib=10")))  # static: critical, never evicted
    await node.until(lambda p: all(phase(p, n) == "Running" for n in ("best", "burst", "guar", "static")))
    pods = await node.until(lambda p: phase(p, "best") == "Failed", limit_s=600)
    assert phase(pods, "burst") == "Running" and phase(pods, "guar") == "Running"
    best = status(pods, "best")
    assert best["reason"] == "Evicted"
    assert best["message"].startswith("The node was low on resource: memory. Threshold quantity: 300Mi, available: ")
    assert "Container x was using " in best["message"] and best["message"].endswith(
        ", request is 0, has larger consumption of memory. ")
    disruption = [c for c in best["conditions"] if c["type"] == "DisruptionTarget"]
    assert [(c["status"], c["reason"], c["message"]) for c in disruption] == \
        [("True", "TerminationByKubelet", best["message"])]
    events = [e for e in node.agent.recorder._events.values() if e.reason == "Evicted"]
    assert [(e.pod_name, e.type, e.message) for e in events] == [(f"best-{NODE}", "Warning", best["message"])]
    assert node.agent.eviction.under("MemoryPressure")
    # under memory pressure a new BestEffort pod is refused, a Burstable one admitted
    node.write("late", evictable(pod("late", helper("x"))))
    node.write("late-burst", evictable(pod("late-burst", with_resources(helper("x"), {"memory": "1Mi"}))))
    pods = await node.until(lambda p: phase(p, "late") == "Failed" and bool(phase(p, "late-burst")))
    assert (status(pods, "late")["reason"], status(pods, "late")["message"]) == \
        ("Evicted", "The node had condition: [MemoryPressure]. ")
    assert phase(pods, "late-burst") != "Failed"
    # the burstable pod over its request goes next; with that the node has enough: the guaranteed pod (under
    # its request) and the static pod stay
    pods = await node.until(lambda p: phase(p, "burst") == "Failed", limit_s=600)
    await node.advance(60, step_s=1)
    pods = await node.pods()
    assert phase(pods, "guar") == "Running" and phase(pods, "static") == "Running"
    assert [e.pod.name for e in node.agent.eviction.evictions] == [f"best-{NODE}", f"burst-{NODE}"]


async def test_memory_pressure_clears_after_the_transition_period(node: Node) -> None:
    node.write("hog", evictable(pod("hog", helper("x", "--memory-mib=800", "--memory-mib-per-second=40"))))
    await node.until(lambda p: phase(p, "hog") == "Failed", limit_s=300)
    assert node.agent.eviction.under("MemoryPressure")
    cleared_at = node.clock.now_ns()
    while node.agent.eviction.under("MemoryPressure"):
        await node.advance(5, step_s=1)
        assert node.clock.now_ns() - cleared_at < 200 * 10**9
    held_s = (node.clock.now_ns() - cleared_at) / 1e9
    assert held_s >= 50  # the 60 s transition period, counted from the last pass that saw the pressure
    conditions = {c["type"]: c["status"] for c in node.agent.node_status.conditions()}
    assert conditions["MemoryPressure"] == "False"
