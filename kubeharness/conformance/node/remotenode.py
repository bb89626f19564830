"""A node in another process (a kubelet binary, a kind node): the real clock and its runtime over CRI.

What :class:`~kubeharness.conformance.node.kubeletnode.KubeletNode` and
:class:`~kubeharness.conformance.node.kindnode.KindNode` share: time is the epoch clock of the timestamps in
``/pods`` (the node shares this host's kernel), ``/events`` only where the node serves it (our agent does,
a kubelet without an API server does not), and the runtime's containers, sandboxes and images from CRI on
a channel to ``endpoint`` (the node's socket, or a bridge to it).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Self

import grpc

from kubeharness.agent.pod.labels import POD_NAME, POD_NAMESPACE
from kubeharness.conformance.node.target import NodeTarget, NodeUnavailable
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

CRI_TIMEOUT_S = 30


class RemoteNode(NodeTarget):
    """A node on the real clock whose runtime answers CRI at ``endpoint``."""

    virtual = False
    poll_s = 0.5

    def __init__(self, node_name: str, manifests: Path, pod_logs_dir: Path, read_only_port: int,
                 endpoint: str) -> None:
        super().__init__(node_name, manifests, pod_logs_dir, read_only_port)
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)
        self.image_service = api_grpc.ImageServiceStub(self.channel)
        self._began = self.now_s()

    def now_s(self) -> float:
        return time.time()  # the clock of the timestamps in /pods

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def events(self) -> list[dict[str, Any]] | None:
        """Where the node serves ``/events`` (our agent does; a kubelet without an API server has none)."""
        try:
            return list(json.loads(await self._get("/events"))["items"])
        except NodeUnavailable:
            return None

    def _of_pod(self, full_name: str, namespace: str) -> dict[str, str]:
        return {POD_NAME: full_name, POD_NAMESPACE: namespace}

    async def running(self, full_name: str, namespace: str = "default") -> list[str]:
        """From CRI ListContainers on the node's runtime."""
        reply = await self.runtime.ListContainers(api.ListContainersRequest(filter=api.ContainerFilter(
            state=api.ContainerStateValue(state=api.CONTAINER_RUNNING),
            label_selector=self._of_pod(full_name, namespace))), timeout=CRI_TIMEOUT_S)
        return sorted(c.metadata.name for c in reply.containers)

    async def sandboxes(self, full_name: str, namespace: str = "default") -> list[tuple[str, bool]]:
        reply = await self.runtime.ListPodSandbox(api.ListPodSandboxRequest(filter=api.PodSandboxFilter(
            label_selector=self._of_pod(full_name, namespace))), timeout=CRI_TIMEOUT_S)
        return sorted((s.id, s.state == api.SANDBOX_READY) for s in reply.items)

    async def images(self) -> set[str]:
        reply = await self.image_service.ListImages(api.ListImagesRequest(), timeout=CRI_TIMEOUT_S)
        return {tag for image in reply.images for tag in image.repo_tags}

    async def wait_serving(self) -> None:
        """Return once the node answers; raise :class:`NodeUnavailable` if it does not in time."""
        raise NotImplementedError

    async def serving(self) -> Self:
        """This node once it answers (:meth:`wait_serving`); closed if it never does."""
        try:
            await self.wait_serving()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        await super().close()
        await self.channel.close(None)
