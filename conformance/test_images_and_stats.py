"""Images (pull, status, list, remove, the image filesystem) and container and sandbox stats.

The runtime may be shared with other tests, which use the pause, khelper and busybox images, so removal
specs remove only ``kubeharness.test/removable`` (two tags of one image that nothing else uses) and
``kubeharness.test/inuse:1`` (the in-use spec's own: specs run on parallel workers, and one removing the image
between the other's pull and its CreateContainer made that fail with NOT_FOUND on a loaded machine).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from kubeharness.conformance.plugin import code_name
from kubeharness.conformance.target import BUSYBOX, KHELPER, Target
from kubeharness.wire.cri import api_pb2 as api

Observe = Callable[[str, Any], None]

PAUSE = "registry.k8s.io/pause:3.10"
LATEST = "kubeharness.test/removable:2"
OTHER_TAG = "kubeharness.test/removable:1"
IN_USE = "kubeharness.test/inuse:1"
MISSING = "kubeharness.test/missing:1"
LOCAL_IMAGES = [PAUSE, BUSYBOX, KHELPER]
MIB = 1024 * 1024


async def image_status(target: Target, ref: str) -> api.ImageStatusResponse:
    return await target.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=ref)), timeout=30)


async def remove_image(target: Target, ref: str) -> None:
    await target.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=ref)), timeout=60)


def set_fields(message: Any) -> list[str]:
    """The names of a message's fields that are set (wrapper and sub-messages present, scalars non-zero)."""
    return sorted(field.name for field, _ in message.ListFields())


@pytest.fixture
async def latest(target: Target) -> AsyncIterator[str]:
    """Both tags of the removable image pulled for a removal spec; its id."""
    await target.pull(OTHER_TAG)
    yield await target.pull(LATEST)


# -- pull, status, list ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "uid"), [(PAUSE, 65535), (BUSYBOX, None), (KHELPER, None)],
                         ids=["pause", "busybox", "khelper"])
async def test_a_pulled_image_reports_its_tag_a_digest_and_a_size(
    target: Target, observe: Observe, ref: str, uid: int | None
) -> None:
    """The user is the image config's (none in busybox and khelper); containerd 1.6 pins no image."""
    image_ref = await target.pull(ref)
    image = (await image_status(target, ref)).image
    repository = ref.rsplit(":", 1)[0]
    observe("id_is_image_ref", image.id == image_ref)
    user = [image.uid.value if image.HasField("uid") else None, image.username]
    observe("user", user)
    observe("pinned", image.pinned)
    assert image_ref.startswith("sha256:") and len(image_ref) == 71
    assert image.id == image_ref
    assert ref in image.repo_tags
    assert [d for d in image.repo_digests if d.startswith(f"{repository}@sha256:")]
    assert image.size > 0
    assert user == [uid, ""]
    assert not image.pinned


async def test_the_image_status_by_id_and_by_digest_is_the_same_image(target: Target) -> None:
    image_id = await target.pull(KHELPER)
    image = (await image_status(target, KHELPER)).image
    assert (await image_status(target, image_id)).image == image
    assert (await image_status(target, image.repo_digests[0])).image == image


async def test_list_images_has_every_pulled_image(target: Target) -> None:
    ids = {ref: await target.pull(ref) for ref in LOCAL_IMAGES}
    listed = {i.id: i for i in (await target.images.ListImages(api.ListImagesRequest(), timeout=30)).images}
    for ref, image_id in ids.items():
        assert image_id in listed
        assert ref in listed[image_id].repo_tags
        assert listed[image_id] == (await image_status(target, ref)).image


async def test_list_images_ignores_its_filter(target: Target, observe: Observe) -> None:
    """containerd 1.6 answers every image whatever the filter names (its ListImages has no filter support)."""
    khelper, pause = await target.pull(KHELPER), await target.pull(PAUSE)
    request = api.ListImagesRequest(filter=api.ImageFilter(image=api.ImageSpec(image=KHELPER)))
    ids = [i.id for i in (await target.images.ListImages(request, timeout=30)).images]
    observe("filtered", [khelper in ids, pause in ids])
    assert khelper in ids
    assert pause in ids


async def test_the_status_of_an_image_not_on_the_node_is_empty(target: Target) -> None:
    resp = await image_status(target, MISSING)
    assert not resp.HasField("image")
    assert dict(resp.info) == {}


async def test_pulling_an_image_the_registry_lacks_fails_to_resolve(target: Target, observe: Observe) -> None:
    """The mirror answers "not found", then containerd tries the registry's own host, which does not resolve:
    UNKNOWN, not NOT_FOUND (a registry that answered 404 itself would give NOT_FOUND)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.pull(MISSING)
    details = info.value.details() or ""
    stem = f'failed to pull and unpack image "{MISSING}": failed to resolve reference "{MISSING}": '
    observe("code", code_name(info.value))
    observe("message", re.sub(r" on [0-9a-f.:\[\]]+:53:", " on <dns>:", details))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert details.startswith(stem)
    assert not (await image_status(target, MISSING)).HasField("image")


async def test_pulling_a_malformed_reference_is_refused(target: Target, observe: Observe) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.pull("kubeharness.test/UPPER:1")
    observe("code", code_name(info.value))
    observe("message", info.value.details())
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == (
        'failed to parse image reference "kubeharness.test/UPPER:1": '
        "invalid reference format: repository name must be lowercase"
    )


# -- remove ------------------------------------------------------------------------------------------


async def test_removing_an_image_not_on_the_node_succeeds(target: Target) -> None:
    await remove_image(target, MISSING)


async def test_a_removed_image_has_no_status_and_every_tag_of_it_goes(
    target: Target, observe: Observe, latest: str
) -> None:
    assert (await image_status(target, OTHER_TAG)).image.id == latest
    await remove_image(target, LATEST)
    refs = {LATEST: LATEST, OTHER_TAG: OTHER_TAG, "the image id": latest}
    remains = {what: (await image_status(target, ref)).HasField("image") for what, ref in refs.items()}
    listed = [i.id for i in (await target.images.ListImages(api.ListImagesRequest(), timeout=30)).images]
    observe("remains", remains)
    observe("listed", latest in listed)
    assert remains == {LATEST: False, OTHER_TAG: False, "the image id": False}
    assert latest not in listed


async def test_removing_an_image_a_running_container_uses_succeeds(
    target: Target, observe: Observe
) -> None:
    image_id = await target.pull(IN_USE)
    pod = target.pod("inuse")
    sid = await target.run_pod(pod)
    cid = await target.create(sid, pod, target.container("inuse", IN_USE, command=["sleep", "3600"]))
    await target.start(cid)
    code = "OK"
    try:
        await remove_image(target, IN_USE)
    except grpc.aio.AioRpcError as err:
        code = code_name(err)
    status = await target.status(cid)
    observe("code", code)
    observe("image_left", (await image_status(target, IN_USE)).HasField("image"))
    observe("container", [api.ContainerState.Name(status.state), status.image.image, status.image_ref == image_id])
    assert code == "OK"
    assert not (await image_status(target, IN_USE)).HasField("image")
    assert status.state == api.CONTAINER_RUNNING
    assert status.image_ref == image_id
    request = api.ExecSyncRequest(container_id=cid, cmd=["echo", "still"], timeout=10)
    assert (await target.runtime.ExecSync(request, timeout=30)).stdout == b"still\n"


# -- the image filesystem ----------------------------------------------------------------------------


async def test_the_image_filesystem_reports_used_bytes_and_a_mountpoint(target: Target, observe: Observe) -> None:
    await target.pull(KHELPER)
    # containerd fills ImageFsInfo from a snapshotter sync that runs every 10 s: a fresh one reports nothing,
    # then 0 bytes, until its first sync
    answers: list[api.ImageFsInfoResponse] = []

    async def reported() -> bool:
        answers.append(await target.images.ImageFsInfo(api.ImageFsInfoRequest(), timeout=30))
        filesystems = answers[-1].image_filesystems
        return len(filesystems) > 0 and filesystems[0].used_bytes.value > 0

    await target.until(reported, 30, "ImageFsInfo to report the image filesystem")
    info = answers[-1]
    observe("filesystems", [len(info.image_filesystems), len(info.container_filesystems)])
    assert len(info.image_filesystems) == 1
    image_fs = info.image_filesystems[0]
    observe("fields", set_fields(image_fs))
    assert image_fs.fs_id.mountpoint
    assert image_fs.used_bytes.value > 0
    assert image_fs.inodes_used.value > 0
    assert image_fs.timestamp > 0
    assert len(info.container_filesystems) == 0


# -- container stats ---------------------------------------------------------------------------------


async def memory_stats(target: Target, cid: str, at_least: int) -> api.ContainerStats:
    """The container's stats once its memory working set has reached ``at_least`` bytes."""
    request = api.ContainerStatsRequest(container_id=cid)

    async def grown() -> bool:
        stats = (await target.runtime.ContainerStats(request, timeout=30)).stats
        return stats.memory.working_set_bytes.value >= at_least

    await target.until(grown, 20, f"working set of {at_least} bytes")
    return (await target.runtime.ContainerStats(request, timeout=30)).stats


async def test_stats_of_a_running_container_show_its_memory_and_cpu(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("mem", ["--memory-mib=16"])
    stats = await memory_stats(target, cid, 16 * MIB)
    observe("fields", set_fields(stats))
    observe("cpu", set_fields(stats.cpu))
    observe("memory", set_fields(stats.memory))
    observe("writable_layer", set_fields(stats.writable_layer))
    assert stats.attributes.id == cid
    assert stats.attributes.metadata.name == "mem"
    assert 16 * MIB <= stats.memory.working_set_bytes.value < 64 * MIB
    assert stats.memory.timestamp > 0
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.cpu.timestamp > 0
    assert stats.writable_layer.fs_id.mountpoint


async def test_stats_of_an_exited_container_are_an_error_but_listed_without_cpu(
    target: Target, observe: Observe
) -> None:
    """containerd 1.6 asks the exited task for metrics, gets none and fails; the list has its writable layer."""
    _, cid, _ = await target.running_container("over", ["--exit-after=200ms"])
    await target.exited(cid, 20)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.ContainerStats(api.ContainerStatsRequest(container_id=cid), timeout=30)
    request = api.ListContainerStatsRequest(filter=api.ContainerStatsFilter(id=cid))
    listed = (await target.runtime.ListContainerStats(request, timeout=30)).stats
    observe("code", code_name(info.value))
    observe("message", info.value.details())
    observe("listed", [set_fields(s) for s in listed])
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "unexpected metrics response: []"
    assert [s.attributes.id for s in listed] == [cid]
    assert not listed[0].HasField("cpu") and not listed[0].HasField("memory")
    assert listed[0].writable_layer.fs_id.mountpoint


async def test_stats_of_an_unknown_container_are_not_found(target: Target, observe: Observe) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.ContainerStats(api.ContainerStatsRequest(container_id="0" * 64), timeout=30)
    observe("code", code_name(info.value))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_container_stats_filters_by_container_and_by_sandbox(target: Target, observe: Observe) -> None:
    sid, cid, _ = await target.running_container("listed", ["--memory-mib=4"])

    async def listed(flt: api.ContainerStatsFilter) -> list[str]:
        request = api.ListContainerStatsRequest(filter=flt)
        return [s.attributes.id for s in (await target.runtime.ListContainerStats(request, timeout=30)).stats]

    by_id = await listed(api.ContainerStatsFilter(id=cid))
    by_sandbox = await listed(api.ContainerStatsFilter(pod_sandbox_id=sid))
    unknown = await listed(api.ContainerStatsFilter(id="0" * 64))
    observe("counts", [len(by_id), len(by_sandbox), len(unknown)])
    assert by_id == [cid]
    assert by_sandbox == [cid]
    assert unknown == []
    assert cid in await listed(api.ContainerStatsFilter(label_selector={}))


# -- sandbox stats -----------------------------------------------------------------------------------


def pod_in_cgroup(target: Target, name: str) -> api.PodSandboxConfig:
    """A pod under a cgroup parent, as the kubelet always gives: containerd's own ``/k8s.io``, where its
    containers go anyway, so that no cgroup is left behind on a shared host (the numbers are then the
    whole of /k8s.io: at least the pod's)."""
    pod = target.pod(name)
    pod.linux.cgroup_parent = "/k8s.io"
    return pod


async def test_sandbox_stats_cover_the_pod_and_its_containers(target: Target, observe: Observe) -> None:
    await target.pull(KHELPER)
    pod = pod_in_cgroup(target, "podstats")
    sid = await target.run_pod(pod)
    cid = await target.create(sid, pod, target.container("podstats", args=["--memory-mib=16"]))
    await target.start(cid)
    await memory_stats(target, cid, 16 * MIB)
    stats = (await target.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id=sid), timeout=30)).stats
    observe("fields", set_fields(stats))
    observe("linux", set_fields(stats.linux))
    observe("containers", [c.attributes.id == cid for c in stats.linux.containers])
    assert stats.attributes.id == sid
    assert stats.attributes.metadata.name == pod.metadata.name
    assert stats.linux.memory.working_set_bytes.value >= 16 * MIB
    assert stats.linux.cpu.usage_core_nano_seconds.value > 0
    assert [c.attributes.id for c in stats.linux.containers] == [cid]
    assert stats.linux.containers[0].memory.working_set_bytes.value >= 16 * MIB


async def test_sandbox_stats_without_a_cgroup_parent_are_an_error(target: Target, observe: Observe) -> None:
    sid, _, _ = await target.running_container("nocgroup", [])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id=sid), timeout=30)
    details = info.value.details() or ""
    observe("code", code_name(info.value))
    observe("message", details.replace(sid, "<id>"))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert details == (
        f"failed getting metrics for sandbox {sid}: failed to get cgroup metrics for sandbox {sid} "
        "because cgroupPath is empty"
    )


async def test_list_sandbox_stats_filters_by_sandbox(target: Target, observe: Observe) -> None:
    await target.pull(KHELPER)
    pod = pod_in_cgroup(target, "podlist")
    sid = await target.run_pod(pod)
    request = api.ListPodSandboxStatsRequest(filter=api.PodSandboxStatsFilter(id=sid))
    stats = (await target.runtime.ListPodSandboxStats(request, timeout=30)).stats
    assert [s.attributes.id for s in stats] == [sid]
    unknown = api.ListPodSandboxStatsRequest(filter=api.PodSandboxStatsFilter(id="0" * 64))
    assert list((await target.runtime.ListPodSandboxStats(unknown, timeout=30)).stats) == []


async def test_sandbox_stats_of_an_unknown_sandbox_are_not_found(target: Target, observe: Observe) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id="0" * 64), timeout=30)
    observe("code", code_name(info.value))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
