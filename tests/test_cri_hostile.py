"""The CRI emulator under concurrency and hostile input.

Many clients at once must never see a failed RPC, a duplicated id or leftover objects; racing for one
name must have exactly one winner. Malformed input gets a clear status code (never INTERNAL, never a
traceback in the details), leaves the state as it was, and the emulator keeps working afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import CHANNEL_OPTIONS, CriHarness

HELPER_IMAGE = "kubeharness.test/khelper:1"
MIB = 1024 * 1024
CLIENTS = 16
CYCLES = 10


# -- helpers ----------------------------------------------------------------------------------------


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with; fails the test if it succeeds. Never a traceback for the client."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    details = str(info.value.details())
    assert "Traceback" not in details, details
    assert 'File "' not in details, details
    return info.value


async def expect(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    err = await rpc_error(call)
    assert err.code() == code, f"{err.code()}: {err.details()}"
    return str(err.details())


async def snapshot(cri: CriHarness) -> tuple[bytes, bytes, bytes]:
    """Everything a client can list, encoded, to compare before and after a bad request."""
    sandboxes = await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())
    containers = await cri.runtime.ListContainers(api.ListContainersRequest())
    images = await cri.images.ListImages(api.ListImagesRequest())
    return sandboxes.SerializeToString(), containers.SerializeToString(), images.SerializeToString()


async def pod_cycle(
    runtime: api_grpc.RuntimeServiceAsyncStub, cfg: api.PodSandboxConfig, image: str = HELPER_IMAGE
) -> tuple[str, str]:
    """Run a sandbox, create/start/stop/remove a container in it, stop and remove the sandbox."""
    sid = (await runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg))).pod_sandbox_id
    ccfg = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="c"), image=api.ImageSpec(image=image), log_path="c/0.log"
    )
    cid = (
        await runtime.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg))
    ).container_id
    await runtime.StartContainer(api.StartContainerRequest(container_id=cid))
    status = (await runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid))).status
    assert status.state == api.CONTAINER_RUNNING
    await runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=10))
    status = (await runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid))).status
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 0, "Completed")
    await runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid))
    await runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))
    await runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
    return sid, cid


async def still_works(cri: CriHarness, name: str = "after") -> None:
    """A full pod cycle succeeds and leaves nothing behind."""
    before = await snapshot(cri)
    await cri.pull(HELPER_IMAGE)
    await pod_cycle(cri.runtime, cri.sandbox_config(name=name))
    after = await snapshot(cri)
    assert after[:2] == before[:2]


def container_config(name: str = "c", image: str = HELPER_IMAGE, log_path: str = "c/0.log") -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=image), log_path=log_path
    )


# -- concurrency ------------------------------------------------------------------------------------


async def test_sixteen_clients_running_pod_cycles_at_once(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    channels = [grpc.aio.insecure_channel(f"unix://{cri.socket}", options=CHANNEL_OPTIONS) for _ in range(CLIENTS)]
    try:
        stubs = [api_grpc.RuntimeServiceStub(ch) for ch in channels]

        async def client(n: int) -> list[str]:
            ids: list[str] = []
            for i in range(CYCLES):
                ids += await pod_cycle(stubs[n], cri.sandbox_config(name=f"pod-{n}-{i}"))
            return ids

        results = await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    finally:
        for ch in channels:
            await ch.close(None)
    ids = [i for r in results for i in r]
    assert len(ids) == 2 * CLIENTS * CYCLES
    assert len(set(ids)) == len(ids), "an id was handed out twice"
    assert list((await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items) == []
    assert list((await cri.runtime.ListContainers(api.ListContainersRequest())).containers) == []
    assert list((await cri.runtime.ListContainerStats(api.ListContainerStatsRequest())).stats) == []
    await still_works(cri)


async def test_concurrent_create_container_with_one_name_has_exactly_one_winner(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    channels = [grpc.aio.insecure_channel(f"unix://{cri.socket}", options=CHANNEL_OPTIONS) for _ in range(CLIENTS)]
    try:
        request = api.CreateContainerRequest(pod_sandbox_id=sid, config=container_config("same"), sandbox_config=cfg)
        calls = [api_grpc.RuntimeServiceStub(ch).CreateContainer(request) for ch in channels]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for ch in channels:
            await ch.close(None)
    winners = [r.container_id for r in results if isinstance(r, api.CreateContainerResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == CLIENTS - 1, results
    assert {e.code() for e in losers} == {grpc.StatusCode.UNKNOWN}
    assert all(winners[0] in str(e.details()) for e in losers), "the error names the holder"
    listed = (await cri.runtime.ListContainers(api.ListContainersRequest())).containers
    assert [c.id for c in listed] == winners


async def test_concurrent_run_sandbox_with_one_metadata_has_exactly_one_winner(cri: CriHarness) -> None:
    cfg = cri.sandbox_config(name="race")
    results = await asyncio.gather(
        *(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg)) for _ in range(CLIENTS)),
        return_exceptions=True,
    )
    winners = [r.pod_sandbox_id for r in results if isinstance(r, api.RunPodSandboxResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == CLIENTS - 1, results
    assert {e.code() for e in losers} == {grpc.StatusCode.UNKNOWN}
    assert all(winners[0] in str(e.details()) for e in losers)
    listed = (await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items
    assert [s.id for s in listed] == winners
    # exactly one IP was taken: the next sandbox gets the next address
    other = await cri.run_sandbox(name="other")
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=other))
    assert status.status.network.ip == "127.77.0.3"


async def test_concurrent_stop_and_remove_of_one_pod_succeed_or_find_it_gone(cri: CriHarness) -> None:
    sid, cid = await cri.run_container()
    calls: list[Awaitable[Any]] = []
    for _ in range(4):
        calls += [
            cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=5)),
            cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid)),
            cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid)),
            cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid)),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    # removes always succeed; a stop that comes after a remove finds nothing (NOT_FOUND, as containerd 1.6)
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            assert index % 4 in (0, 2), result
            assert isinstance(result, grpc.aio.AioRpcError) and result.code() == grpc.StatusCode.NOT_FOUND
    assert list((await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items) == []
    assert list((await cri.runtime.ListContainers(api.ListContainersRequest())).containers) == []
    await still_works(cri)


# -- empty, huge and odd ids ------------------------------------------------------------------------


async def test_empty_ids_are_invalid_argument_everywhere(cri: CriHarness) -> None:
    r, i = cri.runtime, cri.images
    calls: dict[str, Awaitable[Any]] = {
        "PodSandboxStatus": r.PodSandboxStatus(api.PodSandboxStatusRequest()),
        "StopPodSandbox": r.StopPodSandbox(api.StopPodSandboxRequest()),
        "RemovePodSandbox": r.RemovePodSandbox(api.RemovePodSandboxRequest()),
        "CreateContainer": r.CreateContainer(
            api.CreateContainerRequest(config=container_config(), sandbox_config=cri.sandbox_config())
        ),
        "StartContainer": r.StartContainer(api.StartContainerRequest()),
        "StopContainer": r.StopContainer(api.StopContainerRequest()),
        "RemoveContainer": r.RemoveContainer(api.RemoveContainerRequest()),
        "ContainerStatus": r.ContainerStatus(api.ContainerStatusRequest()),
        "UpdateContainerResources": r.UpdateContainerResources(api.UpdateContainerResourcesRequest()),
        "ReopenContainerLog": r.ReopenContainerLog(api.ReopenContainerLogRequest()),
        "ExecSync": r.ExecSync(api.ExecSyncRequest(cmd=["true"])),
        "Exec": r.Exec(api.ExecRequest(cmd=["true"], stdout=True)),
        "Attach": r.Attach(api.AttachRequest(stdout=True)),
        "PortForward": r.PortForward(api.PortForwardRequest(port=[80])),
        "ContainerStats": r.ContainerStats(api.ContainerStatsRequest()),
        "PodSandboxStats": r.PodSandboxStats(api.PodSandboxStatsRequest()),
        "CheckpointContainer": r.CheckpointContainer(api.CheckpointContainerRequest()),
        "UpdatePodSandboxResources": r.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest()),
        "PullImage": i.PullImage(api.PullImageRequest(image=api.ImageSpec())),
        "ImageStatus": i.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec())),
        "RemoveImage": i.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec())),
    }
    before = await snapshot(cri)
    wrong: dict[str, str] = {}
    for name, call in calls.items():
        err = await rpc_error(call)
        if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
            wrong[name] = f"{err.code()}: {err.details()}"
    assert wrong == {}
    assert await snapshot(cri) == before
    await still_works(cri)


async def test_huge_and_nul_ids_get_clear_errors(cri: CriHarness) -> None:
    huge = "a" * MIB
    details = await expect(cri.status(huge), grpc.StatusCode.INVALID_ARGUMENT)
    assert "container_id" in details and len(details) < 1024  # the message does not echo the megabyte
    await expect(
        cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=huge)), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect(cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=huge)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    await expect(cri.status("abc\x00def"), grpc.StatusCode.NOT_FOUND)
    await expect(cri.status("../../etc/passwd"), grpc.StatusCode.NOT_FOUND)
    await still_works(cri)


# -- huge strings -----------------------------------------------------------------------------------


async def test_megabyte_names_are_invalid_argument_and_change_nothing(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    huge = "n" * MIB
    before = await snapshot(cri)
    for field in ("name", "namespace", "uid"):
        bad = cri.sandbox_config(name="big")
        setattr(bad.metadata, field, huge)
        details = await expect(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=bad)),
                               grpc.StatusCode.INVALID_ARGUMENT)
        assert f"metadata.{field}" in details and len(details) < 1024
    bad = cri.sandbox_config(name="big")
    bad.hostname = huge
    await expect(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=bad)), grpc.StatusCode.INVALID_ARGUMENT)
    details = await expect(cri.create(sid, cfg, name=huge), grpc.StatusCode.INVALID_ARGUMENT)
    assert "metadata.name" in details and len(details) < 1024
    await expect(cri.create(sid, cfg, image="x" * MIB), grpc.StatusCode.INVALID_ARGUMENT)
    await expect(cri.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image="x" * MIB))),
                 grpc.StatusCode.INVALID_ARGUMENT)
    assert await snapshot(cri) == before
    await still_works(cri)


async def test_megabyte_label_is_rejected_or_kept_exactly(cri: CriHarness) -> None:
    """validate.py bounds no label: a 1 MiB label value must either be refused clearly or round-trip."""
    big = "v" * MIB
    cfg = cri.sandbox_config(name="labelled", labels={"big": big})
    before = await snapshot(cri)
    try:
        sid = await cri.run_sandbox(cfg)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "Traceback" not in str(err.details())
        assert await snapshot(cri) == before
    else:
        status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert status.status.labels["big"] == big
        listed = await cri.runtime.ListPodSandbox(
            api.ListPodSandboxRequest(filter=api.PodSandboxFilter(label_selector={"big": big}))
        )
        assert [s.id for s in listed.items] == [sid]
        await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert await snapshot(cri) == before
    await still_works(cri)


async def test_message_over_16_mib_is_resource_exhausted(cri: CriHarness) -> None:
    before = await snapshot(cri)
    cfg = cri.sandbox_config(name="huge", labels={"big": "x" * (17 * MIB)})
    await expect(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg)), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert await snapshot(cri) == before
    # the same pod name was never reserved
    sid = await cri.run_sandbox(cri.sandbox_config(name="huge"))
    assert len(sid) == 64
    await still_works(cri)


# -- enums, missing fields, numbers -----------------------------------------------------------------


async def test_unknown_state_in_list_filters_matches_nothing(cri: CriHarness) -> None:
    """As containerd: the filter compares states, so an unknown one matches no object (no error)."""
    await cri.run_container()
    flt = api.ContainerFilter(state=api.ContainerStateValue(state=99))  # type: ignore[arg-type]
    listed = await cri.runtime.ListContainers(api.ListContainersRequest(filter=flt))
    assert list(listed.containers) == []
    sb_flt = api.PodSandboxFilter(state=api.PodSandboxStateValue(state=99))  # type: ignore[arg-type]
    assert list((await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest(filter=sb_flt))).items) == []
    streamed = [r async for r in cri.runtime.StreamContainers(api.StreamContainersRequest(filter=flt))]
    assert all(len(r.containers) == 0 for r in streamed)
    # the objects are still there for a valid filter
    running = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
    assert len((await cri.runtime.ListContainers(api.ListContainersRequest(filter=running))).containers) == 1
    await still_works(cri)


async def test_unknown_namespace_mode_and_mount_propagation_are_invalid_argument(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    before = await snapshot(cri)
    for field in ("network", "pid", "ipc"):
        cfg = cri.sandbox_config(name=f"ns-{field}")
        setattr(cfg.linux.security_context.namespace_options, field, 99)
        details = await expect(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg)),
                               grpc.StatusCode.INVALID_ARGUMENT)
        assert field in details
        assert await snapshot(cri) == before
        # the name was not left reserved by the refused request
        await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=await cri.run_sandbox(
            cri.sandbox_config(name=f"ns-{field}"))))
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    ccfg = container_config()
    ccfg.mounts.add(container_path="/data", host_path="/tmp", propagation=99)
    details = await expect(
        cri.runtime.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "propagation" in details
    # the container name was not left reserved
    assert await cri.create(sid, cfg, name="c")
    await still_works(cri)


async def test_missing_config_or_metadata_is_invalid_argument(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    before = await snapshot(cri)
    r = cri.runtime
    await expect(r.RunPodSandbox(api.RunPodSandboxRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    no_meta = api.PodSandboxConfig(log_directory=str(cri.log_dir / "x"))
    await expect(r.RunPodSandbox(api.RunPodSandboxRequest(config=no_meta)), grpc.StatusCode.INVALID_ARGUMENT)
    await expect(r.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=cfg)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    no_cmeta = api.ContainerConfig(image=api.ImageSpec(image=HELPER_IMAGE))
    await expect(r.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=no_cmeta, sandbox_config=cfg)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    no_image = api.ContainerConfig(metadata=api.ContainerMetadata(name="c"))
    await expect(r.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=no_image, sandbox_config=cfg)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    await expect(r.ExecSync(api.ExecSyncRequest(container_id="abc")), grpc.StatusCode.INVALID_ARGUMENT)
    assert await snapshot(cri) == before
    await still_works(cri)


async def test_negative_timeouts_and_bad_ports_are_invalid_argument(cri: CriHarness) -> None:
    sid, cid = await cri.run_container()
    r = cri.runtime
    await expect(r.StopContainer(api.StopContainerRequest(container_id=cid, timeout=-1)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    await expect(r.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=-5)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    await expect(r.PortForward(api.PortForwardRequest(pod_sandbox_id=sid, port=[70000])),
                 grpc.StatusCode.INVALID_ARGUMENT)
    await expect(r.PortForward(api.PortForwardRequest(pod_sandbox_id=sid, port=[-1])),
                 grpc.StatusCode.INVALID_ARGUMENT)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING  # the refused stop did nothing
    await still_works(cri)


# -- paths and NUL bytes ----------------------------------------------------------------------------


async def test_log_directory_traversal_and_relative_paths_are_refused(cri: CriHarness) -> None:
    before = await snapshot(cri)
    for bad in (
        str(cri.root / "pods" / ".." / ".." / "escape"),
        f"{cri.root}/pods/..",
        "relative/pods",
        "../../etc",
        f"{cri.root}/pods\x00/x",
    ):
        cfg = cri.sandbox_config(name="trav")
        cfg.log_directory = bad
        await expect(cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg)), grpc.StatusCode.INVALID_ARGUMENT)
    assert await snapshot(cri) == before
    assert not (cri.root.parent / "escape").exists()
    await still_works(cri, name="trav")  # the name was never taken


async def test_log_path_traversal_is_refused_and_writes_nothing_outside(cri: CriHarness) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    before = await snapshot(cri)
    outside = cri.root / "outside.log"
    for bad in ("../../outside.log", "c/../../../outside.log", str(outside), "c/0\x00.log", ".."):
        request = api.CreateContainerRequest(
            pod_sandbox_id=sid, config=container_config(log_path=bad), sandbox_config=cfg
        )
        details = await expect(cri.runtime.CreateContainer(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert "log_path" in details
    assert await snapshot(cri) == before
    assert not outside.exists()
    assert sorted(p.name for p in cri.root.iterdir()) == sorted(["cri.sock", "state"])
    await still_works(cri)


async def test_nul_bytes_in_names_are_refused_or_kept_exactly(cri: CriHarness) -> None:
    """validate.py does not look for NUL in names; either refusal or an exact round trip is acceptable."""
    await cri.pull(HELPER_IMAGE)
    before = await snapshot(cri)
    cfg = cri.sandbox_config(name="po\x00d", uid="u\x00id")
    cfg.log_directory = str(cri.log_dir / "nul")  # NUL only in the names, not in a path
    try:
        sid = await cri.run_sandbox(cfg)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert await snapshot(cri) == before
    else:
        status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert (status.status.metadata.name, status.status.metadata.uid) == ("po\x00d", "u\x00id")
        try:
            cid = await cri.create(sid, cfg, name="c\x00")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        else:
            assert (await cri.status(cid)).metadata.name == "c\x00"
        # NUL does not let two different names collide: "po" + NUL + "d" is not "po"
        other = await cri.run_sandbox(cri.sandbox_config(name="po", uid="u"))
        await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=other))
        await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
        assert await snapshot(cri) == before
    await still_works(cri)


# -- bytes that are no request at all, exhausted address pools ---------------------------------------


async def test_garbage_request_bytes_are_refused_without_a_traceback(cri: CriHarness) -> None:
    assert cri.channel is not None
    before = await snapshot(cri)
    for method in ("/runtime.v1.RuntimeService/RunPodSandbox", "/runtime.v1.RuntimeService/ContainerStatus",
                   "/runtime.v1.ImageService/PullImage"):
        call = cri.channel.unary_unary(method, None, None)
        # an unterminated varint, then a string field holding invalid UTF-8
        for payload in (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x12\x02\xff\xfe"):
            err = await rpc_error(call(payload))
            # containerd (Go gRPC) answers INTERNAL for a request it cannot unmarshal
            assert err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), err.details()
    await expect(cri.channel.unary_unary("/runtime.v1.RuntimeService/NoSuchMethod", None, None)(b""),
                 grpc.StatusCode.UNIMPLEMENTED)
    assert await snapshot(cri) == before
    await still_works(cri)


async def test_exhausted_pod_cidr_refuses_cleanly_and_frees_the_name(cri: CriHarness) -> None:
    # a /30 has exactly one address to hand out (.2: .0 is the network, .1 the gateway, .3 broadcast)
    update = api.UpdateRuntimeConfigRequest(
        runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr="127.78.0.0/30"))
    )
    await cri.runtime.UpdateRuntimeConfig(update)
    first = await cri.run_sandbox(name="first")
    ip = (await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=first))).status.network.ip
    assert ip == "127.78.0.2"
    before = await snapshot(cri)
    await expect(cri.run_sandbox(name="second"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert await snapshot(cri) == before
    # once an address is free again, the same pod can be run: its name was not left reserved
    await cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=first))
    second = await cri.run_sandbox(name="second")
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=second))
    assert status.status.network.ip == "127.78.0.2"


async def test_invalid_pod_cidr_update_is_invalid_argument(cri: CriHarness) -> None:
    for bad in ("not-a-cidr", "10.0.0.0/33", "127.0.0.1/8/8"):
        update = api.UpdateRuntimeConfigRequest(
            runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=bad))
        )
        await expect(cri.runtime.UpdateRuntimeConfig(update), grpc.StatusCode.INVALID_ARGUMENT)
    sid = await cri.run_sandbox(name="still-default")
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert status.status.network.ip == "127.77.0.2"
    await still_works(cri)
