"""Garbage collection through the agent on the CRI emulator, on a virtual clock: image GC by the image
filesystem's usage (the emulator's configured capacity, told to the agent as ``image_fs_capacity_bytes``)
and container GC of a crash-looping pod and of a pod that is gone."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.gc import images as igc
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import free_port, private_pod_cidr
from tests.test_agent_e2e import IMAGE, NODE, Node, container, helper, http_get, phase, pod, stop_node

PAUSE_BYTES, HELPER_BYTES = 320_368, 1_800_000  # the default catalog's pause and khelper images
OLD, USED, YOUNG = "kubeharness.test/gc-old:1", "kubeharness.test/gc-used:1", "kubeharness.test/gc-young:1"
CATALOG = [
    {"ref": OLD, "size_bytes": 200_000, "entrypoint": ["/khelper"], "kind": "busybox"},
    {"ref": USED, "size_bytes": 2_000_000, "entrypoint": ["/khelper"], "kind": "busybox"},
    {"ref": YOUNG, "size_bytes": 700_000, "entrypoint": ["/khelper"], "kind": "busybox"},
]


async def start_gc_node(root: Path, capacity: int, preloaded: list[str]) -> Node:
    clock = VirtualClock()
    (root / "manifests").mkdir(exist_ok=True)
    cri_config = CriConfig(pod_cidr=private_pod_cidr(), images=CATALOG, preloaded_images=preloaded,
                           image_fs_capacity_bytes=capacity)
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock)
    await cri.start()
    port = free_port()
    config = AgentConfig.from_dict({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{root / 'cri.sock'}", "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "5s", "readOnlyPort": port, "address": "127.0.0.1", "healthzPort": 0,
        "podLogsDir": str(root / "pods"),
    }, node_name=NODE, root_dir=str(root / "kubelet"), image_fs_capacity_bytes=capacity)
    agent = Agent(config, clock)
    await agent.start()
    return Node(root, clock, cri, agent, port, cri_config)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    try:
        yield started
    finally:
        for n in started:
            await stop_node(n)


async def images_on(node: Node) -> dict[str, api.Image]:
    """Tag -> image, of every image on the node."""
    async with node.channel() as channel:
        reply = await api_grpc.ImageServiceStub(channel).ListImages(api.ListImagesRequest())
    return {tag: i for i in reply.images for tag in i.repo_tags}


async def pull_image(node: Node, ref: str) -> None:
    """Pull ``ref`` through CRI, advancing the virtual clock while the pull takes its time."""
    async with node.channel() as channel:
        pull = asyncio.ensure_future(api_grpc.ImageServiceStub(channel).PullImage(
            api.PullImageRequest(image=api.ImageSpec(image=ref))))
        while not pull.done():
            await node.advance(0.25)
        await pull


def used_bytes(images: dict[str, api.Image]) -> int:
    return sum({i.id: i.size for i in images.values()}.values())


async def events(node: Node, reason: str) -> list[dict[str, Any]]:
    status, body = await http_get(node.port, "/events")
    assert status == 200
    return [e for e in json.loads(body)["items"] if e["reason"] == reason]


def usage_percent(used: int, capacity: int) -> int:
    return igc.usage_percent(capacity, capacity - used)


async def test_image_gc_removes_least_recently_used_unused_images_down_to_the_low_threshold(
        tmp_path: Path, nodes: list[Node]) -> None:
    capacity = 5_300_000
    node = await start_gc_node(tmp_path, capacity, [IMAGE, OLD])
    nodes.append(node)
    node.write("keep", pod("keep", helper("app", "--http-port=8080")))
    node.write("brief", pod("brief", {"name": "app", "image": USED, "command": ["/khelper"]}))
    await node.until(lambda p: phase(p, "keep") == "Running" and phase(p, "brief") == "Running", limit_s=60)
    await node.advance(305, step_s=1.0)  # the pass at 300 s: USED in use, 82% used, below the high threshold
    assert usage_percent(used_bytes(await images_on(node)), capacity) == 82
    assert node.agent.image_gc.removed == []
    (node.manifests / "brief.json").unlink()  # USED is no longer in use, last used at 300 s
    await node.until(lambda p: "brief-node-1" not in p, limit_s=120)
    await node.advance(540 - (node.clock.now_ns() - node.agent.image_gc.began_ns) / 1e9, step_s=1.0)
    await pull_image(node, YOUNG)  # arrives 60 s or so before the next pass (a pull takes clock time)
    before = await images_on(node)
    assert usage_percent(used_bytes(before), capacity) >= 85
    await node.advance(70, step_s=1.0)  # past the pass at 600 s
    after = await images_on(node)
    # the never used OLD goes first, then (YOUNG is too young) USED, last used at 300 s: enough to be under 80%
    removed = [image_id for image_id, _ in node.agent.image_gc.removed]
    gone = {tag for tag in before if tag not in after}
    assert gone - {"registry.k8s.io/pause:3.10"} == {OLD, USED}
    assert IMAGE in after and YOUNG in after
    assert removed.index(before[OLD].id) < removed.index(before[USED].id)
    assert usage_percent(used_bytes(after), capacity) < 80
    assert await events(node, igc.FREE_DISK_SPACE_FAILED) == []


async def test_free_disk_space_failed_when_images_in_use_alone_are_over_the_threshold(
        tmp_path: Path, nodes: list[Node]) -> None:
    capacity = 2_200_000
    node = await start_gc_node(tmp_path, capacity, [IMAGE])
    nodes.append(node)
    node.write("keep", pod("keep", helper("app", "--http-port=8080")))
    await node.until(lambda p: phase(p, "keep") == "Running", limit_s=60)
    await node.advance(305, step_s=1.0)
    used = PAUSE_BYTES + HELPER_BYTES
    wanted = capacity * 20 // 100 - (capacity - used)
    found = [e for e in await events(node, igc.FREE_DISK_SPACE_FAILED)
             if e["message"] == igc.not_enough_message(wanted, PAUSE_BYTES)]
    assert len(found) == 1, await events(node, igc.FREE_DISK_SPACE_FAILED)
    assert re.fullmatch(r"Failed to garbage collect required amount of images\. Attempted to free \d+ bytes, but "
                        r"only found \d+ bytes eligible to free\.", found[0]["message"])
    assert found[0]["type"] == "Warning" and found[0]["involvedObject"]["kind"] == "Node"
    assert found[0]["involvedObject"]["name"] == NODE
    assert IMAGE in await images_on(node)  # in use: kept whatever the usage


async def test_container_gc_keeps_one_dead_instance_per_name_and_removes_the_rest_with_their_logs(
        tmp_path: Path, nodes: list[Node]) -> None:
    node = await start_gc_node(tmp_path, 20 * 1024**3, [IMAGE])
    nodes.append(node)
    node.write("crash", pod("crash", helper("app", "--exit-after=1s", "--exit-code=3")))
    await node.until(lambda p: int(container(p, "crash").get("restartCount", 0)) >= 3, limit_s=300, step_s=0.5)
    await node.advance(4, step_s=0.5)  # a housekeeping pass after the last exit
    uid = (await node.pods())[f"crash-{NODE}"]["metadata"]["uid"]
    async with node.channel() as channel:
        listed = [c for c in (await api_grpc.RuntimeServiceStub(channel).ListContainers(
            api.ListContainersRequest())).containers if c.labels.get("io.kubernetes.pod.uid") == uid]
    dead = [c for c in listed if c.state != api.CONTAINER_RUNNING]
    assert len(dead) == 1 and len(listed) <= 2, listed
    log_dir = tmp_path / "pods" / f"default_crash-{NODE}_{uid}" / "app"
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(f"{c.metadata.attempt}.log" for c in listed)
    (node.manifests / "crash.json").unlink()

    async def nothing_left() -> bool:
        async with node.channel() as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            containers = (await stub.ListContainers(api.ListContainersRequest())).containers
            sandboxes = (await stub.ListPodSandbox(api.ListPodSandboxRequest())).items
        return not containers and not sandboxes and not log_dir.parent.exists()

    for _ in range(120):
        if await nothing_left():
            break
        await node.advance(1, step_s=0.5)
    assert await nothing_left()
