"""ImageService: pulls on the virtual clock, references, errors, removal, ImageFsInfo and custom catalogs.

Every call goes through the real gRPC stubs on the emulator's unix socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.errors import InvalidArgument
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

T = TypeVar("T")

NS = 1_000_000_000
BANDWIDTH = 100 * 1024 * 1024  # the default pull_bandwidth_bytes_per_second
PAUSE = "registry.k8s.io/pause:3.10"
PAUSE_SIZE = 320_368
BUSYBOX_SIZE = 2_155_000
KHELPER = "kubeharness.test/khelper:1"
KHELPER_SIZE = 1_800_000
BIG = "kubeharness.test/big:1"


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image_id(first_ref: str) -> str:
    """Catalog image ids are derived from the entry's first canonical reference."""
    return sha("config:" + first_ref)


def digest(first_ref: str) -> str:
    return sha("manifest:" + first_ref)


BUSYBOX_ID = image_id("docker.io/library/busybox:1.36")
BUSYBOX_DIGEST = digest("docker.io/library/busybox:1.36")
KHELPER_ID = image_id(KHELPER)
BIG_ID = image_id(BIG)
PAUSE_ID = image_id(PAUSE)


def spec(image: str) -> api.ImageSpec:
    return api.ImageSpec(image=image)


async def until(predicate: object, what: str, rounds: int = 2000) -> None:
    """Yield to the loop until ``predicate()`` holds (the server handling a request it was sent)."""
    for _ in range(rounds):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def started(cri: CriHarness, call: Awaitable[T]) -> asyncio.Future[T]:
    """Send an RPC that will wait on the clock; return once the server has scheduled its timer."""
    before = cri.clock.pending()
    task = asyncio.ensure_future(call)
    await until(lambda: cri.clock.pending() > before or task.done(), "the server scheduling a clock timer")
    assert not task.done(), task
    return task


async def settle(task: asyncio.Future[T]) -> None:
    """Give an RPC whose server side may have finished the chance to return to the client."""
    for _ in range(20):
        if task.done():
            return
        await asyncio.sleep(0.002)


async def finish(task: asyncio.Future[T]) -> T:
    return await asyncio.wait_for(task, timeout=10)


async def pull_err(cri: CriHarness, image: str, auth: api.AuthConfig | None = None) -> grpc.aio.AioRpcError:
    req = api.PullImageRequest(image=spec(image))
    if auth is not None:
        req.auth.CopyFrom(auth)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.drive(cri.images.PullImage(req))
    return info.value


async def image_status(cri: CriHarness, image: str, verbose: bool = False) -> api.ImageStatusResponse:
    return await cri.images.ImageStatus(api.ImageStatusRequest(image=spec(image), verbose=verbose))


async def list_ids(cri: CriHarness, image: str = "") -> list[str]:
    req = api.ListImagesRequest()
    if image:
        req.filter.image.image = image
    return [i.id for i in (await cri.images.ListImages(req)).images]


async def fs_info(cri: CriHarness) -> api.ImageFsInfoResponse:
    return await cri.images.ImageFsInfo(api.ImageFsInfoRequest())


# -- pulling --------------------------------------------------------------------------------------


async def test_pull_returns_the_image_id_and_status_describes_the_image(cri: CriHarness) -> None:
    assert not (await image_status(cri, KHELPER)).HasField("image")
    ref = await cri.pull(KHELPER)
    assert ref == KHELPER_ID
    image = (await image_status(cri, KHELPER)).image
    assert image.id == KHELPER_ID
    assert list(image.repo_tags) == [KHELPER]
    assert list(image.repo_digests) == [f"kubeharness.test/khelper@{digest(KHELPER)}"]
    assert image.size == KHELPER_SIZE
    assert not image.HasField("uid") and image.username == ""  # the image sets no user (as containerd reports)
    assert image.pinned is False


async def test_a_pull_takes_size_over_bandwidth_of_clock_time(cri: CriHarness) -> None:
    t0 = cri.clock.now_ns()
    task = await started(cri, cri.images.PullImage(api.PullImageRequest(image=spec(BIG))))
    # 1 GiB at 100 MiB/s is exactly 10.24 s.
    await cri.clock.advance(10.239)
    await settle(task)
    assert not task.done()
    assert not (await image_status(cri, BIG)).HasField("image")
    await cri.clock.advance(0.001)
    assert (await finish(task)).image_ref == BIG_ID
    assert cri.clock.now_ns() - t0 == 10_240_000_000
    image = (await image_status(cri, BIG)).image
    assert image.size == 1024**3


async def test_concurrent_pulls_of_one_image_share_one_download(cri: CriHarness) -> None:
    first = await started(cri, cri.images.PullImage(api.PullImageRequest(image=spec(BIG))))
    await cri.clock.advance(5)
    # A second pull of the same reference joins the download in flight.
    second = asyncio.ensure_future(cri.images.PullImage(api.PullImageRequest(image=spec(BIG))))
    for _ in range(2):  # round trips on the same connection: the second pull has reached the server
        await cri.runtime.Version(api.VersionRequest())
    await cri.clock.advance(5.239)
    await settle(second)
    assert not first.done() and not second.done()
    await cri.clock.advance(0.001)
    assert (await finish(first)).image_ref == BIG_ID
    assert (await finish(second)).image_ref == BIG_ID
    assert await list_ids(cri) == sorted([PAUSE_ID, BIG_ID])


async def test_pulling_a_present_image_again_is_immediate(cri: CriHarness) -> None:
    await cri.pull(BIG)
    t0 = cri.clock.now_ns()
    resp = await asyncio.wait_for(cri.images.PullImage(api.PullImageRequest(image=spec(BIG))), timeout=10)
    assert resp.image_ref == BIG_ID
    assert cri.clock.now_ns() == t0


async def test_reference_normalisation_and_tags(cri: CriHarness) -> None:
    assert await cri.pull("busybox") == BUSYBOX_ID
    image = (await image_status(cri, "docker.io/library/busybox:latest")).image
    assert list(image.repo_tags) == ["docker.io/library/busybox:latest"]
    assert list(image.repo_digests) == [f"docker.io/library/busybox@{BUSYBOX_DIGEST}"]
    assert image.size == BUSYBOX_SIZE
    # Another tag of the same image adds a tag to the one image.
    assert await cri.pull("library/busybox:1.36") == BUSYBOX_ID
    for name in ("busybox", "busybox:1.36", "docker.io/busybox:latest", BUSYBOX_ID, BUSYBOX_ID[7:19],
                 f"busybox@{BUSYBOX_DIGEST}"):
        status = (await image_status(cri, name)).image
        assert status.id == BUSYBOX_ID, name
        assert list(status.repo_tags) == ["docker.io/library/busybox:1.36", "docker.io/library/busybox:latest"]
    assert await list_ids(cri) == sorted([PAUSE_ID, BUSYBOX_ID])


async def test_pull_by_digest_has_no_tag(cri: CriHarness) -> None:
    assert await cri.pull(f"busybox@{BUSYBOX_DIGEST}") == BUSYBOX_ID
    image = (await image_status(cri, f"docker.io/library/busybox@{BUSYBOX_DIGEST}")).image
    assert image.id == BUSYBOX_ID
    assert list(image.repo_tags) == []
    assert list(image.repo_digests) == [f"docker.io/library/busybox@{BUSYBOX_DIGEST}"]
    # The tag was never pulled, so it does not name the image.
    assert not (await image_status(cri, "busybox:1.36")).HasField("image")


async def test_image_status_verbose_info(cri: CriHarness) -> None:
    await cri.pull(KHELPER)
    assert dict((await image_status(cri, KHELPER)).info) == {}
    info = json.loads((await image_status(cri, KHELPER, verbose=True)).info["info"])
    assert info == {"id": KHELPER_ID, "entrypoint": ["/khelper"], "cmd": [], "user": "", "emulated": True}


async def test_list_images_lists_everything_whatever_the_filter(cri: CriHarness) -> None:
    # The pause image is on the node from the start (not pinned: containerd 1.6 pins nothing).
    listed = (await cri.images.ListImages(api.ListImagesRequest())).images
    assert [(i.id, list(i.repo_tags), i.pinned, i.size) for i in listed] == [(PAUSE_ID, [PAUSE], False, PAUSE_SIZE)]
    await cri.pull(KHELPER)
    await cri.pull("busybox:1.36")
    everything = sorted([PAUSE_ID, KHELPER_ID, BUSYBOX_ID])
    assert await list_ids(cri) == everything
    # containerd 1.6 ignores ListImages' filter, and so does the emulator
    for name in ("busybox:1.36", KHELPER, "busybox:latest", "kubeharness.test/nope:1"):
        assert await list_ids(cri, name) == everything


async def test_image_status_of_an_absent_image_is_empty_not_an_error(cri: CriHarness) -> None:
    resp = await image_status(cri, "kubeharness.test/nope:1")
    assert not resp.HasField("image")
    assert dict(resp.info) == {}


# -- pull errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["kubeharness.test/missing:1", "kubeharness.test/nope:1", "nosuchimage"])
async def test_pull_of_an_image_the_registry_does_not_have_is_not_found(cri: CriHarness, image: str) -> None:
    err = await pull_err(cri, image)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "not found" in (err.details() or "")
    assert await list_ids(cri) == [PAUSE_ID]


async def test_private_image_needs_credentials(cri: CriHarness) -> None:
    private = "kubeharness.test/private:1"
    err = await pull_err(cri, private)
    # containerd answers Unknown with the registry's "pull access denied ... authorization failed".
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert "pull access denied" in (err.details() or "")
    assert "authorization failed" in (err.details() or "")
    wrong = await pull_err(cri, private, api.AuthConfig(username="kubeharness", password="wrong"))
    assert wrong.code() == grpc.StatusCode.UNKNOWN
    assert not (await image_status(cri, private)).HasField("image")
    req = api.PullImageRequest(image=spec(private), auth=api.AuthConfig(username="kubeharness", password="secret"))
    assert (await cri.drive(cri.images.PullImage(req))).image_ref == image_id(private)
    assert (await image_status(cri, private)).image.repo_tags == [private]


async def test_private_image_with_base64_auth(cri: CriHarness) -> None:
    private = "kubeharness.test/private:1"
    token = base64.b64encode(b"kubeharness:secret").decode()
    req = api.PullImageRequest(image=spec(private), auth=api.AuthConfig(auth=token))
    assert (await cri.drive(cri.images.PullImage(req))).image_ref == image_id(private)


@pytest.mark.parametrize(
    "image",
    ["", "UPPER/Case", "a b", " busybox", "busybox:", "busybox@sha256:xyz", "busybox:bad/tag", "busybox:-x"],
)
async def test_malformed_reference_is_invalid_argument(cri: CriHarness, image: str) -> None:
    err = await pull_err(cri, image)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()


class TestSmallImageFilesystem:
    @pytest.fixture
    def cri_config(self) -> CriConfig:
        return CriConfig(image_fs_capacity_bytes=PAUSE_SIZE + 2_200_000)

    async def test_an_image_that_does_not_fit_is_resource_exhausted(self, cri: CriHarness) -> None:
        assert await cri.pull(KHELPER) == KHELPER_ID  # 1.8 MB fits in the 2.2 MB left
        err = await pull_err(cri, "busybox:1.36")  # 2.155 MB does not fit in what is left
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no space left on device" in (err.details() or "")
        assert not (await image_status(cri, "busybox:1.36")).HasField("image")
        assert await list_ids(cri) == sorted([PAUSE_ID, KHELPER_ID])
        assert (await fs_info(cri)).image_filesystems[0].used_bytes.value == PAUSE_SIZE + KHELPER_SIZE
        # Space freed by a removal can be used again.
        await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER)))
        assert await cri.pull("busybox:1.36") == BUSYBOX_ID


# -- removal --------------------------------------------------------------------------------------


async def test_remove_image_removes_every_reference_of_it(cri: CriHarness) -> None:
    await cri.pull("busybox:1.36")
    await cri.pull("busybox:latest")
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec("busybox:1.36")))
    for name in ("busybox:1.36", "busybox:latest", BUSYBOX_ID, f"busybox@{BUSYBOX_DIGEST}"):
        assert not (await image_status(cri, name)).HasField("image"), name
    assert await list_ids(cri) == [PAUSE_ID]


async def test_remove_image_by_id(cri: CriHarness) -> None:
    await cri.pull(KHELPER)
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER_ID)))
    assert await list_ids(cri) == [PAUSE_ID]


async def test_removing_an_absent_image_succeeds(cri: CriHarness) -> None:
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec("kubeharness.test/nope:1")))
    await cri.pull(KHELPER)
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER)))
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER)))  # again: still fine
    assert await list_ids(cri) == [PAUSE_ID]


async def test_remove_image_without_a_name_is_invalid(cri: CriHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cri.images.RemoveImage(api.RemoveImageRequest(image=spec("")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_image_in_use_cannot_be_removed_until_its_container_is(cri: CriHarness) -> None:
    cfg = cri.sandbox_config(name="user")
    sid = await cri.run_sandbox(cfg)
    await cri.pull(KHELPER)
    created = await cri.create(sid, cfg, name="created")
    running = await cri.create(sid, cfg, name="running")
    await cri.start_container(running)

    async def refused() -> str:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER)))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        return info.value.details() or ""

    details = await refused()
    assert created in details or running in details
    await cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=created))
    assert running in await refused()
    await cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=running))
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec(KHELPER)))
    assert not (await image_status(cri, KHELPER)).HasField("image")


# -- ImageFsInfo ----------------------------------------------------------------------------------


async def test_image_fs_info_follows_pulls_and_removals(cri: CriHarness) -> None:
    info = await fs_info(cri)
    assert len(info.image_filesystems) == 1
    fs = info.image_filesystems[0]
    assert fs.used_bytes.value == PAUSE_SIZE
    assert fs.inodes_used.value == 64
    assert fs.timestamp == cri.clock.now_ns()
    assert fs.fs_id.mountpoint == str(cri.state_dir / "snapshots")
    await cri.pull(KHELPER)
    await cri.pull("busybox")
    await cri.clock.advance(7)
    fs = (await fs_info(cri)).image_filesystems[0]
    assert fs.used_bytes.value == PAUSE_SIZE + KHELPER_SIZE + BUSYBOX_SIZE
    assert fs.inodes_used.value == 3 * 64
    assert fs.timestamp == cri.clock.now_ns()
    await cri.images.RemoveImage(api.RemoveImageRequest(image=spec("busybox")))
    fs = (await fs_info(cri)).image_filesystems[0]
    assert (fs.used_bytes.value, fs.inodes_used.value) == (PAUSE_SIZE + KHELPER_SIZE, 2 * 64)


async def test_image_fs_info_has_no_container_filesystems_writable_layers_show_in_stats(cri: CriHarness) -> None:
    assert len((await fs_info(cri)).container_filesystems) == 0  # as containerd 1.6 answers
    _, cid = await cri.run_container(args=["--disk-mib=3"])
    await cri.clock.advance(1)
    assert len((await fs_info(cri)).container_filesystems) == 0
    stats = (await cri.runtime.ContainerStats(api.ContainerStatsRequest(container_id=cid))).stats
    assert (stats.writable_layer.used_bytes.value, stats.writable_layer.inodes_used.value) == (3 * 1024 * 1024, 1)
    assert stats.writable_layer.fs_id.mountpoint == str(cri.state_dir / "snapshots")


# -- a custom catalog ----------------------------------------------------------------------------


CUSTOM_CATALOG = """\
images:
  - ref: example.test/slow:1
    size_bytes: 0
    pull_delay_ms: 1500
    entrypoint: [/khelper]
    cmd: ["--log-rate=1"]
    user: "1000"
  - refs: [example.test/locked:1, example.test/locked:stable]
    size_bytes: 52428800
    auth: {username: u, password: p}
  - ref: example.test/gone:1
    missing: true
"""


class TestCustomCatalog:
    @pytest.fixture
    def cri_config(self, tmp_path: Path) -> CriConfig:
        (tmp_path / "catalog.yaml").write_text(CUSTOM_CATALOG)
        (tmp_path / "cri.yaml").write_text(
            "image_catalog: catalog.yaml\n"
            "images:\n"
            "  - ref: example.test/inline:2\n"
            "    size_bytes: 1000\n"
            "    user: app\n"
        )
        return CriConfig.load(tmp_path / "cri.yaml")

    async def test_pull_delay_is_added_on_the_clock(self, cri: CriHarness) -> None:
        t0 = cri.clock.now_ns()
        task = await started(cri, cri.images.PullImage(api.PullImageRequest(image=spec("example.test/slow:1"))))
        await cri.clock.advance(1.499)
        await settle(task)
        assert not task.done()
        await cri.clock.advance(0.001)
        assert (await finish(task)).image_ref == image_id("example.test/slow:1")
        assert cri.clock.now_ns() - t0 == 1_500_000_000
        image = (await image_status(cri, "example.test/slow:1")).image
        assert (image.size, image.uid.value) == (0, 1000)
        info = json.loads((await image_status(cri, "example.test/slow:1", verbose=True)).info["info"])
        assert (info["entrypoint"], info["cmd"], info["user"]) == (["/khelper"], ["--log-rate=1"], "1000")

    async def test_a_second_pull_of_a_present_image_still_pays_the_fixed_delay(self, cri: CriHarness) -> None:
        await cri.pull("example.test/slow:1")
        task = await started(cri, cri.images.PullImage(api.PullImageRequest(image=spec("example.test/slow:1"))))
        await cri.clock.advance(1.499)
        await settle(task)
        assert not task.done()
        await cri.clock.advance(0.001)
        assert (await finish(task)).image_ref == image_id("example.test/slow:1")

    async def test_needs_auth_and_does_not_exist(self, cri: CriHarness) -> None:
        assert (await pull_err(cri, "example.test/locked:stable")).code() == grpc.StatusCode.UNKNOWN
        assert (await pull_err(cri, "example.test/gone:1")).code() == grpc.StatusCode.NOT_FOUND
        t0 = cri.clock.now_ns()
        req = api.PullImageRequest(image=spec("example.test/locked:stable"), auth=api.AuthConfig(username="u",
                                                                                                password="p"))
        task = await started(cri, cri.images.PullImage(req))
        await cri.clock.advance(0.5)  # 50 MiB at 100 MiB/s
        resp = await finish(task)
        assert cri.clock.now_ns() - t0 == NS // 2
        # Both tags of the entry are one image, identified by its first reference.
        assert resp.image_ref == image_id("example.test/locked:1")
        image = (await image_status(cri, "example.test/locked:stable")).image
        assert list(image.repo_tags) == ["example.test/locked:stable"]
        assert list(image.repo_digests) == [f"example.test/locked@{digest('example.test/locked:1')}"]

    async def test_inline_images_and_the_builtin_catalog_stay_available(self, cri: CriHarness) -> None:
        assert await cri.pull("example.test/inline:2") == image_id("example.test/inline:2")
        image = (await image_status(cri, "example.test/inline:2")).image
        assert (image.size, image.username, image.HasField("uid")) == (1000, "app", False)
        assert await cri.pull(KHELPER) == KHELPER_ID


def test_a_catalog_entry_with_an_unknown_key_is_rejected(tmp_path: Path) -> None:
    config = CriConfig(images=[{"ref": "example.test/x:1", "sise_bytes": 1}])
    with pytest.raises(InvalidArgument, match="sise_bytes"):
        CriServer(str(tmp_path / "cri.sock"), tmp_path / "state", config, VirtualClock())
