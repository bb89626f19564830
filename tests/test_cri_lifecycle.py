"""Sandbox and container lifecycle through the real gRPC client: Run/Stop/Remove/Status of sandboxes,
Create/Start/Stop/Remove/Status of containers, the List filters and their Stream forms, and the
GetContainerEvents stream.

Every timestamp is checked against the virtual clock: the clock is advanced between steps so that
each of created_at, started_at and finished_at has a distinct, exactly known value.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc
import pytest

from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
HELPER_IMAGE = "kubeharness.test/khelper:1"
UNPULLED_IMAGE = "busybox:1.36"  # in the catalog, never pulled in these tests
POD_CIDR = ipaddress.ip_network("127.77.0.0/16")
UNKNOWN_ID = "f" * 64
HEX = "0123456789abcdef"

T = TypeVar("T")


# -- helpers ----------------------------------------------------------------------------------------


async def finish(call: Awaitable[T]) -> T:
    """Await a call that should complete now (the real-time bound only guards against a hang)."""
    return await asyncio.wait_for(call, timeout=10)


async def expect_code(call: Awaitable[object], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def settle() -> None:
    """Give an in-flight gRPC round trip the chance to complete (only before asserting 'not done')."""
    for _ in range(20):
        await asyncio.sleep(0.002)


def container_config(name: str = "c", attempt: int = 0, image: str = HELPER_IMAGE,
                     args: list[str] | None = None, command: list[str] | None = None,
                     labels: dict[str, str] | None = None,
                     annotations: dict[str, str] | None = None) -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=attempt),
        image=api.ImageSpec(image=image),
        command=command or [],
        args=args or [],
        log_path=f"{name}/{attempt}.log",
        labels=labels or {},
        annotations=annotations or {},
    )


async def create_with(cri: CriHarness, sid: str, sb_cfg: api.PodSandboxConfig,
                      cfg: api.ContainerConfig) -> str:
    req = api.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=sb_cfg)
    return (await cri.runtime.CreateContainer(req)).container_id


async def sandbox_status(cri: CriHarness, sid: str) -> api.PodSandboxStatus:
    return (await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))).status


def stop_sandbox(cri: CriHarness, sid: str) -> Awaitable[api.StopPodSandboxResponse]:
    return cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))


def remove_sandbox(cri: CriHarness, sid: str) -> Awaitable[api.RemovePodSandboxResponse]:
    return cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))


def stop_container(cri: CriHarness, cid: str, timeout: int = 0) -> Awaitable[api.StopContainerResponse]:
    return cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=timeout))


def remove_container(cri: CriHarness, cid: str) -> Awaitable[api.RemoveContainerResponse]:
    return cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid))


async def list_sandbox_ids(cri: CriHarness, flt: api.PodSandboxFilter | None = None) -> list[str]:
    req = api.ListPodSandboxRequest(filter=flt) if flt is not None else api.ListPodSandboxRequest()
    return [sb.id for sb in (await cri.runtime.ListPodSandbox(req)).items]


async def list_container_ids(cri: CriHarness, flt: api.ContainerFilter | None = None) -> list[str]:
    req = api.ListContainersRequest(filter=flt) if flt is not None else api.ListContainersRequest()
    return [c.id for c in (await cri.runtime.ListContainers(req)).containers]


def sb_state(state: api.PodSandboxState) -> api.PodSandboxStateValue:
    return api.PodSandboxStateValue(state=state)


def c_state(state: api.ContainerState) -> api.ContainerStateValue:
    return api.ContainerStateValue(state=state)


def ambiguous_prefix(ids: list[str]) -> str:
    """A one-character prefix shared by at least two of ``ids`` (17+ hex ids always have one)."""
    for ch in HEX:
        if sum(1 for i in ids if i.startswith(ch)) >= 2:
            return ch
    raise AssertionError("no shared first character")


def unused_prefix(ids: list[str]) -> str:
    """A two-character hex prefix that none of ``ids`` starts with."""
    for a in HEX:
        for b in HEX:
            if not any(i.startswith(a + b) for i in ids):
                return a + b
    raise AssertionError("every two-character prefix is used")


async def many_sandboxes(cri: CriHarness, n: int = 17) -> list[str]:
    return [await cri.run_sandbox(name=f"many-{i}") for i in range(n)]


async def helper_pod(cri: CriHarness, name: str = "pod",
                     labels: dict[str, str] | None = None) -> tuple[str, api.PodSandboxConfig]:
    cfg = cri.sandbox_config(name=name, labels=labels)
    return await cri.run_sandbox(cfg), cfg


# -- RunPodSandbox / PodSandboxStatus -----------------------------------------------------------------


async def test_run_pod_sandbox_status_echoes_config_and_is_ready_on_the_clock(cri: CriHarness) -> None:
    await cri.clock.advance(42)
    cfg = cri.sandbox_config(name="web", namespace="prod", uid="uid-123", attempt=2,
                             labels={"app": "web", "io.kubernetes.pod.name": "web"})
    cfg.annotations["kubernetes.io/config.seen"] = "2026-01-01"
    cfg.annotations["note"] = "x"
    created = cri.clock.now_ns()
    sid = await cri.run_sandbox(cfg)
    await cri.clock.advance(3)
    resp = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    st = resp.status
    assert st.id == sid
    assert len(sid) == 64 and all(ch in HEX for ch in sid)
    assert (st.metadata.name, st.metadata.namespace, st.metadata.uid, st.metadata.attempt) == (
        "web", "prod", "uid-123", 2)
    assert dict(st.labels) == {"app": "web", "io.kubernetes.pod.name": "web"}
    assert dict(st.annotations) == {"kubernetes.io/config.seen": "2026-01-01", "note": "x"}
    assert st.state == api.SANDBOX_READY
    assert st.created_at == created
    assert st.runtime_handler == ""
    assert ipaddress.ip_address(st.network.ip) in POD_CIDR
    # containerd 1.6 leaves the evented-PLEG fields empty
    assert (resp.timestamp, list(resp.containers_statuses)) == (0, [])


async def test_sandbox_ips_are_unique_in_the_pod_cidr_and_host_network_gets_none(cri: CriHarness) -> None:
    sids = [await cri.run_sandbox(name=f"p{i}") for i in range(5)]
    ips = [(await sandbox_status(cri, sid)).network.ip for sid in sids]
    assert len(set(ips)) == 5
    assert all(ipaddress.ip_address(ip) in POD_CIDR for ip in ips)
    # network and gateway addresses are never handed out; the lowest free address is
    assert ips[0] == "127.77.0.2"
    host = await cri.run_sandbox(cri.sandbox_config(name="host", host_network=True))
    st = await sandbox_status(cri, host)
    assert st.network.ip == ""
    assert st.linux.namespaces.options.network == api.NODE
    assert st.state == api.SANDBOX_READY


async def test_sandbox_ip_is_stable_while_it_lives(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    ip = (await sandbox_status(cri, sid)).network.ip
    await cri.pull(HELPER_IMAGE)
    for attempt in range(3):
        cid = await cri.create(sid, cfg, attempt=attempt)
        await cri.start_container(cid)
        await stop_container(cri, cid)
        await cri.clock.advance(10)
    assert (await sandbox_status(cri, sid)).network.ip == ip


async def test_run_pod_sandbox_with_the_same_metadata_is_refused_naming_the_holder(
    cri: CriHarness,
) -> None:
    cfg = cri.sandbox_config(name="dup")
    first = await cri.run_sandbox(cfg)
    details = await expect_code(cri.run_sandbox(cfg), grpc.StatusCode.UNKNOWN)
    assert first in details
    assert await list_sandbox_ids(cri) == [first]
    # another attempt is another name
    second = await cri.run_sandbox(cri.sandbox_config(name="dup", attempt=1))
    assert second != first
    # a stopped sandbox still holds its name; a removed one frees it
    await stop_sandbox(cri, first)
    await expect_code(cri.run_sandbox(cfg), grpc.StatusCode.UNKNOWN)
    await remove_sandbox(cri, first)
    third = await cri.run_sandbox(cfg)
    assert third not in (first, second)
    assert (await sandbox_status(cri, third)).state == api.SANDBOX_READY


async def test_sandbox_status_accepts_a_unique_prefix_and_rejects_an_ambiguous_one(cri: CriHarness) -> None:
    sids = await many_sandboxes(cri)
    target = sids[5]
    prefixes = [target[:n] for n in range(1, 65) if sum(1 for s in sids if s.startswith(target[:n])) == 1]
    st = await sandbox_status(cri, prefixes[0])
    assert st.id == target
    await expect_code(sandbox_status(cri, ambiguous_prefix(sids)), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(sandbox_status(cri, unused_prefix(sids)), grpc.StatusCode.NOT_FOUND)
    await expect_code(sandbox_status(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)


# -- StopPodSandbox / RemovePodSandbox --------------------------------------------------------------


async def test_stop_pod_sandbox_kills_running_containers_and_leaves_created_ones(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    running = await cri.create(sid, cfg, name="running")
    await cri.start_container(running)
    created = await cri.create(sid, cfg, name="created")
    await cri.clock.advance(7)
    stopped_at = cri.clock.now_ns()
    await finish(stop_sandbox(cri, sid))
    await cri.clock.advance(1)

    st = await sandbox_status(cri, sid)
    assert st.state == api.SANDBOX_NOTREADY
    assert st.network.ip == ""
    r = await cri.status(running)
    assert (r.state, r.exit_code, r.reason, r.finished_at) == (api.CONTAINER_EXITED, 137, "Error", stopped_at)
    c = await cri.status(created)
    assert (c.state, c.started_at, c.finished_at, c.exit_code) == (api.CONTAINER_CREATED, 0, 0, 0)
    # both stay listed in the sandbox
    listed = await cri.runtime.ListContainers(api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=sid)))
    assert {c.id: c.state for c in listed.containers} == {running: api.CONTAINER_EXITED, created: api.CONTAINER_CREATED}


async def test_a_created_container_of_a_stopped_sandbox_cannot_start(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg)
    await stop_sandbox(cri, sid)
    await expect_code(cri.start_container(cid), grpc.StatusCode.UNKNOWN)
    assert (await cri.status(cid)).state == api.CONTAINER_CREATED


async def test_remove_pod_sandbox_removes_its_containers(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    other, other_cfg = await helper_pod(cri, name="other")
    await cri.pull(HELPER_IMAGE)
    running = await cri.create(sid, cfg, name="running")
    await cri.start_container(running)
    created = await cri.create(sid, cfg, name="created")
    exited = await cri.create(sid, cfg, name="exited", args=["--exit-after=1s"])
    await cri.start_container(exited)
    await cri.clock.advance(2)
    kept = await cri.create(other, other_cfg, name="kept")

    await finish(remove_sandbox(cri, sid))  # without a StopPodSandbox first: forced

    await expect_code(sandbox_status(cri, sid), grpc.StatusCode.NOT_FOUND)
    for cid in (running, created, exited):
        await expect_code(cri.status(cid), grpc.StatusCode.NOT_FOUND)
    assert await list_sandbox_ids(cri) == [other]
    assert await list_container_ids(cri) == [kept]
    # the removed sandbox's container names are free again in a new sandbox with the same metadata
    sid2 = await cri.run_sandbox(cfg)
    again = await cri.create(sid2, cfg, name="running")
    assert again != running


async def test_stop_and_remove_pod_sandbox_are_idempotent(cri: CriHarness) -> None:
    sid, _ = await helper_pod(cri)
    await stop_sandbox(cri, sid)
    await cri.clock.advance(1)
    await stop_sandbox(cri, sid)
    st = await sandbox_status(cri, sid)
    assert (st.state, st.network.ip) == (api.SANDBOX_NOTREADY, "")
    await remove_sandbox(cri, sid)
    await remove_sandbox(cri, sid)
    await expect_code(stop_sandbox(cri, sid), grpc.StatusCode.NOT_FOUND)  # after remove: unknown, as containerd 1.6
    await expect_code(sandbox_status(cri, sid), grpc.StatusCode.NOT_FOUND)
    assert await list_sandbox_ids(cri) == []


async def test_stop_of_an_unknown_sandbox_is_not_found_and_remove_succeeds(cri: CriHarness) -> None:
    await expect_code(stop_sandbox(cri, UNKNOWN_ID), grpc.StatusCode.NOT_FOUND)  # as containerd 1.6 answers
    await remove_sandbox(cri, UNKNOWN_ID)
    await expect_code(stop_sandbox(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(remove_sandbox(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)


# -- ListPodSandbox ---------------------------------------------------------------------------------


async def _three_pods(cri: CriHarness) -> tuple[str, str, str]:
    """a (app=web, tier=fe) READY, b (app=web, tier=be) NOTREADY, c (app=db) READY."""
    a = await cri.run_sandbox(name="a", labels={"app": "web", "tier": "fe"})
    b = await cri.run_sandbox(name="b", labels={"app": "web", "tier": "be"})
    c = await cri.run_sandbox(name="c", labels={"app": "db"})
    await stop_sandbox(cri, b)
    return a, b, c


async def test_list_pod_sandbox_entries_describe_the_sandboxes(cri: CriHarness) -> None:
    await cri.clock.advance(5)
    t_a = cri.clock.now_ns()
    cfg = cri.sandbox_config(name="a", labels={"app": "web"})
    cfg.annotations["k"] = "v"
    a = await cri.run_sandbox(cfg)
    await cri.clock.advance(1)
    b = await cri.run_sandbox(name="b")
    await stop_sandbox(cri, b)
    items = {sb.id: sb for sb in (await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items}
    assert set(items) == {a, b}
    assert (items[a].metadata.name, items[a].state, items[a].created_at) == ("a", api.SANDBOX_READY, t_a)
    assert dict(items[a].labels) == {"app": "web"}
    assert dict(items[a].annotations) == {"k": "v"}
    assert (items[b].metadata.name, items[b].state, items[b].created_at) == (
        "b", api.SANDBOX_NOTREADY, t_a + NS)


async def test_list_pod_sandbox_by_id_full_and_unique_prefix(cri: CriHarness) -> None:
    sids = await many_sandboxes(cri)
    target = sids[3]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=target)) == [target]
    unique = next(target[:n] for n in range(1, 65) if sum(1 for s in sids if s.startswith(target[:n])) == 1)
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=unique)) == [target]
    # an unknown or ambiguous id matches nothing (no error)
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=UNKNOWN_ID)) == []
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=unused_prefix(sids))) == []
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=ambiguous_prefix(sids))) == []


async def test_list_pod_sandbox_by_state(cri: CriHarness) -> None:
    a, b, c = await _three_pods(cri)
    assert set(await list_sandbox_ids(cri, api.PodSandboxFilter(state=sb_state(api.SANDBOX_READY)))) == {a, c}
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(state=sb_state(api.SANDBOX_NOTREADY))) == [b]
    assert set(await list_sandbox_ids(cri)) == {a, b, c}


async def test_list_pod_sandbox_by_label_selector_requires_every_label(cri: CriHarness) -> None:
    a, b, c = await _three_pods(cri)
    assert set(await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"app": "web"}))) == {a, b}
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"app": "web", "tier": "be"})) == [b]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"app": "web", "tier": "x"})) == []
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"tier": "fe"})) == [a]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"app": "db"})) == [c]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(label_selector={"missing": ""})) == []


async def test_list_pod_sandbox_combined_filters_must_all_hold(cri: CriHarness) -> None:
    a, b, c = await _three_pods(cri)
    ready = sb_state(api.SANDBOX_READY)
    web = {"app": "web"}
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(state=ready, label_selector=web)) == [a]
    assert await list_sandbox_ids(
        cri, api.PodSandboxFilter(state=sb_state(api.SANDBOX_NOTREADY), label_selector=web)) == [b]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=a, state=ready, label_selector=web)) == [a]
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=b, state=ready)) == []
    assert await list_sandbox_ids(cri, api.PodSandboxFilter(id=c, label_selector=web)) == []


# -- container lifecycle ----------------------------------------------------------------------------


async def test_container_goes_created_running_exited_removed_with_exact_status(cri: CriHarness) -> None:
    sid, sb_cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    image = (await cri.images.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=HELPER_IMAGE)))).image
    await cri.clock.advance(10)
    created_at = cri.clock.now_ns()
    cfg = container_config(name="app", attempt=3, args=["--exit-after=5s"],
                           labels={"io.kubernetes.container.name": "app"}, annotations={"hash": "abc"})
    cid = await create_with(cri, sid, sb_cfg, cfg)
    assert len(cid) == 64 and all(ch in HEX for ch in cid) and cid != sid

    s = await cri.status(cid)
    assert s.id == cid
    assert (s.metadata.name, s.metadata.attempt) == ("app", 3)
    assert s.state == api.CONTAINER_CREATED
    assert (s.created_at, s.started_at, s.finished_at, s.exit_code, s.reason) == (created_at, 0, 0, 0, "")
    assert s.image.image == "kubeharness.test/khelper:1"
    assert s.image_ref == image.repo_digests[0]
    assert s.image_ref.startswith("kubeharness.test/khelper@sha256:")
    assert s.image_id == image.id
    assert dict(s.labels) == {"io.kubernetes.container.name": "app"}
    assert dict(s.annotations) == {"hash": "abc"}
    assert s.log_path == f"{sb_cfg.log_directory}/app/3.log"

    await cri.clock.advance(2)
    started_at = cri.clock.now_ns()
    await cri.start_container(cid)
    s = await cri.status(cid)
    assert (s.state, s.created_at, s.started_at, s.finished_at, s.exit_code, s.reason) == (
        api.CONTAINER_RUNNING, created_at, started_at, 0, 0, "")

    await cri.clock.advance(5)
    s = await cri.status(cid)
    assert (s.state, s.created_at, s.started_at, s.finished_at, s.exit_code, s.reason) == (
        api.CONTAINER_EXITED, created_at, started_at, started_at + 5 * NS, 0, "Completed")

    await remove_container(cri, cid)
    await expect_code(cri.status(cid), grpc.StatusCode.NOT_FOUND)
    assert await list_container_ids(cri) == []


async def test_stop_container_with_timeout_0_kills_at_once(cri: CriHarness) -> None:
    _, cid = await cri.run_container()
    await cri.clock.advance(4)
    stop_at = cri.clock.now_ns()
    await finish(stop_container(cri, cid, timeout=0))
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.reason, s.finished_at) == (api.CONTAINER_EXITED, 137, "Error", stop_at)


@pytest.mark.parametrize(
    ("image", "args", "code", "reason"),
    [
        # khelper without --sigterm-* flags shuts down cleanly on SIGTERM (--sigterm-exit-code defaults to 0)
        ("kubeharness.test/khelper:1", None, 0, "Completed"),
        ("kubeharness.test/khelper:1", ["--sigterm-exit-code=3"], 3, "Error"),
        # an opaque program (no SIGTERM handler) dies of SIGTERM: 128 + 15
        ("kubeharness.test/app:1", None, 143, "Error"),
    ],
)
async def test_stop_container_with_timeout_ends_at_sigterm(
    cri: CriHarness, image: str, args: list[str] | None, code: int, reason: str
) -> None:
    _, cid = await cri.run_container(image=image, args=args)
    await cri.clock.advance(4)
    stop_at = cri.clock.now_ns()
    await finish(stop_container(cri, cid, timeout=30))  # no clock advance needed: it exits at SIGTERM
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.reason, s.finished_at) == (api.CONTAINER_EXITED, code, reason, stop_at)


async def test_stop_container_ignoring_sigterm_waits_the_timeout_on_the_clock_then_kills(
    cri: CriHarness,
) -> None:
    _, cid = await cri.run_container(args=["--ignore-sigterm"])
    await cri.clock.advance(3)
    assert cri.clock.pending() == 0
    stop_at = cri.clock.now_ns()
    call = asyncio.ensure_future(stop_container(cri, cid, timeout=10))
    await cri.until_timer_added(0)  # the server has the SIGKILL scheduled
    await cri.clock.advance(9.95)
    await settle()
    assert not call.done()
    s = await cri.status(cid)
    assert (s.state, s.finished_at) == (api.CONTAINER_RUNNING, 0)
    await cri.drive(call, step=0.01)
    assert cri.clock.now_ns() >= stop_at + 10 * NS  # it did not return before the timeout elapsed
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.reason, s.finished_at) == (
        api.CONTAINER_EXITED, 137, "Error", stop_at + 10 * NS)


async def test_start_container_twice_and_after_exit_is_refused_as_containerd_does(cri: CriHarness) -> None:
    _, cid = await cri.run_container()
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(1)
    await expect_code(cri.start_container(cid), grpc.StatusCode.UNKNOWN)
    s = await cri.status(cid)
    assert (s.state, s.started_at) == (api.CONTAINER_RUNNING, started)
    await stop_container(cri, cid)
    await expect_code(cri.start_container(cid), grpc.StatusCode.UNKNOWN)
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    await expect_code(cri.start_container(UNKNOWN_ID), grpc.StatusCode.NOT_FOUND)
    await expect_code(cri.start_container(""), grpc.StatusCode.INVALID_ARGUMENT)


async def test_create_container_in_a_stopped_sandbox_is_not_found_as_containerd_answers(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    await stop_sandbox(cri, sid)
    details = await expect_code(cri.create(sid, cfg), grpc.StatusCode.NOT_FOUND)
    assert sid in details
    assert await list_container_ids(cri) == []


async def test_create_container_in_an_unknown_sandbox_is_not_found(cri: CriHarness) -> None:
    cfg = cri.sandbox_config()
    await cri.pull(HELPER_IMAGE)
    await expect_code(cri.create(UNKNOWN_ID, cfg), grpc.StatusCode.NOT_FOUND)
    sid = await cri.run_sandbox(cfg)
    await remove_sandbox(cri, sid)
    await expect_code(cri.create(sid, cfg), grpc.StatusCode.NOT_FOUND)
    await expect_code(cri.create("", cfg), grpc.StatusCode.INVALID_ARGUMENT)
    assert await list_container_ids(cri) == []


async def test_create_container_with_an_image_not_pulled_is_not_found(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    details = await expect_code(cri.create(sid, cfg, image=UNPULLED_IMAGE), grpc.StatusCode.NOT_FOUND)
    assert UNPULLED_IMAGE in details
    assert await list_container_ids(cri) == []
    # once pulled, the same request works
    await cri.pull(UNPULLED_IMAGE)
    cid = await cri.create(sid, cfg, image=UNPULLED_IMAGE)
    assert (await cri.status(cid)).image.image == "docker.io/library/busybox:1.36"


async def test_container_name_conflict_is_refused_naming_the_holder(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    first = await cri.create(sid, cfg, name="app")
    details = await expect_code(cri.create(sid, cfg, name="app"), grpc.StatusCode.UNKNOWN)
    assert first in details
    assert await list_container_ids(cri) == [first]
    # another attempt or another name is fine; so is the same name in another sandbox
    retry = await cri.create(sid, cfg, name="app", attempt=1)
    other_sid, other_cfg = await helper_pod(cri, name="other")
    elsewhere = await cri.create(other_sid, other_cfg, name="app")
    assert len({first, retry, elsewhere}) == 3
    # an exited container still holds the name; a removed one frees it
    await cri.start_container(first)
    await stop_container(cri, first)
    details = await expect_code(cri.create(sid, cfg, name="app"), grpc.StatusCode.UNKNOWN)
    assert first in details
    await remove_container(cri, first)
    again = await cri.create(sid, cfg, name="app")
    assert again != first
    assert (await cri.status(again)).state == api.CONTAINER_CREATED


async def test_remove_of_a_running_container_force_stops_it(cri: CriHarness) -> None:
    sid, cid = await cri.run_container(args=["--ignore-sigterm"])
    await finish(remove_container(cri, cid))
    await expect_code(cri.status(cid), grpc.StatusCode.NOT_FOUND)
    resp = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert list(resp.containers_statuses) == []
    assert resp.status.state == api.SANDBOX_READY


async def test_stop_and_remove_container_are_idempotent_and_stop_of_unknown_ids_is_not_found(
    cri: CriHarness,
) -> None:
    _, cid = await cri.run_container()
    await stop_container(cri, cid)
    finished = (await cri.status(cid)).finished_at
    await cri.clock.advance(5)
    await stop_container(cri, cid, timeout=10)
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.finished_at) == (api.CONTAINER_EXITED, 137, finished)
    await remove_container(cri, cid)
    await remove_container(cri, cid)
    await expect_code(stop_container(cri, cid), grpc.StatusCode.NOT_FOUND)  # gone: as containerd 1.6 answers
    await expect_code(stop_container(cri, UNKNOWN_ID, timeout=5), grpc.StatusCode.NOT_FOUND)
    await remove_container(cri, UNKNOWN_ID)
    await expect_code(stop_container(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(remove_container(cri, ""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(cri.status(UNKNOWN_ID), grpc.StatusCode.NOT_FOUND)


async def test_stop_of_a_created_container_leaves_it_created(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    cid = await cri.create(sid, cfg)
    await stop_container(cri, cid, timeout=10)
    s = await cri.status(cid)
    assert (s.state, s.started_at, s.finished_at) == (api.CONTAINER_CREATED, 0, 0)
    await cri.start_container(cid)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING


async def test_container_status_accepts_a_unique_prefix(cri: CriHarness) -> None:
    _, cid = await cri.run_container()
    s = await cri.status(cid[:12])
    assert (s.id, s.state) == (cid, api.CONTAINER_RUNNING)
    await stop_container(cri, cid[:12])
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED


# -- ListContainers ---------------------------------------------------------------------------------


async def _containers(cri: CriHarness) -> tuple[str, str, dict[str, str]]:
    """Two sandboxes; p1: run (RUNNING, tier=fe), made (CREATED, tier=be), done (EXITED, tier=fe);
    p2: other (RUNNING, tier=fe, app=x)."""
    s1, cfg1 = await helper_pod(cri, name="p1")
    s2, cfg2 = await helper_pod(cri, name="p2")
    await cri.pull(HELPER_IMAGE)
    ids = {
        "run": await cri.create(s1, cfg1, name="run", labels={"tier": "fe"}),
        "made": await cri.create(s1, cfg1, name="made", labels={"tier": "be"}),
        "done": await cri.create(s1, cfg1, name="done", labels={"tier": "fe"}),
        "other": await cri.create(s2, cfg2, name="other", labels={"tier": "fe", "app": "x"}),
    }
    for name in ("run", "done", "other"):
        await cri.start_container(ids[name])
    await stop_container(cri, ids["done"])
    return s1, s2, ids


async def test_list_containers_entries_describe_the_containers(cri: CriHarness) -> None:
    s1, s2, ids = await _containers(cri)
    listed = {c.id: c for c in (await cri.runtime.ListContainers(api.ListContainersRequest())).containers}
    assert set(listed) == set(ids.values())
    assert {n: listed[i].state for n, i in ids.items()} == {
        "run": api.CONTAINER_RUNNING, "made": api.CONTAINER_CREATED,
        "done": api.CONTAINER_EXITED, "other": api.CONTAINER_RUNNING}
    assert {n: listed[i].pod_sandbox_id for n, i in ids.items()} == {
        "run": s1, "made": s1, "done": s1, "other": s2}
    entry = listed[ids["other"]]
    assert (entry.metadata.name, entry.image.image) == ("other", HELPER_IMAGE)
    assert dict(entry.labels) == {"tier": "fe", "app": "x"}
    assert entry.created_at == (await cri.status(ids["other"])).created_at


async def test_list_containers_by_id_and_prefix(cri: CriHarness) -> None:
    _, _, ids = await _containers(cri)
    target = ids["made"]
    assert await list_container_ids(cri, api.ContainerFilter(id=target)) == [target]
    unique = next(target[:n] for n in range(1, 65)
                  if sum(1 for i in ids.values() if i.startswith(target[:n])) == 1)
    assert await list_container_ids(cri, api.ContainerFilter(id=unique)) == [target]
    assert await list_container_ids(cri, api.ContainerFilter(id=UNKNOWN_ID)) == []
    assert await list_container_ids(cri, api.ContainerFilter(id=unused_prefix(list(ids.values())))) == []


async def test_list_containers_with_an_ambiguous_id_prefix_is_empty(cri: CriHarness) -> None:
    sid, cfg = await helper_pod(cri)
    await cri.pull(HELPER_IMAGE)
    cids = [await cri.create(sid, cfg, name=f"c{i}") for i in range(17)]
    assert await list_container_ids(cri, api.ContainerFilter(id=ambiguous_prefix(cids))) == []
    await expect_code(cri.status(ambiguous_prefix(cids)), grpc.StatusCode.INVALID_ARGUMENT)


async def test_list_containers_by_state(cri: CriHarness) -> None:
    _, _, ids = await _containers(cri)
    running = await list_container_ids(cri, api.ContainerFilter(state=c_state(api.CONTAINER_RUNNING)))
    assert set(running) == {ids["run"], ids["other"]}
    assert await list_container_ids(cri, api.ContainerFilter(state=c_state(api.CONTAINER_CREATED))) == [ids["made"]]
    assert await list_container_ids(cri, api.ContainerFilter(state=c_state(api.CONTAINER_EXITED))) == [ids["done"]]
    assert await list_container_ids(cri, api.ContainerFilter(state=c_state(api.CONTAINER_UNKNOWN))) == []


async def test_list_containers_by_sandbox(cri: CriHarness) -> None:
    s1, s2, ids = await _containers(cri)
    assert set(await list_container_ids(cri, api.ContainerFilter(pod_sandbox_id=s1))) == {
        ids["run"], ids["made"], ids["done"]}
    assert await list_container_ids(cri, api.ContainerFilter(pod_sandbox_id=s2)) == [ids["other"]]
    unique = next(s2[:n] for n in range(1, 65) if not s1.startswith(s2[:n]))
    assert await list_container_ids(cri, api.ContainerFilter(pod_sandbox_id=unique)) == [ids["other"]]
    assert await list_container_ids(cri, api.ContainerFilter(pod_sandbox_id=UNKNOWN_ID)) == []
    # a container id is not a sandbox id
    assert await list_container_ids(cri, api.ContainerFilter(pod_sandbox_id=ids["run"])) == []


async def test_list_containers_by_label_selector_and_combined(cri: CriHarness) -> None:
    s1, s2, ids = await _containers(cri)
    fe = {"tier": "fe"}
    assert set(await list_container_ids(cri, api.ContainerFilter(label_selector=fe))) == {
        ids["run"], ids["done"], ids["other"]}
    assert await list_container_ids(cri, api.ContainerFilter(label_selector={"tier": "fe", "app": "x"})) == [
        ids["other"]]
    assert await list_container_ids(cri, api.ContainerFilter(label_selector={"tier": "be", "app": "x"})) == []
    running = c_state(api.CONTAINER_RUNNING)
    assert await list_container_ids(
        cri, api.ContainerFilter(pod_sandbox_id=s1, state=running, label_selector=fe)) == [ids["run"]]
    assert await list_container_ids(
        cri, api.ContainerFilter(pod_sandbox_id=s2, state=c_state(api.CONTAINER_EXITED))) == []
    assert await list_container_ids(cri, api.ContainerFilter(id=ids["run"], pod_sandbox_id=s2)) == []
    assert await list_container_ids(cri, api.ContainerFilter(id=ids["run"], pod_sandbox_id=s1)) == [ids["run"]]
    assert await list_container_ids(cri, api.ContainerFilter(id=ids["made"], state=running)) == []


# -- Stream* (CRIListStreaming) ---------------------------------------------------------------------


async def test_stream_pod_sandboxes_sends_the_list_items_for_each_filter(cri: CriHarness) -> None:
    a, b, c = await _three_pods(cri)
    filters = [
        None,
        api.PodSandboxFilter(id=a),
        api.PodSandboxFilter(id=b[:10]),
        api.PodSandboxFilter(state=sb_state(api.SANDBOX_READY)),
        api.PodSandboxFilter(label_selector={"app": "web"}),
        api.PodSandboxFilter(state=sb_state(api.SANDBOX_READY), label_selector={"app": "web"}),
        api.PodSandboxFilter(id=UNKNOWN_ID),
    ]
    for flt in filters:
        list_req = api.ListPodSandboxRequest(filter=flt) if flt else api.ListPodSandboxRequest()
        stream_req = api.StreamPodSandboxesRequest(filter=flt) if flt else api.StreamPodSandboxesRequest()
        listed = list((await cri.runtime.ListPodSandbox(list_req)).items)
        responses = [r async for r in cri.runtime.StreamPodSandboxes(stream_req)]
        assert all(len(r.pod_sandboxes) > 0 for r in responses)  # batches are never empty
        streamed = [sb for r in responses for sb in r.pod_sandboxes]
        assert streamed == listed, flt
    everything = [sb async for r in cri.runtime.StreamPodSandboxes(api.StreamPodSandboxesRequest())
                  for sb in r.pod_sandboxes]
    assert {sb.id for sb in everything} == {a, b, c}
    assert {sb.id: sb.state for sb in everything}[b] == api.SANDBOX_NOTREADY


async def test_stream_containers_sends_the_list_items_for_each_filter(cri: CriHarness) -> None:
    s1, _, ids = await _containers(cri)
    filters = [
        None,
        api.ContainerFilter(id=ids["run"]),
        api.ContainerFilter(id=ids["made"][:10]),
        api.ContainerFilter(pod_sandbox_id=s1),
        api.ContainerFilter(state=c_state(api.CONTAINER_RUNNING)),
        api.ContainerFilter(label_selector={"tier": "fe"}),
        api.ContainerFilter(pod_sandbox_id=s1, label_selector={"tier": "fe"}, state=c_state(api.CONTAINER_EXITED)),
        api.ContainerFilter(id=UNKNOWN_ID),
    ]
    for flt in filters:
        list_req = api.ListContainersRequest(filter=flt) if flt else api.ListContainersRequest()
        stream_req = api.StreamContainersRequest(filter=flt) if flt else api.StreamContainersRequest()
        listed = list((await cri.runtime.ListContainers(list_req)).containers)
        responses = [r async for r in cri.runtime.StreamContainers(stream_req)]
        assert all(len(r.containers) > 0 for r in responses)
        streamed = [c for r in responses for c in r.containers]
        assert streamed == listed, flt
    everything = [c async for r in cri.runtime.StreamContainers(api.StreamContainersRequest()) for c in r.containers]
    assert {c.id for c in everything} == set(ids.values())
    exited = [c async for r in cri.runtime.StreamContainers(
        api.StreamContainersRequest(filter=api.ContainerFilter(state=c_state(api.CONTAINER_EXITED))))
        for c in r.containers]
    assert [c.id for c in exited] == [ids["done"]]


# -- GetContainerEvents -----------------------------------------------------------------------------


class EventReader:
    """A GetContainerEvents subscription; :meth:`take` reads the next ``n`` events."""

    def __init__(self, cri: CriHarness) -> None:
        self.cri = cri
        self.call = cri.runtime.GetContainerEvents(api.GetEventsRequest())

    async def subscribed(self) -> None:
        """Wait (bounded, real time) until the server has registered the subscriber."""
        assert self.cri.server is not None
        hub = self.cri.server.runtime.events
        for _ in range(5000):
            if hub.subscribers > 0:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the GetContainerEvents subscription never reached the server")

    async def take(self, n: int) -> list[api.ContainerEventResponse]:
        events = []
        for _ in range(n):
            event = await asyncio.wait_for(self.call.read(), timeout=10)
            assert isinstance(event, api.ContainerEventResponse), event
            events.append(event)
        return events

    async def nothing_pending(self) -> None:
        """No further event arrives (checked after the server finished every call)."""
        read = asyncio.ensure_future(self.call.read())
        await settle()
        assert not read.done(), read.result() if read.done() else None
        read.cancel()

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def events(cri: CriHarness) -> AsyncIterator[EventReader]:
    reader = EventReader(cri)
    try:
        await reader.subscribed()
        yield reader
    finally:
        reader.close()


def kinds(events: list[api.ContainerEventResponse]) -> list[tuple[int, str]]:
    return [(e.container_event_type, e.container_id) for e in events]


async def test_events_of_a_whole_pod_cycle_in_order(cri: CriHarness, events: EventReader) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="ev")
    t0 = cri.clock.now_ns()
    sid = await cri.run_sandbox(cfg)
    await cri.clock.advance(1)
    cid = await cri.create(sid, cfg)
    await cri.clock.advance(1)
    await cri.start_container(cid)
    await cri.clock.advance(1)
    await stop_container(cri, cid)
    await cri.clock.advance(1)
    await remove_container(cri, cid)
    await cri.clock.advance(1)
    await stop_sandbox(cri, sid)
    await cri.clock.advance(1)
    await remove_sandbox(cri, sid)

    got = await events.take(8)
    assert kinds(got) == [
        (api.CONTAINER_CREATED_EVENT, sid),
        (api.CONTAINER_STARTED_EVENT, sid),
        (api.CONTAINER_CREATED_EVENT, cid),
        (api.CONTAINER_STARTED_EVENT, cid),
        (api.CONTAINER_STOPPED_EVENT, cid),
        (api.CONTAINER_DELETED_EVENT, cid),
        (api.CONTAINER_STOPPED_EVENT, sid),
        (api.CONTAINER_DELETED_EVENT, sid),
    ]
    assert [e.created_at for e in got] == [t0, t0] + [t0 + k * NS for k in range(1, 7)]
    # every event carries the sandbox's status at the time
    assert all(e.pod_sandbox_status.id == sid for e in got)
    assert [e.pod_sandbox_status.state for e in got] == [api.SANDBOX_READY] * 6 + [api.SANDBOX_NOTREADY] * 2
    assert got[0].pod_sandbox_status.metadata.name == "ev"
    # container events carry the statuses of the sandbox's containers
    for event, state in zip(got[2:5], (api.CONTAINER_CREATED, api.CONTAINER_RUNNING, api.CONTAINER_EXITED),
                            strict=True):
        assert [(s.id, s.state) for s in event.containers_statuses] == [(cid, state)]
    stopped = got[4].containers_statuses[0]
    assert (stopped.exit_code, stopped.reason, stopped.finished_at) == (137, "Error", t0 + 3 * NS)
    await events.nothing_pending()


async def test_events_when_a_sandbox_is_removed_with_a_running_container(
    cri: CriHarness, events: EventReader
) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="ev")
    sid = await cri.run_sandbox(cfg)
    running = await cri.create(sid, cfg, name="running")
    await cri.start_container(running)
    created = await cri.create(sid, cfg, name="created")
    await events.take(5)  # sandbox created+started, running created+started, created created
    await remove_sandbox(cri, sid)
    got = await events.take(5)
    assert kinds(got[:2]) == [(api.CONTAINER_STOPPED_EVENT, running), (api.CONTAINER_STOPPED_EVENT, sid)]
    # the containers' deletions (in any order) come before the sandbox's
    assert sorted(kinds(got[2:4])) == sorted([(api.CONTAINER_DELETED_EVENT, running),
                                              (api.CONTAINER_DELETED_EVENT, created)])
    assert kinds(got[4:]) == [(api.CONTAINER_DELETED_EVENT, sid)]
    assert {(s.id, s.state) for s in got[0].containers_statuses} == {
        (running, api.CONTAINER_EXITED), (created, api.CONTAINER_CREATED)}
    await events.nothing_pending()


async def test_events_of_a_container_that_exits_by_itself(cri: CriHarness, events: EventReader) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="ev")
    sid = await cri.run_sandbox(cfg)
    cid = await cri.create(sid, cfg, args=["--exit-after=2s", "--exit-code=4"])
    await cri.start_container(cid)
    started = cri.clock.now_ns()
    await events.take(4)
    await cri.clock.advance(2)
    (event,) = await events.take(1)
    assert kinds([event]) == [(api.CONTAINER_STOPPED_EVENT, cid)]
    assert event.created_at == started + 2 * NS
    (st,) = event.containers_statuses
    assert (st.id, st.state, st.exit_code, st.reason, st.finished_at) == (
        cid, api.CONTAINER_EXITED, 4, "Error", started + 2 * NS)
    # an already stopped container is not stopped again: no event
    await stop_container(cri, cid)
    await events.nothing_pending()


async def test_idempotent_calls_and_failures_emit_no_events(cri: CriHarness, events: EventReader) -> None:
    await cri.pull(HELPER_IMAGE)
    cfg = cri.sandbox_config(name="ev")
    sid = await cri.run_sandbox(cfg)
    await stop_sandbox(cri, sid)
    await events.take(3)
    await stop_sandbox(cri, sid)
    await expect_code(stop_sandbox(cri, UNKNOWN_ID), grpc.StatusCode.NOT_FOUND)
    await remove_container(cri, UNKNOWN_ID)
    await expect_code(cri.create(sid, cfg), grpc.StatusCode.NOT_FOUND)
    await expect_code(cri.run_sandbox(cfg), grpc.StatusCode.UNKNOWN)
    await events.nothing_pending()
