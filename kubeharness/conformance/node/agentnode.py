"""The node targets that run our agent in the suite's process: ``agent+emulator`` and ``agent+containerd``.

``agent+emulator`` starts a CRI emulator and the agent on one :class:`VirtualClock`, in this process, so
that the crash-loop backoff to its 300 s cap takes well under a second; each spec gets a node of its own.
``agent+containerd`` starts the agent on the real clock against a containerd endpoint (``kubeharness env
up``), with short periods; containerd is shared, so specs on it must run one at a time (an agent's
container GC removes the sandboxes of pods it does not know).

The KubeletConfiguration is the one a person would write for a standalone kubelet, plus what the spec asks
for (``@pytest.mark.node_config``); :func:`kubelet_config` is shared with the kubelet target.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.pod.labels import POD_NAME, POD_NAMESPACE
from kubeharness.clock import Clock, RealClock, VirtualClock
from kubeharness.conformance.node.target import NodeTarget
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.wire.cri import api_pb2 as api

NODE_NAME = "conformance-node"
SETTLE_LIMIT_S = 10.0  # real seconds a probe under way is waited for before virtual time moves on anyway
_cidrs = itertools.count()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pod_cidr() -> str:
    """Loopback pod addresses of their own per xdist worker and node (the emulated containers listen on their
    pod IPs): second octet 50 + the worker's number, third counting the nodes of this process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    second = 50 + (int(worker) if worker.isdigit() else 0) % 50
    return f"127.{second}.{next(_cidrs) % 256}.0/24"


async def settle(agent: Agent, limit_s: float = SETTLE_LIMIT_S) -> None:
    """Let the agent's work under way finish before virtual time moves: probes (real connections to the
    emulated containers, whose timeouts on that clock must not fire while their I/O goes on) and CRI calls
    that a healthy runtime answers at once, so that a slow machine makes a run slower, not the node's timing
    later. After ``limit_s`` real seconds (a call hung on purpose) time moves anyway."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for _ in range(3):
            if agent.probes.prober.in_flight or agent.client.quick_in_flight:
                break
            await asyncio.sleep(0)
        else:
            return
        await asyncio.sleep(0.0001)  # a CRI call takes ~0.5 ms: check again well within it


def kubelet_config(endpoint: str, root: Path, port: int, extra: dict[str, Any]) -> dict[str, Any]:
    """A standalone node's KubeletConfiguration: static pods from ``root/manifests``, the read-only port on
    loopback, logs under ``root/pods``; ``extra`` fields on top."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": endpoint, "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "1s", "syncFrequency": "2s", "readOnlyPort": port, "address": "127.0.0.1",
        "healthzPort": 0, "podLogsDir": str(root / "pods"), "clusterDNS": ["10.96.0.10"],
        "clusterDomain": "cluster.local", **extra,
    }


class AgentNode(NodeTarget):
    """Our agent in this process, on a virtual clock beside an emulator or on the real clock."""

    def __init__(self, name: str, root: Path, agent: Agent, clock: Clock, port: int,
                 cri: CriServer | None = None) -> None:
        super().__init__(agent.config.node_name, root / "manifests", root / "pods", port)
        self.name = name
        self.agent = agent
        self.clock = clock
        self.cri = cri
        self.virtual = isinstance(clock, VirtualClock)
        self.poll_s = 1.0 if self.virtual else 0.5
        self._began = self.now_s()

    def now_s(self) -> float:
        return self.clock.now_ns() / 1e9

    async def wait(self, seconds: float) -> None:
        if not isinstance(self.clock, VirtualClock):
            await asyncio.sleep(seconds)
            return
        await self.clock.advance(seconds, settle=lambda: settle(self.agent))

    async def events(self) -> list[dict[str, Any]] | None:
        return list(json.loads(await self._get("/events"))["items"])

    async def running(self, full_name: str, namespace: str = "default") -> list[str]:
        """From CRI ListContainers on the node's runtime (the agent's own client: the same socket)."""
        containers = await self.agent.client.list_containers()
        return sorted(c.metadata.name for c in containers if c.state == api.CONTAINER_RUNNING
                      and c.labels.get(POD_NAME) == full_name and c.labels.get(POD_NAMESPACE) == namespace)

    async def sandboxes(self, full_name: str, namespace: str = "default") -> list[tuple[str, bool]]:
        return sorted((s.id, s.state == api.SANDBOX_READY) for s in await self.agent.client.list_sandboxes()
                      if s.labels.get(POD_NAME) == full_name and s.labels.get(POD_NAMESPACE) == namespace)

    async def images(self) -> set[str]:
        return {tag for image in await self.agent.client.list_images() for tag in image.repo_tags}

    async def close(self) -> None:
        await super().close()
        await self.agent.stop()
        if self.cri is not None:
            await self.cri.stop(grace=0)


async def start_agent(name: str, root: Path, endpoint: str, clock: Clock, extra: dict[str, Any],
                      cri: CriServer | None = None) -> AgentNode:
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = AgentConfig.from_dict(kubelet_config(endpoint, root, port, extra), node_name=NODE_NAME,
                                   root_dir=str(root / "kubelet"))
    agent = Agent(config, clock)
    try:
        await agent.start()
    except BaseException:
        if cri is not None:
            await cri.stop(grace=0)
        raise
    return AgentNode(name, root, agent, clock, port, cri)


async def agent_on_emulator(root: Path, extra: dict[str, Any], cri_extra: dict[str, Any] | None = None) -> AgentNode:
    """A CRI emulator and the agent on one virtual clock."""
    clock = VirtualClock()
    cri_config = CriConfig(pod_cidr=pod_cidr(), **(cri_extra or {}))
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock)
    await cri.start()
    return await start_agent("agent+emulator", root, f"unix://{root / 'cri.sock'}", clock, extra, cri)


async def agent_on_endpoint(root: Path, endpoint: str, extra: dict[str, Any]) -> AgentNode:
    """The agent on the real clock against a real runtime (containerd)."""
    return await start_agent("agent+containerd", root, endpoint, RealClock(), extra)
