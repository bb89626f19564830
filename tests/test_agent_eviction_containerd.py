"""A memory eviction through the agent on real containerd and the real clock, as kubelet's own node tests make
one (``test/e2e_node/eviction_test.go``): the hard ``memory.available`` threshold is set just under what the
host has available now, and a small container that allocates a little more than that margin crosses it.

One ``kubeharness env up`` (containerd, runc, the bridge CNI network, the khelper image); the agent reads the
host's figures (no ``kubeharnessNodeCapacity``: the host stats provider, the root cgroup's working set). The
host's available memory moves on a loaded machine, so the margin is generous: the threshold is 200Mi under
what was available when the test began and the container allocates 600Mi; the pod carries
``kubeharness.io/evictable: "true"`` (a static pod is critical otherwise). Afterwards the manifest is removed
and nothing of the pod is left in containerd. Root and the Debian packages of ci/setup-env are required.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.pod.labels import POD_NAMESPACE
from kubeharness.agent.pod.quantity import to_units
from kubeharness.agent.stats.host import meminfo, memory_working_set
from kubeharness.clock import RealClock
from kubeharness.conformance.node.agentnode import kubelet_config
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env, free_port
from tests.test_agent_e2e import NODE, helper, http_get, pod

pytestmark = [pytest.mark.xdist_group("containerd"), pytest.mark.timeout(420)]

NAMESPACE = "eviction-containerd"
MI = 2**20
MARGIN_MI, ALLOCATE_MI = 200, 600


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with containerd_env(tmp_path_factory.mktemp("env")) as socket:
        yield socket


async def leftovers(endpoint: str) -> list[str]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        runtime = api_grpc.RuntimeServiceStub(channel)
        selector = {POD_NAMESPACE: NAMESPACE}
        sandboxes = await runtime.ListPodSandbox(api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(label_selector=selector)), timeout=30)
        containers = await runtime.ListContainers(api.ListContainersRequest(
            filter=api.ContainerFilter(label_selector=selector)), timeout=30)
    return [s.id for s in sandboxes.items] + [c.id for c in containers.containers]


async def wait(what: str, check: Callable[[], Awaitable[bool]], limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        await asyncio.sleep(0.5)


def available_mi() -> int:
    """What the host has available now, as the agent's host stats compute memory.available."""
    info = meminfo()
    return (info.get("MemTotal", 0) - memory_working_set(info)) // MI


async def test_a_container_allocating_past_the_threshold_is_evicted_on_containerd(
        endpoint: str, tmp_path: Path, record_testsuite_property: Callable[[str, object], None]) -> None:
    available = available_mi()
    if available < 2 * ALLOCATE_MI:
        pytest.skip(f"the host has only {available}Mi available; the test allocates {ALLOCATE_MI}Mi")
    threshold = f"{available - MARGIN_MI}Mi"
    (tmp_path / "manifests").mkdir()
    port = free_port()
    config = AgentConfig.from_dict(kubelet_config(endpoint, tmp_path, port, {
        "evictionHard": {"memory.available": threshold}, "evictionPressureTransitionPeriod": "30s",
    }), node_name=NODE, root_dir=str(tmp_path / "kubelet"))
    agent = Agent(config, RealClock())
    await agent.start()
    manifest = tmp_path / "manifests" / "hog.json"
    try:
        spec = pod("hog", helper("x", f"--memory-mib={ALLOCATE_MI}"), grace=2)
        spec["metadata"]["namespace"] = NAMESPACE
        spec["metadata"]["annotations"] = {"kubeharness.io/evictable": "true"}
        manifest.write_text(json.dumps(spec))
        begun = time.monotonic()
        name = f"hog-{NODE}"
        last: dict[str, Any] = {}

        async def failed() -> bool:
            status, body = await http_get(port, "/pods")
            assert status == 200
            items = {i["metadata"]["name"]: i for i in json.loads(body)["items"]}
            last.update(items.get(name, {}).get("status", {}))
            return last.get("phase") == "Failed"

        await wait("eviction", failed, limit_s=240)
        record_testsuite_property("containerd_memory_eviction_s", round(time.monotonic() - begun, 1))
        assert last["reason"] == "Evicted"
        message = last["message"]
        prefix = f"The node was low on resource: memory. Threshold quantity: {threshold}, available: "
        assert message.startswith(prefix), message
        suffix = ", request is 0, has larger consumption of memory. "
        assert "Container x was using " in message and message.endswith(suffix), message
        using = message[message.index("Container x was using ") + len("Container x was using "):-len(suffix)]
        assert to_units(using, "usage") >= (ALLOCATE_MI - 100) * MI, message  # the container's own allocation
        assert [(c["status"], c["reason"], c["message"]) for c in last["conditions"]
                if c["type"] == "DisruptionTarget"] == [("True", "TerminationByKubelet", message)]
        status, body = await http_get(port, "/events")
        assert status == 200
        evicted = [e for e in json.loads(body)["items"] if e["reason"] == "Evicted"]
        assert [(e["involvedObject"]["name"], e["type"], e["message"]) for e in evicted] == \
            [(name, "Warning", message)]
        # the evicted pod is not started again: its container stays terminated
        await asyncio.sleep(5)
        assert await failed()
        assert all("running" not in c.get("state", {}) for c in last.get("containerStatuses", []))
        assert [e.pod.name for e in agent.eviction.evictions] == [name]
    finally:
        manifest.unlink(missing_ok=True)

        async def gone() -> bool:
            return not await leftovers(endpoint)

        try:
            await wait("pod removed from containerd", gone, limit_s=120)
        finally:
            await agent.stop()
