"""How emulator objects look on the wire: the CRI messages built from sandboxes, containers, images.

Kept apart from the handlers so List, Status and the event stream describe an object identically.
"""

from __future__ import annotations

from kubeharness.emulators.cri.images import LocalImage
from kubeharness.emulators.cri.model import Container, Sandbox
from kubeharness.wire.cri import api_pb2 as cri


def sandbox_summary(sb: Sandbox) -> cri.PodSandbox:
    """The ListPodSandbox entry."""
    cfg = sb.config
    return cri.PodSandbox(
        id=sb.id,
        metadata=cfg.metadata,
        state=sb.state,
        created_at=sb.created_ns,
        labels=cfg.labels,
        annotations=cfg.annotations,
        runtime_handler=sb.runtime_handler,
    )


def sandbox_status(sb: Sandbox) -> cri.PodSandboxStatus:
    cfg = sb.config
    ns_opts = cfg.linux.security_context.namespace_options
    options = cri.NamespaceOption()
    options.CopyFrom(ns_opts)
    return cri.PodSandboxStatus(
        id=sb.id,
        metadata=cfg.metadata,
        state=sb.state,
        created_at=sb.created_ns,
        # a stopped sandbox's network namespace is gone: containerd then reports no IP
        network=cri.PodSandboxNetworkStatus(
            ip=sb.ip, additional_ips=[cri.PodIP(ip=ip) for ip in sb.additional_ips]
        ) if sb.ready else cri.PodSandboxNetworkStatus(),
        linux=cri.LinuxPodSandboxStatus(
            namespaces=cri.Namespace(options=options)
        ),
        labels=cfg.labels,
        annotations=cfg.annotations,
        runtime_handler=sb.runtime_handler,
    )


def image_spec_of(c: Container, image: LocalImage | None) -> tuple[cri.ImageSpec, str]:
    """(image shown in status, image_ref): the first tag and first digest when the image is known."""
    spec = cri.ImageSpec()
    spec.CopyFrom(c.config.image)
    ref = c.image_id
    if image is not None:
        if image.repo_tags:
            spec = cri.ImageSpec(image=image.repo_tags[0], annotations=c.config.image.annotations)
        if image.repo_digests:
            ref = image.repo_digests[0]
    return spec, ref


def container_summary(c: Container) -> cri.Container:
    """The ListContainers entry."""
    cfg = c.config
    return cri.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=cfg.metadata,
        image=cfg.image,
        image_ref=c.image_id,
        state=c.state,
        created_at=c.created_ns,
        labels=cfg.labels,
        annotations=cfg.annotations,
        image_id=c.image_id,
    )


def container_status(c: Container, image: LocalImage | None) -> cri.ContainerStatus:
    cfg = c.config
    spec, ref = image_spec_of(c, image)
    return cri.ContainerStatus(
        id=c.id,
        metadata=cfg.metadata,
        state=c.state,
        created_at=c.created_ns,
        started_at=c.started_ns,
        finished_at=c.finished_ns,
        exit_code=c.exit_code,
        image=spec,
        image_ref=ref,
        reason=c.reason,
        message=c.message,
        labels=cfg.labels,
        annotations=cfg.annotations,
        mounts=cfg.mounts,
        log_path=c.log_path,
        resources=cri.ContainerResources(linux=c.resources),
        image_id=c.image_id,
    )


def image_message(image: LocalImage) -> cri.Image:
    msg = cri.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size_bytes,
        pinned=image.pinned,
    )
    if image.user.isdigit():
        msg.uid.value = int(image.user)
    else:
        msg.username = image.user
    return msg
