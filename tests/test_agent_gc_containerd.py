"""Container GC and image GC through the agent on real containerd and the real clock.

One ``kubeharness env up`` (containerd, runc, the bridge CNI network, the images of ``kubeharness/env/images.py``
in the local registry) for the module; agents with :class:`RealClock`.

- **Container GC**: a crash-looping khelper container (``--exit-after=1s --exit-code=1``, restartPolicy
  Always, ``crashLoopBackOff.maxContainerRestartPeriod: 1s`` so that the restarts come a second or two apart
  instead of 10 s, 20 s, ...). containerd keeps at most one dead instance of the container (ListContainers)
  and the pod log directory holds only the log files of the instances containerd still lists; once the
  manifest is removed, no container, no sandbox and no pod log directory is left.
- **Image GC**: containerd's image filesystem is the host's disk, so its usage in percent cannot be pushed
  over a threshold; the agent is given ``image_fs_capacity_bytes`` (our setting, no KubeletConfiguration
  field) computed from containerd's own ImageFsInfo and ImageStatus sizes so that the images on containerd
  are over ``imageGCHighThresholdPercent`` and the removable image and the pause image together are just
  what brings them under the low threshold. A first agent with image GC off brings up a pod (khelper) and
  is stopped, leaving its pod running as a kubelet restart does; a second agent with the capacity and
  ``imageMinimumGCAge: 1s`` (0 means the default, 2 minutes) runs its pass at start, where every image is
  first detected and too young (FreeDiskSpaceFailed, freed 0), and the test then runs the agent's next pass
  (``agent.image_gc.collect()``, which the loop would run 300 s later). containerd 1.6 reports no image as
  pinned (``Image.pinned`` came with containerd 1.7) and the agent counts as in use only the images that
  containers use (it has no sandbox image setting: older kubelets counted their --pod-infra-container-image
  as in use): the pause image of the running sandbox is removed with the unused image, the sandbox keeps
  running (containerd keeps the snapshot its container uses), the khelper image of the running container is
  kept, and that pass records no FreeDiskSpaceFailed.

Root and the Debian packages of ci/setup-env are required.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.gc import images as igc
from kubeharness.agent.pod.labels import POD_NAMESPACE
from kubeharness.clock import RealClock
from kubeharness.conformance.node.agentnode import kubelet_config
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env, free_port
from tests.test_agent_e2e import IMAGE, NODE, helper, http_get, pod

pytestmark = [pytest.mark.xdist_group("containerd"), pytest.mark.timeout(480)]

NAMESPACE = "gc-containerd"
PAUSE, REMOVABLE = "registry.k8s.io/pause:3.10", "kubeharness.test/removable:1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with containerd_env(tmp_path_factory.mktemp("env")) as socket:
        yield socket


def agent_config(endpoint: str, root: Path, port: int, **extra: Any) -> dict[str, Any]:
    return kubelet_config(endpoint, root, port, extra)


async def ours(endpoint: str) -> tuple[list[api.PodSandbox], list[api.Container]]:
    """The sandboxes and containers of this module's namespace."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        runtime = api_grpc.RuntimeServiceStub(channel)
        selector = {POD_NAMESPACE: NAMESPACE}
        sandboxes = await runtime.ListPodSandbox(api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(label_selector=selector)), timeout=30)
        containers = await runtime.ListContainers(api.ListContainersRequest(
            filter=api.ContainerFilter(label_selector=selector)), timeout=30)
    return list(sandboxes.items), list(containers.containers)


async def images_on(endpoint: str) -> dict[str, api.Image]:
    """Tag -> image, of every image on containerd."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        reply = await api_grpc.ImageServiceStub(channel).ListImages(api.ListImagesRequest(), timeout=30)
    return {tag: i for i in reply.images for tag in i.repo_tags}


async def image_fs_used(endpoint: str) -> int:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        info = await api_grpc.ImageServiceStub(channel).ImageFsInfo(api.ImageFsInfoRequest(), timeout=30)
    return int(info.image_filesystems[0].used_bytes.value)


async def wait(what: str, check: Callable[[], Awaitable[bool]], limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        await asyncio.sleep(0.5)


async def pods_of(port: int) -> dict[str, dict[str, Any]]:
    status, body = await http_get(port, "/pods")
    assert status == 200
    return {i["metadata"]["name"]: i for i in json.loads(body)["items"]}


async def events(port: int, reason: str) -> list[dict[str, Any]]:
    status, body = await http_get(port, "/events")
    assert status == 200
    return [e for e in json.loads(body)["items"] if e["reason"] == reason]


def pod_log_dirs(logs: Path) -> list[Path]:
    return list(logs.glob(f"{NAMESPACE}_*"))


def unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def remove_and_wait_gone(endpoint: str, manifest: Path, agent: Agent, logs: Path | None = None) -> None:
    """Remove the manifest; wait until containerd has nothing of the namespace (and, with ``logs``, no pod log
    directory is left); stop the agent."""
    unlink(manifest)

    async def gone() -> bool:
        sandboxes, containers = await ours(endpoint)
        return not sandboxes and not containers and (logs is None or not pod_log_dirs(logs))

    try:
        await wait("pod removed from containerd", gone, limit_s=180)
    finally:
        await agent.stop()


async def test_container_gc_keeps_one_dead_instance_on_containerd(
        endpoint: str, tmp_path: Path, record_testsuite_property: Callable[[str, object], None]) -> None:
    (tmp_path / "manifests").mkdir()
    port = free_port()
    config = AgentConfig.from_dict(agent_config(endpoint, tmp_path, port,
                                                crashLoopBackOff={"maxContainerRestartPeriod": "1s"}),
                                   node_name=NODE, root_dir=str(tmp_path / "kubelet"))
    agent = Agent(config, RealClock())
    await agent.start()
    manifest = tmp_path / "manifests" / "crash.json"
    logs = tmp_path / "pods"
    try:
        spec = pod("crash", helper("app", "--exit-after=1s", "--exit-code=1"), grace=2)
        spec["metadata"]["namespace"] = NAMESPACE
        manifest.write_text(json.dumps(spec))
        begun = time.monotonic()
        name = f"crash-{NODE}"
        seen: set[int] = set()  # every attempt containerd listed
        most_dead = 0

        async def restarted() -> bool:
            item = (await pods_of(port)).get(name, {})
            statuses = item.get("status", {}).get("containerStatuses", [])
            return bool(statuses) and int(statuses[0].get("restartCount", 0)) >= 4

        await wait("four restarts", restarted, limit_s=240)
        record_testsuite_property("containerd_gc_four_restarts_s", round(time.monotonic() - begun, 1))
        listed: list[api.Container] = []
        files: list[str] = []

        async def collected() -> bool:
            nonlocal listed, files, most_dead
            listed = (await ours(endpoint))[1]
            seen.update(c.metadata.attempt for c in listed)
            dead = [c for c in listed if c.state != api.CONTAINER_RUNNING]
            most_dead = max(most_dead, len(dead))
            files = sorted(p.name for p in logs.glob(f"{NAMESPACE}_crash-*/app/*"))
            # a housekeeping pass (every 2 s) after the last exit, before the next instance exits
            return len(dead) == 1 and files == sorted(f"{c.metadata.attempt}.log" for c in listed)

        await wait("one dead instance and only its log", collected, limit_s=120)
        assert len(listed) <= 2, listed
        attempts = {c.metadata.attempt for c in listed}
        assert max(attempts) >= 3, attempts  # instances 0.. of earlier attempts were removed, with their logs
        assert f"{min(attempts) - 1}.log" not in files
        # as the loop goes on, dead instances do not pile up: a pass may come after two exits on a loaded
        # machine (kubelet's own pass comes once a minute), but the next one is back to one
        for _ in range(10):
            await collected()
            await asyncio.sleep(1)
        await wait("one dead instance and only its log, again", collected, limit_s=120)
        assert max(c.metadata.attempt for c in listed) > max(attempts), listed
        record_testsuite_property("containerd_gc_most_dead_at_once", most_dead)
        log_dirs = list(logs.glob(f"{NAMESPACE}_crash-*"))
        assert len(log_dirs) == 1, log_dirs
    finally:
        await remove_and_wait_gone(endpoint, manifest, agent, logs)
    assert not pod_log_dirs(logs)
    record_testsuite_property("containerd_gc_container_test_s", round(time.monotonic() - begun, 1))


async def test_image_gc_removes_unused_images_and_keeps_the_used_one_on_containerd(
        endpoint: str, tmp_path: Path, record_testsuite_property: Callable[[str, object], None]) -> None:
    (tmp_path / "manifests").mkdir()
    async with grpc.aio.insecure_channel(endpoint) as channel:
        await api_grpc.ImageServiceStub(channel).PullImage(
            api.PullImageRequest(image=api.ImageSpec(image=REMOVABLE)), timeout=180)
    port = free_port()
    # the first agent: image GC off (high threshold 100, no maximum age), brings up the pod that uses khelper
    first = Agent(AgentConfig.from_dict(agent_config(endpoint, tmp_path, port, imageGCHighThresholdPercent=100),
                                        node_name=NODE, root_dir=str(tmp_path / "kubelet")), RealClock())
    await first.start()
    manifest = tmp_path / "manifests" / "keep.json"
    name = f"keep-{NODE}"
    spec = pod("keep", helper("app", "--http-port=8080"), grace=2)
    spec["metadata"]["namespace"] = NAMESPACE
    agent: Agent | None = first
    try:
        manifest.write_text(json.dumps(spec))

        async def running() -> bool:
            return bool((await pods_of(port)).get(name, {}).get("status", {}).get("phase") == "Running")

        await wait("the pod running", running)
        agent = None
        await first.stop()  # the pod stays, as over a kubelet restart
        before = await images_on(endpoint)
        assert {PAUSE, IMAGE, REMOVABLE} <= set(before), sorted(before)
        sizes = {tag: before[tag].size for tag in (PAUSE, IMAGE, REMOVABLE)}
        # containerd refreshes its snapshots' usage every 10 s or so: wait until two readings agree
        used, previous = await image_fs_used(endpoint), -1
        deadline = time.monotonic() + 120
        while used != previous:
            assert time.monotonic() < deadline, "containerd's image filesystem usage did not settle"
            await asyncio.sleep(12)
            previous, used = used, await image_fs_used(endpoint)
        # usage = used/capacity; the pass frees used - 0.8*capacity (to the low threshold 80%): aim at a bit more
        # than the larger of pause and removable and less than both, so that both are needed whatever the order
        wanted = max(sizes[PAUSE], sizes[REMOVABLE]) + min(sizes[PAUSE], sizes[REMOVABLE]) // 2
        capacity = int((used - wanted) / 0.8)
        assert igc.usage_percent(capacity, capacity - used) >= 85, (used, sizes, capacity)
        assert 0 < igc.bytes_to_free(capacity, capacity - used, igc.ImageGCPolicy(85, 80, 0)) \
            <= sizes[PAUSE] + sizes[REMOVABLE], (used, sizes, capacity)
        started = time.monotonic()
        agent = Agent(AgentConfig.from_dict(agent_config(endpoint, tmp_path, port, imageMinimumGCAge="1s"),
                                            node_name=NODE, root_dir=str(tmp_path / "kubelet"),
                                            image_fs_capacity_bytes=capacity), RealClock())
        await agent.start()  # its image GC pass runs at start: every image is first detected now, too young
        gc = agent.image_gc

        async def detected() -> bool:
            return before[REMOVABLE].id in gc.records and bool(await events(port, igc.FREE_DISK_SPACE_FAILED))

        await wait("the pass at start", detected, limit_s=120)
        assert gc.removed == [] and REMOVABLE in await images_on(endpoint)
        await asyncio.sleep(2)  # past imageMinimumGCAge
        baseline = len(await events(port, igc.FREE_DISK_SPACE_FAILED))
        # the next pass, which the loop would run 300 s later: the agent's own pass, called now
        freed = await gc.collect()
        record_testsuite_property("containerd_image_gc_after_start_s", round(time.monotonic() - started, 1))
        after = await images_on(endpoint)
        assert IMAGE in after, sorted(after)  # the running container's image is kept
        assert REMOVABLE not in after and "kubeharness.test/removable:2" not in after
        # containerd 1.6: no image is pinned, so the running sandbox's pause image was eligible and was needed
        assert not before[PAUSE].pinned
        assert PAUSE not in after, sorted(after)
        removed = {image_id for image_id, _ in agent.image_gc.removed}
        assert removed == {before[PAUSE].id, before[REMOVABLE].id}, (removed, before)
        assert freed == sizes[PAUSE] + sizes[REMOVABLE]
        assert len(await events(port, igc.FREE_DISK_SPACE_FAILED)) == baseline  # none from this pass
        # the pod went on running through both agents: same container, not restarted, sandbox still ready
        assert await running()
        sandboxes, containers = await ours(endpoint)
        assert [s.state for s in sandboxes] == [api.SANDBOX_READY], sandboxes
        assert [(c.state, c.metadata.attempt) for c in containers] == [(api.CONTAINER_RUNNING, 0)], containers
    finally:
        if agent is None:  # between the two agents: one to remove the pod
            agent = Agent(AgentConfig.from_dict(agent_config(endpoint, tmp_path, port), node_name=NODE,
                                                root_dir=str(tmp_path / "kubelet")), RealClock())
            await agent.start()
        await remove_and_wait_gone(endpoint, manifest, agent)
