"""Runtime-wide RPCs: Version, Status, RuntimeConfig, UpdateRuntimeConfig, CheckpointContainer and
UpdatePodSandboxResources.
"""

from __future__ import annotations

import ipaddress
import json

from kubeharness.emulators.cri.cniconf import NOT_INITIALIZED
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.sandboxes import RUNTIME_HANDLERS
from kubeharness.emulators.cri.validate import require_id
from kubeharness.errors import FailedPrecondition, InvalidArgument
from kubeharness.wire.cri import api_pb2 as cri

CRI_VERSION = "0.1.0"  # what kubelet sends and containerd answers in VersionResponse.version
API_VERSION = "v1"


async def version(rt: Runtime, req: cri.VersionRequest) -> cri.VersionResponse:
    return cri.VersionResponse(
        version=CRI_VERSION,
        runtime_name=rt.config.runtime_name,
        runtime_version=rt.version,
        runtime_api_version=API_VERSION,
    )


async def status(rt: Runtime, req: cri.StatusRequest) -> cri.StatusResponse:
    resp = cri.StatusResponse()
    resp.status.conditions.add(type="RuntimeReady", status=True)
    # containerd: NetworkReady is false while go-cni has no valid network config (the node's CNI is
    # not installed yet); the emulator re-reads the config directory when it changed
    problem = rt.cni.not_ready() if rt.cni is not None else None
    if not rt.config.network_ready:
        problem = NOT_INITIALIZED
    if problem is None:
        resp.status.conditions.add(type="NetworkReady", status=True)
    else:
        resp.status.conditions.add(
            type="NetworkReady",
            status=False,
            reason="NetworkPluginNotReady",
            message=f"Network plugin returns error: {problem}",
        )
    for name in RUNTIME_HANDLERS:
        handler = resp.runtime_handlers.add(name=name)
        handler.features.recursive_read_only_mounts = True
        handler.features.user_namespaces = False
    resp.features.supplemental_groups_policy = True
    if req.verbose:
        resp.info["config"] = json.dumps(
            {
                "runtimeName": rt.config.runtime_name,
                "cgroupDriver": rt.config.cgroup_driver,
                "podCIDR": rt.runtime_config.network_config.pod_cidr or rt.config.pod_cidr,
                "sandboxImage": rt.config.pause_image,
                "cniConfDir": rt.config.cni_conf_dir,
                "cniBinDir": rt.config.cni_bin_dir,
                "netns": rt.config.netns,
                "emulated": True,
            }
        )
        if rt.cni is not None:
            resp.info["lastCNILoadStatus"] = rt.cni.conf.load_status  # as containerd's verbose status
    return resp


async def runtime_config(rt: Runtime, req: cri.RuntimeConfigRequest) -> cri.RuntimeConfigResponse:
    driver = cri.SYSTEMD if rt.config.cgroup_driver == "systemd" else cri.CGROUPFS
    return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver))


async def update_runtime_config(rt: Runtime, req: cri.UpdateRuntimeConfigRequest) -> cri.UpdateRuntimeConfigResponse:
    """Kubelet hands over the node's pod CIDR; new sandboxes get addresses from it."""
    cidr = req.runtime_config.network_config.pod_cidr
    if not cidr or cidr == rt.runtime_config.network_config.pod_cidr:
        return cri.UpdateRuntimeConfigResponse()
    first = cidr.split(",")[0].strip()
    try:
        ipaddress.ip_network(first, strict=False)
    except ValueError as err:
        raise InvalidArgument(f"runtime_config.network_config.pod_cidr {cidr[:256]!r}: {err}") from None
    rt.set_pod_cidr(cidr)
    return cri.UpdateRuntimeConfigResponse()


async def checkpoint_container(rt: Runtime, req: cri.CheckpointContainerRequest) -> cri.CheckpointContainerResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.get(req.container_id)
    raise FailedPrecondition(
        f"cannot checkpoint container {c.id}: the kubeharness CRI emulator has no CRIU; checkpointing is not supported"
    )


async def update_sandbox_resources(
    rt: Runtime, req: cri.UpdatePodSandboxResourcesRequest
) -> cri.UpdatePodSandboxResourcesResponse:
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.get(req.pod_sandbox_id)
    if not sb.ready:
        raise FailedPrecondition(f"sandbox {sb.id} is not ready; its resources cannot be updated")
    return cri.UpdatePodSandboxResourcesResponse()
