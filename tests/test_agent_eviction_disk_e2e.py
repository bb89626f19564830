"""Eviction through the agent on the CRI emulator's virtual clock, beyond memory: disk pressure on a small
emulated disk (``kubeharnessNodeCapacity.ephemeralStorage``) freeing unused images first and evicting only when
that is not enough, containers and pods over their ephemeral-storage limits, a soft threshold waiting out its
grace period, and node allocatable admission (``OutOfcpu``, ``OutOfmemory``, ...) with kubelet's texts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from tests.conftest import free_port, private_pod_cidr
from tests.test_agent_e2e import NODE, Node, helper, phase, pod, stop_node
from tests.test_agent_eviction_e2e import evictable, status, with_resources
from tests.test_agent_gc_e2e import images_on

pytestmark = pytest.mark.timeout(300)

BIG, SMALL = "kubeharness.test/evict-big:1", "kubeharness.test/evict-small:1"
CATALOG = [
    {"ref": BIG, "size_bytes": 6_000_000, "entrypoint": ["/khelper"], "kind": "busybox"},
    {"ref": SMALL, "size_bytes": 1_000_000, "entrypoint": ["/khelper"], "kind": "busybox"},
]
DISK = {"nodefs.available": "4Mi"}  # on a 10Mi disk holding the pause and khelper images (about 2.1 MB)


async def start(root: Path, kubelet: dict[str, Any], preloaded: list[str] | None = None) -> Node:
    clock = VirtualClock()
    (root / "manifests").mkdir(exist_ok=True)
    cri_config = CriConfig(pod_cidr=private_pod_cidr(), images=CATALOG, preloaded_images=preloaded or [])
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock)
    await cri.start()
    port = free_port()
    config = AgentConfig.from_dict({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{root / 'cri.sock'}", "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "1s", "readOnlyPort": port, "address": "127.0.0.1", "healthzPort": 0,
        "podLogsDir": str(root / "pods"), "evictionPressureTransitionPeriod": "60s",
        # image GC's own loop off (high threshold 100%): only the eviction manager's reclaim removes images
        "imageGCHighThresholdPercent": 100, "imageMinimumGCAge": "1s", **kubelet,
    }, node_name=NODE, root_dir=str(root / "kubelet"))
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


def disk_node(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"evictionHard": DISK, "kubeharnessNodeCapacity": {"ephemeralStorage": "10Mi"}, **(extra or {})}


def node_events(node: Node, reason: str) -> list[str]:
    return [e.message for e in node.agent.recorder._events.values() if e.reason == reason and e.pod_name == NODE]


def evicted_events(node: Node) -> list[tuple[str, str]]:
    return sorted((e.pod_name, e.message) for e in node.agent.recorder._events.values() if e.reason == "Evicted")


async def test_disk_pressure_is_relieved_by_deleting_unused_images_without_evicting(
        tmp_path: Path, nodes: list[Node]) -> None:
    # 14Mi: BIG (6 MB, detected at the start) fits without pressure; the quiet pod's own 3 MiB write brings it,
    # and removing BIG (older than imageMinimumGCAge by then) relieves it: the writer stays
    node = await start(tmp_path, disk_node({"kubeharnessNodeCapacity": {"ephemeralStorage": "14Mi"}}),
                       preloaded=[BIG])
    nodes.append(node)
    assert BIG in await images_on(node)
    node.write("quiet", evictable(pod("quiet", helper("x", "--disk-mib=3"))))
    await node.until(lambda p: phase(p, "quiet") == "Running")
    await node.until(lambda p: bool(node_events(node, "EvictionThresholdMet")), limit_s=120)
    await node.advance(30, step_s=1)
    assert BIG not in await images_on(node)  # the unused 6 MB image went: 4Mi free again
    assert node_events(node, "EvictionThresholdMet")[0] == "Attempting to reclaim ephemeral-storage"
    assert node.agent.eviction.evictions == [] and evicted_events(node) == []
    assert phase(await node.pods(), "quiet") == "Running"
    summary = await node.agent.stats.summary()
    assert summary.node.fs is not None and (summary.node.fs.available_bytes or 0) >= 4 * 2**20


async def test_disk_pressure_evicts_the_largest_writer_when_images_are_not_enough(
        tmp_path: Path, nodes: list[Node]) -> None:
    node = await start(tmp_path, disk_node(), preloaded=[SMALL])
    nodes.append(node)
    node.write("quiet", evictable(pod("quiet", helper("x"))))
    await node.until(lambda p: phase(p, "quiet") == "Running")
    node.write("hog", evictable(pod("hog", helper("x", "--disk-mib=6"))))
    pods = await node.until(lambda p: phase(p, "hog") == "Failed", limit_s=300)
    assert SMALL not in await images_on(node)  # reclaimed first, and that was not enough
    hog = status(pods, "hog")
    assert hog["reason"] == "Evicted"
    assert hog["message"].startswith(
        "The node was low on resource: ephemeral-storage. Threshold quantity: 4Mi, available: ")
    assert "Container x was using " in hog["message"] and hog["message"].endswith(
        ", request is 0, has larger consumption of ephemeral-storage. ")
    assert [(c["reason"], c["message"]) for c in hog["conditions"] if c["type"] == "DisruptionTarget"] == \
        [("TerminationByKubelet", hog["message"])]
    assert evicted_events(node) == [(f"hog-{NODE}", hog["message"])]
    # the evicted pod's dead container (its 6 MiB writable layer) goes with container GC: the pressure ends
    # and the quiet pod stays
    await node.advance(40, step_s=1)
    assert phase(await node.pods(), "quiet") == "Running"
    assert [e.pod.name for e in node.agent.eviction.evictions] == [f"hog-{NODE}"]
    summary = await node.agent.stats.summary()
    assert summary.node.fs is not None and (summary.node.fs.available_bytes or 0) >= 4 * 2**20


def limited(name: str, limit: str, *flags: str) -> dict[str, Any]:
    c = helper(name, *flags)
    c["resources"] = {"limits": {"ephemeral-storage": limit}}
    return c


async def test_containers_and_pods_over_their_ephemeral_storage_limits_are_evicted_at_once(
        tmp_path: Path, nodes: list[Node]) -> None:
    node = await start(tmp_path, {"evictionHard": {"memory.available": "100Mi"}})
    nodes.append(node)
    # x is over its own 1Mi; the pod (11Mi in all) is not
    node.write("two", evictable(pod("two", limited("x", "1Mi", "--disk-mib=2"), limited("y", "10Mi"))))
    # one container of 2Mi writing 3 MiB: the pod's total is checked first
    node.write("whole", evictable(pod("whole", limited("z", "2Mi", "--disk-mib=3"))))
    node.write("fine", evictable(pod("fine", limited("x", "10Mi", "--disk-mib=1"))))
    node.write("static", pod("static", limited("x", "1Mi", "--disk-mib=2")))  # critical: never evicted
    pods = await node.until(lambda p: phase(p, "two") == "Failed" and phase(p, "whole") == "Failed", limit_s=120)
    two, whole = status(pods, "two"), status(pods, "whole")
    assert (two["reason"], two["message"]) == \
        ("Evicted", 'Container x exceeded its local ephemeral storage limit "1Mi". ')
    assert (whole["reason"], whole["message"]) == \
        ("Evicted", "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ")
    for s in (two, whole):  # kubelet gives no DisruptionTarget condition for a local storage eviction
        assert not [c for c in s.get("conditions", []) if c["type"] == "DisruptionTarget"]
    assert evicted_events(node) == [(f"two-{NODE}", two["message"]), (f"whole-{NODE}", whole["message"])]
    assert all(e.grace_period_s == 1 for e in node.agent.eviction.evictions)
    await node.advance(30, step_s=1)
    pods = await node.pods()
    assert phase(pods, "fine") == "Running" and phase(pods, "static") == "Running"
    assert len(node.agent.eviction.evictions) == 2


async def test_no_ephemeral_storage_eviction_without_local_storage_capacity_isolation(
        tmp_path: Path, nodes: list[Node]) -> None:
    node = await start(tmp_path, {"evictionHard": {"memory.available": "100Mi"},
                                  "localStorageCapacityIsolation": False,
                                  "kubeharnessNodeCapacity": {"ephemeralStorage": "1Gi"}})
    nodes.append(node)
    node.write("over", evictable(pod("over", limited("x", "1Mi", "--disk-mib=2"))))
    await node.until(lambda p: phase(p, "over") == "Running")
    await node.advance(40, step_s=1)
    assert phase(await node.pods(), "over") == "Running" and node.agent.eviction.evictions == []


async def test_a_soft_threshold_evicts_only_after_its_grace_period(tmp_path: Path, nodes: list[Node]) -> None:
    node = await start(tmp_path, {
        "evictionHard": {"memory.available": "50Mi"}, "evictionSoft": {"memory.available": "300Mi"},
        "evictionSoftGracePeriod": {"memory.available": "60s"}, "evictionMaxPodGracePeriod": 5,
        "kubeharnessNodeCapacity": {"memory": "1Gi"}})
    nodes.append(node)
    node.write("hog", evictable(pod("hog", helper("x", "--memory-mib=800"))))  # 224Mi left: under 300Mi
    await node.until(lambda p: node.agent.eviction.under("MemoryPressure"), limit_s=120)
    pressure_ns = node.clock.now_ns()
    pods = await node.until(lambda p: phase(p, "hog") == "Failed", limit_s=300)
    waited_s = (node.clock.now_ns() - pressure_ns) / 1e9
    assert 50 <= waited_s <= 60 + 3 * 10  # the grace period, counted from the pass that first saw it
    hog = status(pods, "hog")
    assert hog["reason"] == "Evicted"
    assert hog["message"].startswith("The node was low on resource: memory. Threshold quantity: 300Mi, available: ")
    [eviction] = node.agent.eviction.evictions
    assert eviction.grace_period_s == 5  # the pod's 30 s capped at evictionMaxPodGracePeriod


async def test_pods_that_do_not_fit_the_allocatable_are_rejected_with_kubelets_reasons(
        tmp_path: Path, nodes: list[Node]) -> None:
    node = await start(tmp_path, {
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "10%"},
        "systemReserved": {"cpu": "200m"},
        "kubeharnessNodeCapacity": {"cpu": "2", "memory": "1Gi", "ephemeralStorage": "1Gi"}})
    nodes.append(node)

    def requesting(name: str, requests: dict[str, str]) -> dict[str, Any]:
        return pod(name, with_resources(helper("x"), requests, dict(requests)))

    node.write("cpu-a", requesting("cpu-a", {"cpu": "1"}))
    node.write("cpu-b", requesting("cpu-b", {"cpu": "800m"}))  # 1800m in all: exactly the allocatable
    node.write("cpu-c", requesting("cpu-c", {"cpu": "500m"}))
    node.write("gpu", requesting("gpu", {"example.com/gpu": "1"}))  # an extended resource the node lacks: dropped
    node.write("huge", requesting("huge", {"hugepages-2Mi": "2Mi", "memory": "2Mi"}))
    node.write("mem", requesting("mem", {"memory": "1000Mi"}))
    node.write("store", requesting("store", {"ephemeral-storage": "1Gi"}))
    names = ("cpu-a", "cpu-b", "cpu-c", "gpu", "huge", "mem", "store")
    pods = await node.until(lambda p: all(phase(p, n) for n in names) and phase(p, "cpu-b") == "Running")
    assert phase(pods, "cpu-a") == "Running" and phase(pods, "gpu") == "Running"
    allocatable_memory = 2**30 - 100 * 2**20
    allocatable_storage = 2**30 - int(2**30 * 10 / 100)
    assert {n: (status(pods, n)["reason"], status(pods, n)["message"]) for n in ("cpu-c", "huge", "mem", "store")} == {
        "cpu-c": ("OutOfcpu", "Node didn't have enough resource: cpu, requested: 500, used: 1800, capacity: 1800"),
        "huge": ("OutOfhugepages-2Mi",
                 "Node didn't have enough resource: hugepages-2Mi, requested: 2097152, used: 0, capacity: 0"),
        "mem": ("OutOfmemory", f"Node didn't have enough resource: memory, requested: {1000 * 2**20}, used: "
                               f"0, capacity: {allocatable_memory}"),
        "store": ("OutOfephemeral-storage", f"Node didn't have enough resource: ephemeral-storage, requested: "
                                            f"{2**30}, used: 0, capacity: {allocatable_storage}"),
    }
    assert all(status(pods, n)["phase"] == "Failed" for n in ("cpu-c", "huge", "mem", "store"))
    # a pod that has ended no longer counts: with cpu-a gone, a 900m pod fits
    (node.manifests / "cpu-a.json").unlink()
    await node.until(lambda p: f"cpu-a-{NODE}" not in p)
    node.write("cpu-d", requesting("cpu-d", {"cpu": "900m"}))
    await node.until(lambda p: phase(p, "cpu-d") == "Running")


async def test_regression_the_root_dir_is_created_so_host_stats_give_ephemeral_storage(
        tmp_path: Path, nodes: list[Node]) -> None:
    # the host stats' nodefs is the root dir's filesystem: a root dir nobody had created gave an allocatable
    # ephemeral-storage of 0, and every pod requesting some was refused OutOfephemeral-storage
    node = await start(tmp_path, {"evictionHard": {"memory.available": "100Mi"}})
    nodes.append(node)
    assert (tmp_path / "kubelet").is_dir()
    assert node.agent.allocatable()["ephemeral-storage"] > 0
    node.write("asks", pod("asks", with_resources(helper("x"), {"ephemeral-storage": "1Mi"})))
    await node.until(lambda p: phase(p, "asks") == "Running")


async def test_regression_images_are_detected_with_image_gc_off(tmp_path: Path, nodes: list[Node]) -> None:
    # with imageGCHighThresholdPercent 100 the loop returned at once and detected nothing: the eviction
    # manager's reclaim then met every image for the first time and found it younger than imageMinimumGCAge
    node = await start(tmp_path, disk_node(), preloaded=[SMALL])
    nodes.append(node)
    await node.advance(2)
    images = await images_on(node)
    assert images[SMALL].id in node.agent.image_gc.records
    assert node.agent.image_gc.records[images[SMALL].id].first_detected_ns < node.clock.now_ns()
