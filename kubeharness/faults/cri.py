"""What a CRI request says to the fault engine: its pod, container and image, as far as they are known.

A request names its pod directly (``RunPodSandbox``'s config, ``CreateContainer``'s sandbox config) or
by id (a container id or a sandbox id). Ids are resolved through two look-ups the caller provides: the
CRI emulator answers them from its runtime state, the CRI proxy from what it learned from the traffic
(or asked the runtime behind it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubeharness.faults.engine import CallInfo
from kubeharness.wire.cri import api_pb2 as cri

# sandbox id -> its config; container id -> (its sandbox id, its config); None when unknown
SandboxLookup = Callable[[str], "cri.PodSandboxConfig | None"]
ContainerLookup = Callable[[str], "tuple[str, cri.ContainerConfig] | None"]


def _pod(info: dict[str, Any], config: cri.PodSandboxConfig) -> None:
    meta = config.metadata
    info.update(pod_name=meta.name, namespace=meta.namespace, pod_uid=meta.uid,
                labels=dict(config.labels), annotations=dict(config.annotations))


def ids_named(request: Any) -> tuple[str, str]:
    """The (container id, sandbox id) a request names, empty where it names none."""
    fields = {f.name for f, _ in request.ListFields()}
    container_id = request.container_id if "container_id" in fields else ""
    sandbox_id = request.pod_sandbox_id if "pod_sandbox_id" in fields else ""
    return container_id, sandbox_id


def call_info(request: Any, sandbox: SandboxLookup, container: ContainerLookup) -> CallInfo:
    """What the engine may match on for the CRI ``request``."""
    info: dict[str, Any] = {}
    fields = {f.name for f, _ in request.ListFields()}
    if "config" in fields and isinstance(request.config, cri.PodSandboxConfig):
        _pod(info, request.config)
    if "sandbox_config" in fields:
        _pod(info, request.sandbox_config)
    if "config" in fields and isinstance(request.config, cri.ContainerConfig):
        info.update(container_name=request.config.metadata.name, image=request.config.image.image)
    if "image" in fields and isinstance(request.image, cri.ImageSpec):
        info["image"] = request.image.image
    if "container_id" in fields:
        found = container(request.container_id)
        if found is not None:
            sandbox_id, config = found
            info.update(container_name=config.metadata.name, image=config.image.image)
            pod = sandbox(sandbox_id)
            if pod is not None:
                _pod(info, pod)
    if "pod_sandbox_id" in fields:
        pod = sandbox(request.pod_sandbox_id)
        if pod is not None:
            _pod(info, pod)
    return CallInfo(**info)
