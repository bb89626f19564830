"""The agent's CRI client: every runtime and image call the agent makes, timed and counted.

One channel to the runtime endpoint (and one to the image endpoint when it differs). Each call goes
through :meth:`RuntimeClient._call`, which counts it in ``kubelet_runtime_operations_total`` (and in
``..._errors_total`` when it fails) under kubelet's operation names (``run_podsandbox``,
``create_container``, ``list_containers``...), times it in ``..._duration_seconds`` and applies a deadline
(kubelet's runtime request timeout, 2 minutes by default; pulls get none, as in kubelet). Failures are
raised as ``grpc.aio.AioRpcError``: UNAVAILABLE while the runtime is gone, which the callers retry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc

from kubeharness.agent.server.metrics import Registry
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

T = TypeVar("T")
REQUEST_TIMEOUT_S = 120.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),  # kubelet's CRI message limit
    ("grpc.initial_reconnect_backoff_ms", 100),  # find a restarted runtime fast
    ("grpc.max_reconnect_backoff_ms", 1000),
]


async def unless_gone(call: Awaitable[T]) -> T | None:
    """The reply, or None when the object is gone (NOT_FOUND): removed meanwhile, or already removed."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _target(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"unix://{endpoint}"


# operations that wait by design (a stop's grace period, a pull's transfer, an exec's command)
MAY_TAKE_TIME = frozenset({"stop_container", "pull_image", "exec_sync"})


class RuntimeClient:
    """CRI RuntimeService and ImageService for the agent."""

    def __init__(self, endpoint: str, image_endpoint: str | None, metrics: Registry,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.metrics = metrics
        self.timeout_s = timeout_s
        # calls under way that a healthy runtime answers at once (a suite on a virtual clock lets them finish
        # before it moves time: the agent's work then takes no virtual time, however slow the machine)
        self.quick_in_flight = 0
        self._channel = grpc.aio.insecure_channel(_target(endpoint), options=CHANNEL_OPTIONS)
        same = image_endpoint is None or _target(image_endpoint) == _target(endpoint)
        self._image_channel = self._channel if same else grpc.aio.insecure_channel(
            _target(image_endpoint or endpoint), options=CHANNEL_OPTIONS)
        self.runtime = api_grpc.RuntimeServiceStub(self._channel)
        self.images = api_grpc.ImageServiceStub(self._image_channel)

    async def close(self) -> None:
        await self._channel.close(None)
        if self._image_channel is not self._channel:
            await self._image_channel.close(None)

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        self.metrics.operations.labels(operation).inc()
        start = time.perf_counter()
        quick = operation not in MAY_TAKE_TIME
        self.quick_in_flight += quick
        try:
            return await call
        except grpc.aio.AioRpcError:
            self.metrics.operation_errors.labels(operation).inc()
            raise
        finally:
            self.quick_in_flight -= quick
            self.metrics.operation_duration.labels(operation).observe(time.perf_counter() - start)

    # -- runtime -----------------------------------------------------------------------------------------

    async def version(self) -> api.VersionResponse:
        return await self._call("version", self.runtime.Version(api.VersionRequest(), timeout=self.timeout_s))

    async def status(self) -> api.StatusResponse:
        return await self._call("status", self.runtime.Status(api.StatusRequest(), timeout=self.timeout_s))

    async def list_sandboxes(self) -> list[api.PodSandbox]:
        reply = await self._call("list_podsandbox", self.runtime.ListPodSandbox(
            api.ListPodSandboxRequest(), timeout=self.timeout_s))
        return list(reply.items)

    async def list_containers(self) -> list[api.Container]:
        reply = await self._call("list_containers", self.runtime.ListContainers(
            api.ListContainersRequest(), timeout=self.timeout_s))
        return list(reply.containers)

    async def sandbox_status(self, sandbox_id: str) -> api.PodSandboxStatus:
        reply = await self._call("podsandbox_status", self.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout_s))
        return reply.status

    async def container_status(self, container_id: str) -> api.ContainerStatus:
        reply = await self._call("container_status", self.runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=self.timeout_s))
        return reply.status

    async def run_sandbox(self, config: api.PodSandboxConfig, handler: str = "") -> str:
        reply = await self._call("run_podsandbox", self.runtime.RunPodSandbox(
            api.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=self.timeout_s))
        return reply.pod_sandbox_id

    async def stop_sandbox(self, sandbox_id: str) -> None:
        await self._call("stop_podsandbox", self.runtime.StopPodSandbox(
            api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout_s))

    async def remove_sandbox(self, sandbox_id: str) -> None:
        await self._call("remove_podsandbox", self.runtime.RemovePodSandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout_s))

    async def create_container(self, sandbox_id: str, config: api.ContainerConfig,
                               sandbox_config: api.PodSandboxConfig) -> str:
        reply = await self._call("create_container", self.runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config), timeout=self.timeout_s))
        return reply.container_id

    async def start_container(self, container_id: str) -> None:
        await self._call("start_container", self.runtime.StartContainer(
            api.StartContainerRequest(container_id=container_id), timeout=self.timeout_s))

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        # the runtime waits up to the grace period; the call may take that long
        await self._call("stop_container", self.runtime.StopContainer(
            api.StopContainerRequest(container_id=container_id, timeout=grace_s), timeout=self.timeout_s + grace_s))

    async def remove_container(self, container_id: str) -> None:
        await self._call("remove_container", self.runtime.RemoveContainer(
            api.RemoveContainerRequest(container_id=container_id), timeout=self.timeout_s))

    async def reopen_container_log(self, container_id: str) -> None:
        """Have the runtime write the container's log to a fresh file at its log path (after a rotation)."""
        await self._call("reopen_container_log", self.runtime.ReopenContainerLog(
            api.ReopenContainerLogRequest(container_id=container_id), timeout=self.timeout_s))

    async def exec_sync(self, container_id: str, cmd: Sequence[str], timeout_s: float) -> api.ExecSyncResponse:
        """Run ``cmd`` in the container (ExecSync); the runtime stops it after ``timeout_s`` (whole seconds, 0
        for no limit) and answers DEADLINE_EXCEEDED. As kubelet's, the call may take the request timeout
        on top of that, and has no deadline at all when ``timeout_s`` is 0."""
        seconds = int(timeout_s)
        request = api.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=seconds)
        deadline = self.timeout_s + seconds if seconds else None
        return await self._call("exec_sync", self.runtime.ExecSync(request, timeout=deadline))

    def container_events(self) -> grpc.aio.UnaryStreamCall[api.GetEventsRequest, api.ContainerEventResponse]:
        """The runtime's event stream (GetContainerEvents); UNIMPLEMENTED on runtimes without it."""
        self.metrics.operations.labels("get_container_events").inc()
        return self.runtime.GetContainerEvents(api.GetEventsRequest())

    # -- stats -------------------------------------------------------------------------------------------

    async def list_container_stats(self) -> list[api.ContainerStats]:
        reply = await self._call("list_container_stats", self.runtime.ListContainerStats(
            api.ListContainerStatsRequest(), timeout=self.timeout_s))
        return list(reply.stats)

    async def list_sandbox_stats(self) -> list[api.PodSandboxStats]:
        """Every sandbox's stats (ListPodSandboxStats); UNIMPLEMENTED on runtimes without it."""
        reply = await self._call("list_podsandbox_stats", self.runtime.ListPodSandboxStats(
            api.ListPodSandboxStatsRequest(), timeout=self.timeout_s))
        return list(reply.stats)

    async def image_fs_info(self) -> api.ImageFsInfoResponse:
        return await self._call("image_fs_info", self.images.ImageFsInfo(
            api.ImageFsInfoRequest(), timeout=self.timeout_s))

    # -- images ------------------------------------------------------------------------------------------

    async def image_ref(self, image: str) -> str | None:
        """The image's id if present, None if not."""
        reply = await self._call("image_status", self.images.ImageStatus(
            api.ImageStatusRequest(image=api.ImageSpec(image=image)), timeout=self.timeout_s))
        return reply.image.id if reply.HasField("image") else None

    async def pull_image(self, image: str, sandbox_config: api.PodSandboxConfig) -> str:
        reply = await self._call("pull_image", self.images.PullImage(
            api.PullImageRequest(image=api.ImageSpec(image=image), sandbox_config=sandbox_config)))
        return reply.image_ref

    async def list_images(self) -> list[api.Image]:
        reply = await self._call("list_images", self.images.ListImages(api.ListImagesRequest(), timeout=self.timeout_s))
        return list(reply.images)

    async def remove_image(self, image: str) -> None:
        await self._call("remove_image", self.images.RemoveImage(
            api.RemoveImageRequest(image=api.ImageSpec(image=image)), timeout=self.timeout_s))
