"""Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

A sandbox is the pause container plus the namespaces its containers join; its IP is allocated once
at RunPodSandbox and never changes while it lives, however often its containers restart. Where the IP
comes from (the pool, or CNI plugins) and how the network is undone is :mod:`sandbox_network`'s job.
"""

from __future__ import annotations

import json

from kubeharness.emulators.cri import images_service, sandbox_network
from kubeharness.emulators.cri.containers import stop_container_now
from kubeharness.emulators.cri.model import Sandbox
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.validate import bounded, bounded_map, require_id, require_name, safe_directory
from kubeharness.emulators.cri.views import sandbox_status
from kubeharness.errors import InvalidArgument, KubeharnessError, NotFound
from kubeharness.wire.cri import api_pb2 as cri

RUNTIME_HANDLERS = ("", "runc")


def sandbox_name(meta: cri.PodSandboxMetadata) -> str:
    """containerd's unique sandbox name: name_namespace_uid_attempt."""
    return "_".join((meta.name, meta.namespace, meta.uid, str(meta.attempt)))


async def run(rt: Runtime, req: cri.RunPodSandboxRequest) -> cri.RunPodSandboxResponse:
    cfg = req.config
    if not req.HasField("config"):
        raise InvalidArgument("RunPodSandbox needs a config")
    meta = cfg.metadata
    require_name(meta.name, "config.metadata.name")
    require_name(meta.namespace, "config.metadata.namespace")
    require_name(meta.uid, "config.metadata.uid")
    bounded(cfg.hostname, "config.hostname")
    bounded_map(cfg.labels, "config.labels")
    bounded_map(cfg.annotations, "config.annotations")
    safe_directory(cfg.log_directory, "config.log_directory")
    if req.runtime_handler not in RUNTIME_HANDLERS:
        raise KubeharnessError(
            f"failed to get sandbox runtime: no runtime for {req.runtime_handler[:256]!r} is configured"
        )
    ns_opts = cfg.linux.security_context.namespace_options
    for field in ("network", "pid", "ipc"):
        if getattr(ns_opts, field) not in cri.NamespaceMode.values():
            raise InvalidArgument(f"config.linux.security_context.namespace_options.{field} is not a NamespaceMode")

    sandbox_id = rt.new_id()
    name = sandbox_name(meta)
    rt.names.reserve(name, sandbox_id)
    try:  # a failure frees the name again: nothing of the sandbox stays behind
        await images_service.ensure_image(rt, rt.config.pause_image)
        sb = Sandbox(
            id=sandbox_id,
            name=name,
            config=cfg,
            runtime_handler=req.runtime_handler,
            created_ns=rt.clock.now_ns(),
        )
        if not sb.host_network:  # host-network pods get no namespace, no IP and no CNI call
            await sandbox_network.set_up(rt, sb)
    except BaseException:
        rt.names.release(name)
        raise
    rt.add_sandbox(sb)
    rt.emit_sandbox(cri.CONTAINER_CREATED_EVENT, sb)
    rt.emit_sandbox(cri.CONTAINER_STARTED_EVENT, sb)
    return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


async def stop(rt: Runtime, req: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
    """Stop every container of the sandbox, then the sandbox, then tear its network down. Idempotent for a
    known sandbox (an unknown one is NOT_FOUND, as in containerd 1.6); a failed teardown (CNI DEL) fails
    the call, leaving the sandbox NOTREADY, and the next stop or remove tries again."""
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.get(req.pod_sandbox_id)  # containerd 1.6: stopping an unknown sandbox is NOT_FOUND
    for c in rt.containers_of(sb.id):
        await stop_container_now(rt, c)
    if sb.ready:
        sb.ready = False
        sb.stopped_ns = rt.clock.now_ns()
        if sb.ip and not sb.cni_attached:
            rt.ips.release(sb.ip)
        rt.save_sandbox(sb)
        rt.emit_sandbox(cri.CONTAINER_STOPPED_EVENT, sb)
    await sandbox_network.tear_down(rt, sb)
    return cri.StopPodSandboxResponse()


async def remove(rt: Runtime, req: cri.RemovePodSandboxRequest) -> cri.RemovePodSandboxResponse:
    """Force-stop and remove the sandbox and all its containers. Idempotent: a gone sandbox is success."""
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.find(req.pod_sandbox_id)
    if sb is None:
        return cri.RemovePodSandboxResponse()
    await stop(rt, cri.StopPodSandboxRequest(pod_sandbox_id=sb.id))
    for c in rt.containers_of(sb.id):
        rt.drop_container(c)
        rt.emit(cri.CONTAINER_DELETED_EVENT, c)
    rt.drop_sandbox(sb)
    rt.emit_sandbox(cri.CONTAINER_DELETED_EVENT, sb)  # carries the sandbox's last status
    return cri.RemovePodSandboxResponse()


async def status(rt: Runtime, req: cri.PodSandboxStatusRequest) -> cri.PodSandboxStatusResponse:
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.find(req.pod_sandbox_id)
    if sb is None:
        raise NotFound("an error occurred when try to find sandbox: not found")  # containerd's words
    # containerd 1.6 leaves the evented-PLEG fields (containers_statuses, timestamp) empty here
    resp = cri.PodSandboxStatusResponse(status=sandbox_status(sb))
    if req.verbose:
        resp.info["info"] = json.dumps(
            {
                "pid": 0,
                "processStatus": "running" if sb.ready else "deleted",
                "netNamespacePath": sb.netns_path,
                "netNamespaceEmulated": bool(sb.netns_path) and not rt.netns.is_real(sb.netns_path),
                "image": rt.config.pause_image,
                "runtimeHandler": sb.runtime_handler,
                "emulated": True,
            }
        )
    return resp


def matching(rt: Runtime, flt: cri.PodSandboxFilter) -> list[Sandbox]:
    """Sandboxes that pass a ListPodSandbox filter."""
    if flt.id:
        found = rt.sandboxes.find(flt.id, strict=False)
        candidates = [found] if found is not None else []
    else:
        candidates = list(rt.sandboxes)
    want_state = flt.state.state if flt.HasField("state") else None
    selector = dict(flt.label_selector)
    if want_state is None and not selector:
        return candidates
    return [
        sb
        for sb in candidates
        if (want_state is None or sb.state == want_state)
        and not (selector and any(sb.config.labels.get(k) != v for k, v in selector.items()))
    ]


async def list_sandboxes(rt: Runtime, req: cri.ListPodSandboxRequest) -> bytes:
    """The encoded ListPodSandboxResponse, from the entries the runtime keeps encoded."""
    flt = req.filter
    if not (flt.id or flt.HasField("state") or flt.label_selector):
        return rt.sandbox_list.everything()
    return rt.sandbox_list.of(sb.id for sb in matching(rt, flt))
