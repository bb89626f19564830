"""What the CRI proxy knows about pods and containers, so that fault rules can match calls that name ids.

A call such as ``StartContainer`` names only a container id; a rule may match its pod's name, labels or
annotations. The proxy learns from the traffic it forwards (``RunPodSandbox`` and ``CreateContainer``
tell it the config of each new id; removals drop them) and, for an id it has not seen (created before the
proxy started, or through another endpoint), asks the runtime behind it once: ``PodSandboxStatus`` for a
sandbox, ``ListContainers`` filtered by id for a container. It asks only when a rule in force concerns
the call, so with no rules the proxy adds no calls of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kubeharness.wire.cri import api_pb2 as cri

LOOKUP_TIMEOUT_S = 2.0

# (method path, request bytes, timeout) -> response bytes, through the proxy's upstream channel
Forward = Callable[[str, bytes, float], Awaitable[bytes]]

RUNTIME = "/runtime.v1.RuntimeService/"


class PodIndex:
    """Sandbox id -> its pod config, container id -> (sandbox id, container config)."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward
        self.sandboxes: dict[str, cri.PodSandboxConfig] = {}
        self.containers: dict[str, tuple[str, cri.ContainerConfig]] = {}

    def sandbox(self, sandbox_id: str) -> cri.PodSandboxConfig | None:
        return self.sandboxes.get(sandbox_id)

    def container(self, container_id: str) -> tuple[str, cri.ContainerConfig] | None:
        return self.containers.get(container_id)

    def learn(self, method: str, request: Any, response: bytes) -> None:
        """Record what a successful call created or removed."""
        if method == "RunPodSandbox":
            sandbox_id = cri.RunPodSandboxResponse.FromString(response).pod_sandbox_id
            self.sandboxes[sandbox_id] = request.config
        elif method == "CreateContainer":
            container_id = cri.CreateContainerResponse.FromString(response).container_id
            self.containers[container_id] = (request.pod_sandbox_id, request.config)
            if request.pod_sandbox_id not in self.sandboxes and request.HasField("sandbox_config"):
                self.sandboxes[request.pod_sandbox_id] = request.sandbox_config
        elif method == "RemovePodSandbox":
            self.sandboxes.pop(request.pod_sandbox_id, None)
            for container_id in [c for c, (s, _) in self.containers.items() if s == request.pod_sandbox_id]:
                del self.containers[container_id]
        elif method == "RemoveContainer":
            self.containers.pop(request.container_id, None)

    async def resolve(self, container_id: str, sandbox_id: str) -> None:
        """Ask the runtime about ids not seen yet (a failed question leaves them unknown)."""
        if container_id and container_id not in self.containers:
            await self._ask_container(container_id)
            found = self.containers.get(container_id)
            if found is not None:
                sandbox_id = sandbox_id or found[0]
                if found[0] not in self.sandboxes:
                    await self._ask_sandbox(found[0])
        if sandbox_id and sandbox_id not in self.sandboxes:
            await self._ask_sandbox(sandbox_id)

    async def _ask_sandbox(self, sandbox_id: str) -> None:
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        try:
            raw = await self._forward(RUNTIME + "PodSandboxStatus", request.SerializeToString(), LOOKUP_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return
        status = cri.PodSandboxStatusResponse.FromString(raw).status
        self.sandboxes[sandbox_id] = cri.PodSandboxConfig(
            metadata=status.metadata, labels=status.labels, annotations=status.annotations
        )

    async def _ask_container(self, container_id: str) -> None:
        request = cri.ListContainersRequest(filter=cri.ContainerFilter(id=container_id))
        try:
            raw = await self._forward(RUNTIME + "ListContainers", request.SerializeToString(), LOOKUP_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return
        for c in cri.ListContainersResponse.FromString(raw).containers:
            if c.id == container_id:
                config = cri.ContainerConfig(metadata=c.metadata, image=cri.ImageSpec(image=c.image.image),
                                             labels=c.labels, annotations=c.annotations)
                self.containers[container_id] = (c.pod_sandbox_id, config)
