"""The agent end to end against the CRI emulator, driven only through its interfaces: manifests written
into staticPodPath, the pods read back from ``/pods`` over HTTP. Agent and emulator share a virtual clock,
so minutes of crash-loop backoff take a second."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.clock import VirtualClock
from kubeharness.conformance.node.agentnode import settle
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.faults import FaultEngine
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import free_port, private_pod_cidr
from tests.promtext import value

IMAGE = "kubeharness.test/khelper:1"
NODE = "node-1"


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@dataclass
class Node:
    root: Path
    clock: VirtualClock
    cri: CriServer
    agent: Agent
    port: int
    cri_config: CriConfig

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def write(self, name: str, pod: dict[str, Any]) -> None:
        (self.manifests / f"{name}.json").write_text(json.dumps(pod))

    async def pods(self) -> dict[str, dict[str, Any]]:
        status, body = await http_get(self.port, "/pods")
        assert status == 200
        return {item["metadata"]["name"]: item for item in json.loads(body)["items"]}

    async def until(self, check: Callable[[dict[str, dict[str, Any]]], bool], limit_s: float = 900,
                    step_s: float = 0.25) -> dict[str, dict[str, Any]]:
        """Advance the virtual clock until ``check(/pods)`` holds; the pods then."""
        waited = 0.0
        while True:
            pods = await self.pods()
            if check(pods):
                return pods
            assert waited < limit_s, f"not reached within {limit_s} virtual seconds: {json.dumps(pods)[:3000]}"
            await self.settle()
            await self.clock.advance(step_s)
            waited += step_s
            for _ in range(3):
                await asyncio.sleep(0.002)

    async def settle(self, limit_s: float = 10.0) -> None:
        """Let the agent's probes and quick CRI calls under way finish before the virtual clock moves on."""
        await settle(self.agent, limit_s)

    async def advance(self, seconds: float, step_s: float = 0.25) -> None:
        """Move the virtual clock by ``seconds`` in steps, settling probes before each."""
        moved = 0.0
        while moved < seconds:
            await self.settle()
            await self.clock.advance(min(step_s, seconds - moved))
            moved += step_s
            for _ in range(3):
                await asyncio.sleep(0.002)

    async def sandboxes(self) -> list[api.PodSandbox]:
        async with self.channel() as channel:
            return list((await api_grpc.RuntimeServiceStub(channel).ListPodSandbox(api.ListPodSandboxRequest())).items)

    def channel(self) -> Any:
        import grpc

        return grpc.aio.insecure_channel(f"unix://{self.root / 'cri.sock'}")


def pod(name: str, *containers: dict[str, Any], restart: str = "Always", init: list[dict[str, Any]] | None = None,
        grace: int = 30) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers), "restartPolicy": restart,
                            "terminationGracePeriodSeconds": grace}
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def helper(name: str, *flags: str) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": ["/khelper", *flags]}


def phase(pods: dict[str, dict[str, Any]], name: str) -> str:
    return str(pods.get(f"{name}-{NODE}", {}).get("status", {}).get("phase", ""))


def container(pods: dict[str, dict[str, Any]], name: str, index: int = 0, init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    statuses = pods.get(f"{name}-{NODE}", {}).get("status", {}).get(key, [])
    return statuses[index] if len(statuses) > index else {}


async def start_node(root: Path, clock: VirtualClock | None = None, kubelet: dict[str, Any] | None = None,
                     faults: FaultEngine | None = None) -> Node:
    """An emulator (with ``faults``, if given) and an agent on one virtual clock; ``kubelet`` adds
    KubeletConfiguration fields."""
    clock = clock or VirtualClock()
    (root / "manifests").mkdir(exist_ok=True)
    cri_config = CriConfig(pod_cidr=private_pod_cidr())
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock, faults)
    await cri.start()
    port = free_port()
    config = AgentConfig.from_dict({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{root / 'cri.sock'}", "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "5s", "readOnlyPort": port, "address": "127.0.0.1", "healthzPort": 0,
        "podLogsDir": str(root / "pods"), "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
        **(kubelet or {}),
    }, node_name=NODE, root_dir=str(root / "kubelet"))
    agent = Agent(config, clock)
    await agent.start()
    return Node(root, clock, cri, agent, port, cri_config)


async def stop_node(node: Node) -> None:
    await node.agent.stop()
    await node.cri.stop(grace=0)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


async def test_a_pod_starts_and_is_running_with_an_ip(node: Node) -> None:
    node.write("web", pod("web", helper("app", "--http-port=8080")))
    pods = await node.until(lambda p: phase(p, "web") == "Running")
    status = pods[f"web-{NODE}"]["status"]
    assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(node.cri_config.pod_cidr)
    app = status["containerStatuses"][0]
    assert (app["name"], app["ready"], app["restartCount"], "running" in app["state"]) == ("app", True, 0, True)
    assert app["containerID"].startswith("kubeharness://") and app["image"] == IMAGE
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
                          "ContainersReady": "True", "Ready": "True"}
    assert status["qosClass"] == "BestEffort"
    (sandbox,) = await node.sandboxes()
    assert sandbox.metadata.name == f"web-{NODE}" and sandbox.labels["io.kubernetes.pod.uid"] == \
        pods[f"web-{NODE}"]["metadata"]["uid"]
    status_code, body = await http_get(node.port, "/metrics")
    assert status_code == 200
    assert value(body, "kubelet_runtime_operations_total", operation_type="run_podsandbox") == 1
    # the emulator has an event stream: the agent follows it (one stream, open the whole time)
    assert value(body, "kubelet_runtime_operations_total", operation_type="get_container_events") == 1
    assert (await http_get(node.port, "/healthz")) == (200, b"ok")


async def test_a_crashing_container_restarts_with_kubelets_backoff(node: Node) -> None:
    node.write("crash", pod("crash", helper("app", "--exit-after=1s", "--exit-code=3")))
    restarts: list[tuple[int, float]] = []
    saw_backoff = False

    def progress(pods: dict[str, dict[str, Any]]) -> bool:
        nonlocal saw_backoff
        app = container(pods, "crash")
        count = int(app.get("restartCount", -1))
        if count >= 0 and (not restarts or restarts[-1][0] != count):
            restarts.append((count, node.clock.now_ns() / 1e9))
        saw_backoff |= app.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
        return count >= 4

    await node.until(progress, limit_s=600, step_s=0.5)
    assert saw_backoff
    gaps = [round(b[1] - a[1]) for a, b in itertools.pairwise(restarts)]
    # each run lasts 1 s; the waits before restarts 2, 3, 4 are 10, 20, 40 s (the first restart is immediate)
    assert gaps[1:4] == pytest.approx([11, 21, 41], abs=2), restarts
    last = container(await node.pods(), "crash")["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (3, "Error")


async def test_restart_policies_on_failure_and_never(node: Node) -> None:
    node.write("ok", pod("ok", helper("app", "--exit-after=1s", "--exit-code=0"), restart="OnFailure"))
    node.write("retry", pod("retry", helper("app", "--exit-after=1s", "--exit-code=1"), restart="OnFailure"))
    node.write("once", pod("once", helper("app", "--exit-after=1s", "--exit-code=1"), restart="Never"))
    pods = await node.until(lambda p: phase(p, "ok") == "Succeeded" and phase(p, "once") == "Failed"
                            and container(p, "retry").get("restartCount", 0) >= 1)
    assert container(pods, "ok")["state"]["terminated"]["reason"] == "Completed"
    assert container(pods, "ok")["restartCount"] == 0 and container(pods, "once")["restartCount"] == 0


async def test_init_containers_run_in_order_before_the_app(node: Node) -> None:
    node.write("init", pod("init", helper("app"), init=[helper("first", "--exit-after=2s", "--exit-code=0"),
                                                        helper("second", "--exit-after=1s", "--exit-code=0")]))
    saw: list[str] = []

    def watch(pods: dict[str, dict[str, Any]]) -> bool:
        for index, name in ((0, "first"), (1, "second")):
            if "running" in container(pods, "init", index, init=True).get("state", {}) and name not in saw:
                saw.append(name)
        return phase(pods, "init") == "Running" and "running" in container(pods, "init").get("state", {})

    pods = await node.until(watch, step_s=0.1)
    assert saw == ["first", "second"]
    assert [c["state"]["terminated"]["reason"] for c in pods[f"init-{NODE}"]["status"]["initContainerStatuses"]] == \
        ["Completed", "Completed"]


async def test_deleting_the_manifest_kills_the_pod_within_its_grace_period(node: Node) -> None:
    node.write("gone", pod("gone", helper("app", "--ignore-sigterm"), grace=5))
    await node.until(lambda p: phase(p, "gone") == "Running")
    start = node.clock.now_ns()
    (node.manifests / "gone.json").unlink()
    await node.until(lambda p: f"gone-{NODE}" not in p)

    async def stopped() -> bool:
        return all(s.state == api.SANDBOX_NOTREADY for s in await node.sandboxes())

    waited = 0.0
    while not await stopped():
        await node.clock.advance(0.25)
        await asyncio.sleep(0.005)
        waited += 0.25
        assert waited < 60
    # noticed within the file check period (5 s), then SIGTERM ignored: SIGKILL after the 5 s grace period
    assert (node.clock.now_ns() - start) / 1e9 <= 5 + 5 + 2.5


async def test_a_changed_manifest_replaces_the_pod(node: Node) -> None:
    node.write("app", pod("app", helper("app", "--log-rate=1")))
    first = (await node.until(lambda p: phase(p, "app") == "Running"))[f"app-{NODE}"]["metadata"]["uid"]
    node.write("app", pod("app", helper("app", "--log-rate=2")))
    pods = await node.until(lambda p: phase(p, "app") == "Running" and p[f"app-{NODE}"]["metadata"]["uid"] != first)
    second = pods[f"app-{NODE}"]["metadata"]["uid"]

    def settled(_: object) -> bool:
        return True

    for _ in range(40):
        await node.until(settled)
        await node.clock.advance(0.5)
        await asyncio.sleep(0.005)
    ready = [s for s in await node.sandboxes() if s.state == api.SANDBOX_READY]
    assert [s.labels["io.kubernetes.pod.uid"] for s in ready] == [second]


async def test_malformed_manifests_are_reported_and_the_others_run(node: Node) -> None:
    (node.manifests / "broken.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: [not a name\n")
    (node.manifests / "noimage.json").write_text(json.dumps(pod("noimage", {"name": "c"})))
    node.write("fine", pod("fine", helper("app")))
    pods = await node.until(lambda p: phase(p, "fine") == "Running")
    assert set(pods) == {f"fine-{NODE}"}
    errors = node.agent.sources[0].errors
    assert any("broken.yaml" in f for f in errors) and any("noimage.json" in f for f in errors)


async def test_the_runtime_restarting_midway_duplicates_nothing(tmp_path: Path) -> None:
    n = await start_node(tmp_path)
    try:
        n.write("steady", pod("steady", helper("app")))
        await n.until(lambda p: phase(p, "steady") == "Running")
        await n.cri.stop(grace=0)
        for _ in range(20):  # the agent keeps going while the runtime is away
            await n.clock.advance(0.5)
            await asyncio.sleep(0.01)
        assert (await http_get(n.port, "/healthz"))[0] == 200  # not yet: kubelet allows 3 minutes
        for _ in range(20):
            await n.clock.advance(10)
            await asyncio.sleep(0.01)
        status, body = await http_get(n.port, "/healthz")  # the node is not ready now
        assert status == 500 and b"PLEG is not healthy" in body
        n.cri = CriServer(str(tmp_path / "cri.sock"), tmp_path / "state", n.cri_config, n.clock)
        await n.cri.start()
        # the agent's channel reconnects in real time (gRPC's backoff) while the clock runs on: the node is healthy
        # again after the first relist that reaches the new runtime, however long the machine took to get there
        deadline = time.monotonic() + 60
        while (health := await http_get(n.port, "/healthz")) != (200, b"ok"):
            assert time.monotonic() < deadline, f"the node never became healthy again: {health}"
            await n.clock.advance(0.5)
            await asyncio.sleep(0.01)
        pods = await n.until(lambda p: phase(p, "steady") == "Running")
        assert container(pods, "steady")["restartCount"] == 0
        assert len([s for s in await n.sandboxes() if s.state == api.SANDBOX_READY]) == 1
    finally:
        await stop_node(n)


async def test_pods_beyond_max_pods_are_rejected(tmp_path: Path) -> None:
    n = await start_node(tmp_path)
    try:
        n.agent.config = replace(n.agent.config, max_pods=1)
        n.write("a", pod("a", helper("app")))
        n.write("b", pod("b", helper("app")))
        pods = await n.until(lambda p: phase(p, "a") == "Running" and phase(p, "b") == "Failed")
        assert pods[f"b-{NODE}"]["status"]["reason"] == "OutOfpods"
    finally:
        await stop_node(n)


async def test_a_failing_init_container_restarts_or_fails_the_pod_per_policy(node: Node) -> None:
    node.write("retry", pod("retry", helper("app"), init=[helper("setup", "--exit-after=1s", "--exit-code=1")]))
    node.write("never", pod("never", helper("app"), restart="Never",
                            init=[helper("setup", "--exit-after=1s", "--exit-code=1")]))
    pods = await node.until(lambda p: phase(p, "never") == "Failed"
                            and container(p, "retry", init=True).get("restartCount", 0) >= 2, step_s=0.5)
    assert phase(pods, "retry") == "Pending"  # the app container never started
    assert "waiting" in container(pods, "retry")["state"]
    assert container(pods, "never", init=True)["state"]["terminated"]["exitCode"] == 1
