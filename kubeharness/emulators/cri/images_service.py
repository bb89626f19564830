"""ImageService RPCs: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo.

A pull takes ``pull_delay_ms + size / pull_bandwidth`` on the runtime's clock; concurrent pulls of one
reference share one download, as in containerd. The CRI's FilesystemUsage carries no capacity, so
the configured image filesystem capacity shows as pulls failing with RESOURCE_EXHAUSTED ("no space
left on device") once the images would not fit.
"""

from __future__ import annotations

import asyncio
import base64
import json

from kubeharness.emulators.cri.images import LocalImage, normalize_ref
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.views import image_message
from kubeharness.errors import FailedPrecondition, InvalidArgument, KubeharnessError, NotFound, ResourceExhausted
from kubeharness.wire.cri import api_pb2 as cri

_AUTH_FAILED = (
    'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
    "pull access denied, repository does not exist or may require authorization: "
    "authorization failed: no basic auth credentials"
)


def _credentials(auth: cri.AuthConfig) -> tuple[str, str]:
    if auth.username or auth.password:
        return auth.username, auth.password
    if auth.auth:
        try:
            user, _, password = base64.b64decode(auth.auth).decode().partition(":")
            return user, password
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("auth.auth is not base64 of 'user:password'") from None
    return "", ""


async def _download(rt: Runtime, ref: str, username: str, password: str) -> str:
    entry = rt.catalog.lookup(ref)
    if entry is None or entry.missing:
        raise NotFound(
            f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": {ref}: not found'
        )
    if entry.auth is not None and (username, password) != (entry.auth["username"], entry.auth["password"]):
        raise KubeharnessError(_AUTH_FAILED.format(ref=ref))
    present = rt.images.resolve(entry.id)
    delay_s = entry.pull_delay_ms / 1000
    if present is None:
        free = rt.config.image_fs_capacity_bytes - rt.images.used_bytes()
        if entry.size_bytes > free:
            raise ResourceExhausted(
                f'failed to pull and unpack image "{ref}": failed to extract layer: write: no space left on device '
                f"({entry.size_bytes} bytes needed, {max(free, 0)} free)"
            )
        delay_s += entry.size_bytes / rt.config.pull_bandwidth_bytes_per_second
    if delay_s > 0:
        await rt.clock.sleep(delay_s)
    image = rt.images.add(LocalImage.from_catalog(entry, ref, pinned=False))  # containerd 1.6 pins nothing
    return image.id


async def pull(rt: Runtime, ref_text: str, auth: cri.AuthConfig | None = None) -> str:
    """Pull ``ref_text`` into the image store and return the image id."""
    ref = normalize_ref(ref_text)
    username, password = _credentials(auth) if auth is not None else ("", "")
    task = rt.pulls.get(ref)
    if task is None:
        task = asyncio.ensure_future(_download(rt, ref, username, password))
        rt.pulls[ref] = task
        task.add_done_callback(lambda _: rt.pulls.pop(ref, None))
    return await asyncio.shield(task)


async def ensure_image(rt: Runtime, ref_text: str) -> str:
    """The local image's id, pulling it first if the node does not have it (the pause image)."""
    image = rt.images.resolve(ref_text)
    if image is not None:
        return image.id
    return await pull(rt, ref_text)


async def pull_image(rt: Runtime, req: cri.PullImageRequest) -> cri.PullImageResponse:
    if not req.image.image:
        raise InvalidArgument("image.image must name the image to pull")
    image_id = await pull(rt, req.image.image, req.auth if req.HasField("auth") else None)
    return cri.PullImageResponse(image_ref=image_id)


async def list_images(rt: Runtime, req: cri.ListImagesRequest) -> cri.ListImagesResponse:
    """Every image: containerd 1.6 ignores the request's filter, and so does the emulator."""
    resp = cri.ListImagesResponse()
    for image in sorted(rt.images, key=lambda i: i.id):
        resp.images.append(image_message(image))
    return resp


async def image_status(rt: Runtime, req: cri.ImageStatusRequest) -> cri.ImageStatusResponse:
    """An unknown image is not an error: the response simply has no image (kubelet relies on this)."""
    if not req.image.image:
        raise InvalidArgument("image.image must name the image")
    image = rt.images.resolve(req.image.image)
    resp = cri.ImageStatusResponse()
    if image is None:
        return resp
    resp.image.CopyFrom(image_message(image))
    if req.verbose:
        resp.info["info"] = json.dumps(
            {"id": image.id, "entrypoint": image.entrypoint, "cmd": image.cmd, "user": image.user, "emulated": True}
        )
    return resp


async def remove_image(rt: Runtime, req: cri.RemoveImageRequest) -> cri.RemoveImageResponse:
    """Idempotent: removing an image that is not there succeeds."""
    if not req.image.image:
        raise InvalidArgument("image.image must name the image to remove")
    image = rt.images.resolve(req.image.image)
    if image is None:
        return cri.RemoveImageResponse()
    for c in rt.containers:
        if c.image_id == image.id:
            raise FailedPrecondition(f"image {image.id} is in use by container {c.id}")
    rt.images.remove(image)
    return cri.RemoveImageResponse()


async def image_fs_info(rt: Runtime, req: cri.ImageFsInfoRequest) -> cri.ImageFsInfoResponse:
    now = rt.clock.now_ns()
    mountpoint = str(rt.image_fs_dir)
    images = list(rt.images)
    layers = [rt.writable_bytes(c) for c in rt.containers]
    resp = cri.ImageFsInfoResponse()
    image_fs = resp.image_filesystems.add(timestamp=now)
    image_fs.fs_id.mountpoint = mountpoint
    image_fs.used_bytes.value = sum(i.size_bytes for i in images)
    image_fs.inodes_used.value = 64 * len(images)
    del layers  # containerd 1.6 reports no container_filesystems (writable layers show in ContainerStats)
    return resp
