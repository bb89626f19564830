"""Container RPCs: Create, Start, Stop, Remove, ContainerStatus, ListContainers,
UpdateContainerResources and ReopenContainerLog.

Stop and remove are idempotent, as the CRI states: stopping a container that is not running, or
removing one that is gone, succeeds. Stopping an unknown container is NOT_FOUND, as in containerd 1.6.
Removing a running container force-stops it first.
"""

from __future__ import annotations

import json
import posixpath

from kubeharness.clock import seconds_to_ns
from kubeharness.emulators.cri.model import CREATED, EXITED, RUNNING, Container
from kubeharness.emulators.cri.process import Exit
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.validate import bounded, bounded_map, require_id, require_name, safe_relative
from kubeharness.emulators.cri.views import container_status
from kubeharness.errors import FailedPrecondition, InvalidArgument, KubeharnessError, NotFound
from kubeharness.wire.cri import api_pb2 as cri

START_ERROR_EXIT_CODE = 128  # containerd's exit code for a container whose process could not be started
STATE_NAMES = {CREATED: "CONTAINER_CREATED", RUNNING: "CONTAINER_RUNNING", EXITED: "CONTAINER_EXITED"}


def container_name(c: cri.ContainerMetadata, s: cri.PodSandboxMetadata) -> str:
    """containerd's unique container name: name_podname_namespace_uid_attempt."""
    return "_".join((c.name, s.name, s.namespace, s.uid, str(c.attempt)))


async def create(rt: Runtime, req: cri.CreateContainerRequest) -> cri.CreateContainerResponse:
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    if not req.HasField("config"):
        raise InvalidArgument("CreateContainer needs a config")
    cfg = req.config
    require_name(cfg.metadata.name, "config.metadata.name")
    require_name(cfg.image.image, "config.image.image")
    log_path = safe_relative(cfg.log_path, "config.log_path")
    bounded_map(cfg.labels, "config.labels")
    bounded_map(cfg.annotations, "config.annotations")
    for i, mount in enumerate(cfg.mounts):
        if not mount.container_path:
            raise InvalidArgument(f"config.mounts[{i}].container_path must not be empty")
        bounded(mount.container_path, f"config.mounts[{i}].container_path", 4096)
        bounded(mount.host_path, f"config.mounts[{i}].host_path", 4096)
        if mount.propagation not in cri.MountPropagation.values():
            raise InvalidArgument(f"config.mounts[{i}].propagation has the unknown value {mount.propagation}")
    for i, kv in enumerate(cfg.envs):
        bounded(kv.key, f"config.envs[{i}].key")

    sb = rt.sandboxes.get(req.pod_sandbox_id)
    if not sb.ready:
        # containerd 1.6: the sandbox's task is gone
        raise NotFound(
            f"failed to get sandbox container task: no running task found: task {sb.id} not found: not found"
        )
    image = rt.images.resolve(cfg.image.image)
    if image is None:
        raise NotFound(f"failed to get image {cfg.image.image[:256]!r}: image not found; pull it first")

    container_id = rt.new_id()
    name = container_name(cfg.metadata, sb.config.metadata)
    rt.names.reserve(name, container_id, kind="container")
    log_dir = sb.config.log_directory
    c = Container(
        id=container_id,
        sandbox_id=sb.id,
        name=name,
        config=cfg,
        image_id=image.id,
        log_path=posixpath.join(log_dir, log_path) if log_dir and log_path else "",
        created_ns=rt.clock.now_ns(),
    )
    c.resources.CopyFrom(cfg.linux.resources)
    rt.add_container(c)
    rt.emit(cri.CONTAINER_CREATED_EVENT, c)
    return cri.CreateContainerResponse(container_id=container_id)


async def start(rt: Runtime, req: cri.StartContainerRequest) -> cri.StartContainerResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.get(req.container_id)
    if c.state != CREATED:  # containerd's words and code (UNKNOWN)
        raise KubeharnessError(
            f'failed to set starting state for container "{c.id}": container is in {STATE_NAMES[c.state]} state'
        )
    sb = rt.sandboxes.get(c.sandbox_id)
    if not sb.ready:
        raise KubeharnessError(f'sandbox container "{sb.id}" is not running')
    missing = rt.unstartable(c)
    if missing is not None:
        # as containerd: the task cannot be created, the container ends as exited with StartError, 128
        message = (
            "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
            "runc create failed: unable to start container process: exec: "
            + (f'"{missing[:256]}": executable file not found in $PATH' if missing else "no command specified")
            + ": unknown"
        )
        rt.mark_exited(c, Exit(rt.clock.now_ns(), START_ERROR_EXIT_CODE, "StartError", message))
        raise KubeharnessError(message)
    try:
        rt.container_log(c).touch()  # as containerd, the log file is made before the task
    except FailedPrecondition as err:  # a symbolic link on its way: exited with StartError, as containerd does
        rt.mark_exited(c, Exit(rt.clock.now_ns(), START_ERROR_EXIT_CODE, "StartError", err.message))
        raise
    c.started_ns = rt.clock.now_ns()
    rt.save_container(c)
    rt.emit(cri.CONTAINER_STARTED_EVENT, c)
    rt.start_process(c)
    return cri.StartContainerResponse()


async def stop_container(rt: Runtime, c: Container, timeout_s: int) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s`` (at once when 0); returns when the container exited."""
    process = rt.processes.get(c.id)
    if c.state != RUNNING or process is None:
        return  # stopping a container that is not running is a no-op
    now = rt.clock.now_ns()
    if timeout_s > 0:
        if not c.term_ns:
            c.term_ns = now
        deadline = now + seconds_to_ns(timeout_s)
        c.kill_ns = min(c.kill_ns, deadline) if c.kill_ns else deadline
    else:
        c.kill_ns = now
    process.replan()
    if not c.finished_ns:
        rt.save_container(c)  # a stop in progress survives a restart of the emulator
    await rt.wait_exited(c)


async def stop_container_now(rt: Runtime, c: Container) -> None:
    await stop_container(rt, c, 0)


async def stop(rt: Runtime, req: cri.StopContainerRequest) -> cri.StopContainerResponse:
    require_id(req.container_id, "container_id")
    if req.timeout < 0:
        raise InvalidArgument(f"timeout must not be negative, got {req.timeout}")
    c = rt.containers.get(req.container_id)  # containerd 1.6: stopping an unknown container is NOT_FOUND
    await stop_container(rt, c, req.timeout)
    return cri.StopContainerResponse()


async def remove(rt: Runtime, req: cri.RemoveContainerRequest) -> cri.RemoveContainerResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.find(req.container_id)
    if c is None:
        return cri.RemoveContainerResponse()
    await stop_container_now(rt, c)
    if rt.containers.find(c.id) is None:  # removed by a concurrent call while we waited
        return cri.RemoveContainerResponse()
    rt.drop_container(c)
    rt.emit(cri.CONTAINER_DELETED_EVENT, c)
    return cri.RemoveContainerResponse()


async def status(rt: Runtime, req: cri.ContainerStatusRequest) -> cri.ContainerStatusResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.get(req.container_id)
    resp = cri.ContainerStatusResponse(status=container_status(c, rt.images.resolve(c.image_id)))
    if req.verbose:
        b = rt.behaviour_of(c)
        resp.info["info"] = json.dumps(
            {"sandboxID": c.sandbox_id, "pid": 0, "emulated": True, "behaviour": b.kind, "logPath": c.log_path}
        )
    return resp


def matching(rt: Runtime, flt: cri.ContainerFilter) -> list[Container]:
    """Containers that pass a ListContainers filter; every given criterion must hold.

    An id or sandbox id that names no single object (unknown, ambiguous prefix) matches nothing.
    """
    sandbox_id = ""
    if flt.pod_sandbox_id:
        sb = rt.sandboxes.find(flt.pod_sandbox_id, strict=False)
        if sb is None:
            return []
        sandbox_id = sb.id
    if flt.id:
        found = rt.containers.find(flt.id, strict=False)
        candidates = [found] if found is not None else []
    elif sandbox_id:
        candidates = rt.containers_of(sandbox_id)
    else:
        candidates = list(rt.containers)
    want_state = flt.state.state if flt.HasField("state") else None
    selector = dict(flt.label_selector)
    if not (sandbox_id or want_state is not None or selector):
        return candidates
    return [
        c
        for c in candidates
        if (not sandbox_id or c.sandbox_id == sandbox_id)
        and (want_state is None or c.state == want_state)
        and not (selector and any(c.config.labels.get(k) != v for k, v in selector.items()))
    ]


async def list_containers(rt: Runtime, req: cri.ListContainersRequest) -> bytes:
    """The encoded ListContainersResponse, from the entries the runtime keeps encoded."""
    flt = req.filter
    if not (flt.id or flt.pod_sandbox_id or flt.HasField("state") or flt.label_selector):
        return rt.container_list.everything()
    return rt.container_list.of(c.id for c in matching(rt, flt))


async def update_resources(
    rt: Runtime, req: cri.UpdateContainerResourcesRequest
) -> cri.UpdateContainerResourcesResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.find(req.container_id)
    if c is None:
        raise NotFound("failed to find container: not found")  # containerd's words
    # containerd accepts an update of an exited container (it only records it); so do we
    if req.HasField("linux"):
        if req.linux.memory_limit_in_bytes != c.resources.memory_limit_in_bytes:
            c.limit_changed_ns = rt.clock.now_ns()
        c.resources.CopyFrom(req.linux)
        rt.save_container(c)
        process = rt.processes.get(c.id)
        if process is not None:
            process.replan()  # a lower memory limit may OOM-kill it now
    return cri.UpdateContainerResourcesResponse()


async def reopen_log(rt: Runtime, req: cri.ReopenContainerLogRequest) -> cri.ReopenContainerLogResponse:
    require_id(req.container_id, "container_id")
    c = rt.containers.get(req.container_id)
    process = rt.processes.get(c.id)
    if c.state != RUNNING or process is None:
        raise KubeharnessError("container is not running")  # containerd's words and code (UNKNOWN)
    process.reopen_log()
    return cri.ReopenContainerLogResponse()
