"""Restart persistence of the CRI emulator: ``cri.restart()`` starts a new server on the same state dir.

Everything a client was told before a restart must be what it is told after it: statuses, lists,
images, IPs, names. Running containers resume on the (virtual) clock, exit when their behaviour says
and keep appending to the same log file. The journal's torn tail is dropped on load and the lock file
keeps a second emulator off a state directory that is in use.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kubeharness.emulators.cri.logs import format_timestamp
from kubeharness.emulators.cri.server import CriServer
from kubeharness.errors import FailedPrecondition
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
HELPER_IMAGE = "kubeharness.test/khelper:1"
JOURNAL = "state.journal"


# -- helpers ----------------------------------------------------------------------------------------


def log_file(cri: CriHarness, cfg: api.PodSandboxConfig, name: str = "c", attempt: int = 0) -> Path:
    return Path(cfg.log_directory) / name / f"{attempt}.log"


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def expected_lines(start_ns: int, first: int, last: int, every_ns: int = NS, text: str = "line") -> list[str]:
    """CRI log lines ``text first`` .. ``text last``, line n due at start + (n-1) * every."""
    return [f"{format_timestamp(start_ns + (n - 1) * every_ns)} stdout F {text} {n}" for n in range(first, last + 1)]


async def sandbox_status(cri: CriHarness, sid: str) -> api.PodSandboxStatusResponse:
    return await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True))


async def container_status(cri: CriHarness, cid: str) -> api.ContainerStatusResponse:
    return await cri.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid, verbose=True))


async def list_all(cri: CriHarness) -> tuple[api.ListPodSandboxResponse, api.ListContainersResponse]:
    sandboxes = await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())
    containers = await cri.runtime.ListContainers(api.ListContainersRequest())
    return sandboxes, containers


async def expect_code(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def stop_then_remove_sandbox(cri: CriHarness, sid: str) -> None:
    await cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))
    await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))


# -- state survives ---------------------------------------------------------------------------------


async def test_sandboxes_and_containers_in_every_state_survive_a_restart_identically(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="web", labels={"app": "web"})
    sid = await cri.run_sandbox(cfg)
    created = await cri.create(sid, cfg, name="created", labels={"k": "created"})
    running = await cri.create(sid, cfg, name="running", args=["--log-rate=1"])
    exited = await cri.create(sid, cfg, name="exited", args=["--exit-after=2s", "--exit-code=7"])
    await cri.start_container(running)
    await cri.start_container(exited)
    await cri.clock.advance(3)
    stopped_cfg = cri.sandbox_config(name="gone")
    stopped_sid = await cri.run_sandbox(stopped_cfg)
    stopped_c = await cri.create(stopped_sid, stopped_cfg, name="was-running")
    await cri.start_container(stopped_c)
    await cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=stopped_sid))
    host_sid = await cri.run_sandbox(name="host", host_network=True)

    assert (await cri.status(created)).state == api.CONTAINER_CREATED
    assert (await cri.status(running)).state == api.CONTAINER_RUNNING
    assert (await cri.status(exited)).state == api.CONTAINER_EXITED
    assert (await cri.status(stopped_c)).state == api.CONTAINER_EXITED

    sids = [sid, stopped_sid, host_sid]
    cids = [created, running, exited, stopped_c]
    before_sb = [await sandbox_status(cri, s) for s in sids]
    before_c = [await container_status(cri, c) for c in cids]
    before_lists = await list_all(cri)

    await cri.restart()

    assert [await sandbox_status(cri, s) for s in sids] == before_sb
    assert [await container_status(cri, c) for c in cids] == before_c
    assert await list_all(cri) == before_lists
    # and the states are the ones they were
    assert [s.status.state for s in before_sb] == [api.SANDBOX_READY, api.SANDBOX_NOTREADY, api.SANDBOX_READY]
    assert [s.status.network.ip for s in before_sb] == ["127.77.0.2", "", ""]
    exited_status = before_c[2].status
    assert (exited_status.exit_code, exited_status.reason) == (7, "Error")
    assert exited_status.finished_at == exited_status.started_at + 2 * NS


async def test_pulled_images_survive_a_restart(cri: CriHarness) -> None:
    helper_ref = await cri.pull(HELPER_IMAGE)
    busybox_ref = await cri.pull("busybox:1.36")
    before = await cri.images.ListImages(api.ListImagesRequest())
    assert {helper_ref, busybox_ref} <= {i.id for i in before.images}

    await cri.restart()

    assert await cri.images.ListImages(api.ListImagesRequest()) == before
    status = await cri.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image="busybox:1.36")))
    assert status.image.id == busybox_ref
    assert list(status.image.repo_tags) == ["docker.io/library/busybox:1.36"]
    # the image is usable without a new pull
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    cid = await cri.create(sid, cfg, image=HELPER_IMAGE)
    assert (await cri.status(cid)).image_id == helper_ref
    # a removed image stays removed
    await cri.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image="busybox:1.36")))
    await cri.restart()
    status = await cri.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image="busybox:1.36")))
    assert not status.HasField("image")
    listed = await cri.images.ListImages(api.ListImagesRequest())
    assert [i.id for i in listed.images] == [i.id for i in before.images if i.id != busybox_ref]


async def test_ip_assignments_survive_a_restart_and_new_ips_do_not_collide(cri: CriHarness) -> None:
    a = await cri.run_sandbox(name="a")
    b = await cri.run_sandbox(name="b")
    c = await cri.run_sandbox(name="c")
    ips = [(await sandbox_status(cri, s)).status.network.ip for s in (a, b, c)]
    assert ips == ["127.77.0.2", "127.77.0.3", "127.77.0.4"]
    await stop_then_remove_sandbox(cri, b)  # frees .3

    await cri.restart()

    assert (await sandbox_status(cri, a)).status.network.ip == "127.77.0.2"
    assert (await sandbox_status(cri, c)).status.network.ip == "127.77.0.4"
    d = await cri.run_sandbox(name="d")
    e = await cri.run_sandbox(name="e")
    assert (await sandbox_status(cri, d)).status.network.ip == "127.77.0.3"  # the freed one, lowest first
    assert (await sandbox_status(cri, e)).status.network.ip == "127.77.0.5"


async def test_pod_cidr_from_update_runtime_config_survives_a_restart(cri: CriHarness) -> None:
    """Kubelet sends the node's pod CIDR once; containerd keeps it (in the CNI config it writes)."""
    update = api.UpdateRuntimeConfigRequest(
        runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr="127.79.0.0/24"))
    )
    await cri.runtime.UpdateRuntimeConfig(update)
    a = await cri.run_sandbox(name="a")
    assert (await sandbox_status(cri, a)).status.network.ip == "127.79.0.2"
    await cri.restart()
    b = await cri.run_sandbox(name="b")
    assert (await sandbox_status(cri, a)).status.network.ip == "127.79.0.2"
    assert (await sandbox_status(cri, b)).status.network.ip == "127.79.0.3"


async def test_running_container_exits_on_time_when_its_exit_spans_a_restart(cri: CriHarness) -> None:
    _, cid = await cri.run_container(args=["--exit-after=10s", "--exit-code=4"])
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(4)

    await cri.restart()

    status = await cri.status(cid)
    assert (status.state, status.started_at, status.finished_at) == (api.CONTAINER_RUNNING, started, 0)
    await cri.clock.advance(5.999)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING
    await cri.clock.advance(0.001)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 4, "Error")
    assert status.finished_at == started + 10 * NS


async def test_container_whose_exit_passed_while_the_emulator_was_down_is_exited_after_restart(
    cri: CriHarness,
) -> None:
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg, args=["--exit-after=10s", "--log-rate=1"])
    await cri.start_container(cid)
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(3)

    await cri.stop()
    await cri.clock.advance(60)  # the emulator is down while the container's exit time passes
    await cri.start()

    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 0, "Completed")
    assert status.finished_at == started + 10 * NS
    # its output up to the exit was caught up, stamped when it was due, and nothing after it
    assert log_lines(log_file(cri, cfg)) == expected_lines(started, 1, 10)


async def test_oom_kill_time_is_kept_across_a_restart(cri: CriHarness) -> None:
    _, cid = await cri.run_container(
        args=["--memory-mib=100", "--memory-mib-per-second=1"], memory_limit=64 * 1024 * 1024
    )
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(30)
    await cri.restart()
    await cri.clock.advance(40)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 137, "OOMKilled")
    # 64 MiB limit minus the 512 KiB base, at 1 MiB/s: crossed 63.5 s after start, one ns past the exact point
    assert status.finished_at == started + 63_500_000_001


async def test_logging_continues_in_the_same_file_without_lost_or_duplicated_lines(cri: CriHarness) -> None:
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg, args=["--log-rate=2"])
    await cri.start_container(cid)
    started = (await cri.status(cid)).started_at
    path = log_file(cri, cfg)
    await cri.clock.advance(2.25)  # lines 1..5 due at 0, .5, 1, 1.5, 2 s
    assert log_lines(path) == expected_lines(started, 1, 5, NS // 2)
    inode = path.stat().st_ino

    await cri.restart()
    await cri.clock.advance(1.5)  # lines 6..8 due at 2.5, 3, 3.5 s
    await cri.restart()  # twice, to see that the second restart does not repeat anything either
    await cri.clock.advance(0.5)  # line 9 at 4 s

    assert path.stat().st_ino == inode
    assert log_lines(path) == expected_lines(started, 1, 9, NS // 2)


async def test_created_container_can_be_started_after_a_restart(cri: CriHarness) -> None:
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg, args=["--exit-after=1s"])
    await cri.restart()
    assert (await cri.status(cid)).state == api.CONTAINER_CREATED
    await cri.clock.advance(5)
    await cri.start_container(cid)
    started = cri.clock.now_ns()
    await cri.clock.advance(1)
    status = await cri.status(cid)
    assert (status.state, status.started_at, status.finished_at, status.reason) == (
        api.CONTAINER_EXITED, started, started + NS, "Completed",
    )


async def test_stop_in_progress_survives_a_restart(cri: CriHarness) -> None:
    _, cid = await cri.run_container(args=["--ignore-sigterm"])
    term_at = cri.clock.now_ns()
    stop = asyncio.ensure_future(cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=30)))
    # wait (real time, bounded) until the emulator has received the stop
    assert cri.server is not None
    rt = cri.server.runtime
    for _ in range(2000):
        if rt.containers.get(cid).kill_ns:
            break
        await asyncio.sleep(0.001)
    assert rt.containers.get(cid).kill_ns == term_at + 30 * NS
    await cri.clock.advance(10)

    await cri.restart()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await stop  # the call went away with the old server and its channel

    await cri.clock.advance(19.9)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING
    await cri.clock.advance(0.1)
    status = await cri.status(cid)
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 137, "Error")
    assert status.finished_at == term_at + 30 * NS


# -- removal, names and ids -------------------------------------------------------------------------


async def test_removed_objects_stay_removed_and_their_names_are_free(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="keep")
    sid = await cri.run_sandbox(cfg)
    kept = await cri.create(sid, cfg, name="kept")
    gone_c = await cri.create(sid, cfg, name="gone")
    await cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=gone_c))
    gone_cfg = cri.sandbox_config(name="gone")
    gone_sid = await cri.run_sandbox(gone_cfg)
    gone_child = await cri.create(gone_sid, gone_cfg, name="child")
    await stop_then_remove_sandbox(cri, gone_sid)

    await cri.restart()

    await expect_code(cri.status(gone_c), grpc.StatusCode.NOT_FOUND)
    await expect_code(cri.status(gone_child), grpc.StatusCode.NOT_FOUND)
    await expect_code(sandbox_status(cri, gone_sid), grpc.StatusCode.NOT_FOUND)
    sandboxes, containers = await list_all(cri)
    assert [s.id for s in sandboxes.items] == [sid]
    assert [c.id for c in containers.containers] == [kept]
    # the names are free again: the same metadata can be used for new objects
    again_c = await cri.create(sid, cfg, name="gone")
    again_sid = await cri.run_sandbox(gone_cfg)
    assert again_c != gone_c and again_sid != gone_sid


async def test_names_stay_reserved_after_a_restart(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="pod")
    sid = await cri.run_sandbox(cfg)
    cid = await cri.create(sid, cfg, name="c")

    await cri.restart()

    err = await expect_code(cri.run_sandbox(cfg), grpc.StatusCode.UNKNOWN)
    assert sid in str(err.details())
    err = await expect_code(cri.create(sid, cfg, name="c"), grpc.StatusCode.UNKNOWN)
    assert cid in str(err.details())
    # another attempt is another name
    assert await cri.create(sid, cfg, name="c", attempt=1) not in (cid, sid)


async def test_ids_after_a_restart_are_new_and_prefixes_still_resolve(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    old: list[str] = []
    for i in range(5):
        cfg = cri.sandbox_config(name=f"old-{i}")
        sid = await cri.run_sandbox(cfg)
        old += [sid, await cri.create(sid, cfg)]

    await cri.restart()

    new: list[str] = []
    for i in range(5):
        cfg = cri.sandbox_config(name=f"new-{i}")
        sid = await cri.run_sandbox(cfg)
        new += [sid, await cri.create(sid, cfg)]
    assert len(set(old + new)) == 20
    # a unique 12-character prefix (what crictl prints) still finds the old objects
    assert (await sandbox_status(cri, old[0][:12])).status.id == old[0]
    assert (await cri.status(old[1][:12])).id == old[1]


# -- the journal file and the lock --------------------------------------------------------------------


async def test_torn_journal_tail_is_truncated_and_the_state_before_it_is_intact(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    cid = await cri.create(sid, cfg)
    before_sb = await sandbox_status(cri, sid)
    before_c = await container_status(cri, cid)
    await cri.stop()

    journal = cri.state_dir / JOURNAL
    good = journal.read_bytes()
    assert good.endswith(b"\n")
    torn = b'{"k":"sandbox","id":"' + b"f" * 64 + b'","r":{"id":"ff'  # a write cut off mid-line
    journal.write_bytes(good + torn)

    await cri.start()

    assert journal.read_bytes() == good  # truncated to the last whole line
    assert await sandbox_status(cri, sid) == before_sb
    assert await container_status(cri, cid) == before_c
    sandboxes, _ = await list_all(cri)
    assert [s.id for s in sandboxes.items] == [sid]
    # writes after the truncation land on a line of their own and survive the next restart
    sid2 = await cri.run_sandbox(name="after")
    await cri.restart()
    sandboxes, _ = await list_all(cri)
    assert [s.id for s in sandboxes.items] == [sid, sid2]


async def test_second_emulator_on_a_state_dir_in_use_is_refused(cri: CriHarness, tmp_path: Path) -> None:
    sid = await cri.run_sandbox()
    with pytest.raises(FailedPrecondition) as info:
        CriServer(str(tmp_path / "other.sock"), cri.state_dir, cri.config, cri.clock)
    assert "in use" in info.value.message
    # the first emulator is unharmed
    assert (await sandbox_status(cri, sid)).status.state == api.SANDBOX_READY
    # once it has stopped, another emulator may take the directory over
    await cri.stop()
    other = CriServer(str(tmp_path / "other.sock"), cri.state_dir, cri.config, cri.clock)
    try:
        await other.start()
        assert [sb.id for sb in other.runtime.sandboxes] == [sid]
    finally:
        await other.stop(grace=0)
