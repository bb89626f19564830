"""The two CRI services as thin classes: each RPC names the handler that implements it.

Handlers live in modules by object (``sandboxes``, ``containers``, ``images_service``, ``exec``,
``stats``, ``info``). The ``Stream*`` RPCs of Kubernetes 1.36 (CRIListStreaming) send the same items
as their List counterparts in non-empty batches of at most ``STREAM_BATCH``. List answers for
sandboxes and containers are handed to gRPC already encoded (see ``listing``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from kubeharness.emulators.cri import containers, exec, images_service, info, sandboxes, stats
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.wire.cri import api_pb2 as cri

STREAM_BATCH = 500

M = TypeVar("M")


async def _batches(items: Sequence[Any], make: Callable[[Sequence[Any]], M]) -> AsyncIterator[M]:
    for start in range(0, len(items), STREAM_BATCH):
        yield make(items[start : start + STREAM_BATCH])


class RuntimeService:
    """runtime.v1.RuntimeService."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def Version(self, req: cri.VersionRequest) -> cri.VersionResponse:
        return await info.version(self.rt, req)

    async def Status(self, req: cri.StatusRequest) -> cri.StatusResponse:
        return await info.status(self.rt, req)

    async def RuntimeConfig(self, req: cri.RuntimeConfigRequest) -> cri.RuntimeConfigResponse:
        return await info.runtime_config(self.rt, req)

    async def UpdateRuntimeConfig(self, req: cri.UpdateRuntimeConfigRequest) -> cri.UpdateRuntimeConfigResponse:
        return await info.update_runtime_config(self.rt, req)

    async def CheckpointContainer(self, req: cri.CheckpointContainerRequest) -> cri.CheckpointContainerResponse:
        return await info.checkpoint_container(self.rt, req)

    async def UpdatePodSandboxResources(
        self, req: cri.UpdatePodSandboxResourcesRequest
    ) -> cri.UpdatePodSandboxResourcesResponse:
        return await info.update_sandbox_resources(self.rt, req)

    # -- sandboxes --

    async def RunPodSandbox(self, req: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
        return await sandboxes.run(self.rt, req)

    async def StopPodSandbox(self, req: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
        return await sandboxes.stop(self.rt, req)

    async def RemovePodSandbox(self, req: cri.RemovePodSandboxRequest) -> cri.RemovePodSandboxResponse:
        return await sandboxes.remove(self.rt, req)

    async def PodSandboxStatus(self, req: cri.PodSandboxStatusRequest) -> cri.PodSandboxStatusResponse:
        return await sandboxes.status(self.rt, req)

    async def ListPodSandbox(self, req: cri.ListPodSandboxRequest) -> bytes:
        return await sandboxes.list_sandboxes(self.rt, req)

    async def StreamPodSandboxes(self, req: cri.StreamPodSandboxesRequest) -> AsyncIterator[bytes]:
        keys = [sb.id for sb in sandboxes.matching(self.rt, req.filter)]
        for batch in list(self.rt.sandbox_list.batches(keys, STREAM_BATCH)):  # a snapshot, taken at once
            yield batch

    # -- containers --

    async def CreateContainer(self, req: cri.CreateContainerRequest) -> cri.CreateContainerResponse:
        return await containers.create(self.rt, req)

    async def StartContainer(self, req: cri.StartContainerRequest) -> cri.StartContainerResponse:
        return await containers.start(self.rt, req)

    async def StopContainer(self, req: cri.StopContainerRequest) -> cri.StopContainerResponse:
        return await containers.stop(self.rt, req)

    async def RemoveContainer(self, req: cri.RemoveContainerRequest) -> cri.RemoveContainerResponse:
        return await containers.remove(self.rt, req)

    async def ContainerStatus(self, req: cri.ContainerStatusRequest) -> cri.ContainerStatusResponse:
        return await containers.status(self.rt, req)

    async def ListContainers(self, req: cri.ListContainersRequest) -> bytes:
        return await containers.list_containers(self.rt, req)

    async def StreamContainers(self, req: cri.StreamContainersRequest) -> AsyncIterator[bytes]:
        keys = [c.id for c in containers.matching(self.rt, req.filter)]
        for batch in list(self.rt.container_list.batches(keys, STREAM_BATCH)):  # a snapshot, taken at once
            yield batch

    async def UpdateContainerResources(
        self, req: cri.UpdateContainerResourcesRequest
    ) -> cri.UpdateContainerResourcesResponse:
        return await containers.update_resources(self.rt, req)

    async def ReopenContainerLog(self, req: cri.ReopenContainerLogRequest) -> cri.ReopenContainerLogResponse:
        return await containers.reopen_log(self.rt, req)

    # -- exec and streaming URLs --

    async def ExecSync(self, req: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
        return await exec.exec_sync(self.rt, req)

    async def Exec(self, req: cri.ExecRequest) -> cri.ExecResponse:
        return await exec.exec_stream(self.rt, req)

    async def Attach(self, req: cri.AttachRequest) -> cri.AttachResponse:
        return await exec.attach(self.rt, req)

    async def PortForward(self, req: cri.PortForwardRequest) -> cri.PortForwardResponse:
        return await exec.port_forward(self.rt, req)

    # -- stats and metrics --

    async def ContainerStats(self, req: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
        return await stats.stats_of_container(self.rt, req)

    async def ListContainerStats(self, req: cri.ListContainerStatsRequest) -> cri.ListContainerStatsResponse:
        return await stats.list_container_stats(self.rt, req)

    async def StreamContainerStats(
        self, req: cri.StreamContainerStatsRequest
    ) -> AsyncIterator[cri.StreamContainerStatsResponse]:
        listed = await stats.list_container_stats(self.rt, cri.ListContainerStatsRequest(filter=req.filter))
        async for batch in _batches(listed.stats, lambda b: cri.StreamContainerStatsResponse(container_stats=b)):
            yield batch

    async def PodSandboxStats(self, req: cri.PodSandboxStatsRequest) -> cri.PodSandboxStatsResponse:
        return await stats.stats_of_sandbox(self.rt, req)

    async def ListPodSandboxStats(self, req: cri.ListPodSandboxStatsRequest) -> cri.ListPodSandboxStatsResponse:
        return await stats.list_sandbox_stats(self.rt, req)

    async def StreamPodSandboxStats(
        self, req: cri.StreamPodSandboxStatsRequest
    ) -> AsyncIterator[cri.StreamPodSandboxStatsResponse]:
        listed = await stats.list_sandbox_stats(self.rt, cri.ListPodSandboxStatsRequest(filter=req.filter))
        async for batch in _batches(listed.stats, lambda b: cri.StreamPodSandboxStatsResponse(pod_sandbox_stats=b)):
            yield batch

    async def ListMetricDescriptors(self, req: cri.ListMetricDescriptorsRequest) -> cri.ListMetricDescriptorsResponse:
        return await stats.list_metric_descriptors(self.rt, req)

    async def ListPodSandboxMetrics(self, req: cri.ListPodSandboxMetricsRequest) -> cri.ListPodSandboxMetricsResponse:
        return await stats.list_sandbox_metrics(self.rt, req)

    async def StreamPodSandboxMetrics(
        self, req: cri.StreamPodSandboxMetricsRequest
    ) -> AsyncIterator[cri.StreamPodSandboxMetricsResponse]:
        listed = await stats.list_sandbox_metrics(self.rt, cri.ListPodSandboxMetricsRequest())
        async for batch in _batches(
            listed.pod_metrics, lambda b: cri.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=b)
        ):
            yield batch

    # -- events --

    async def GetContainerEvents(self, req: cri.GetEventsRequest) -> AsyncIterator[cri.ContainerEventResponse]:
        async for event in self.rt.events.subscribe():
            yield event


class ImageService:
    """runtime.v1.ImageService."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def ListImages(self, req: cri.ListImagesRequest) -> cri.ListImagesResponse:
        return await images_service.list_images(self.rt, req)

    async def StreamImages(self, req: cri.StreamImagesRequest) -> AsyncIterator[cri.StreamImagesResponse]:
        listed = await images_service.list_images(self.rt, cri.ListImagesRequest(filter=req.filter))
        async for batch in _batches(listed.images, lambda b: cri.StreamImagesResponse(images=b)):
            yield batch

    async def ImageStatus(self, req: cri.ImageStatusRequest) -> cri.ImageStatusResponse:
        return await images_service.image_status(self.rt, req)

    async def PullImage(self, req: cri.PullImageRequest) -> cri.PullImageResponse:
        return await images_service.pull_image(self.rt, req)

    async def RemoveImage(self, req: cri.RemoveImageRequest) -> cri.RemoveImageResponse:
        return await images_service.remove_image(self.rt, req)

    async def ImageFsInfo(self, req: cri.ImageFsInfoRequest) -> cri.ImageFsInfoResponse:
        return await images_service.image_fs_info(self.rt, req)
