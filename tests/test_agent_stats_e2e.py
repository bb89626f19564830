"""The node's stats through the agent on the CRI emulator and a virtual clock: ``/stats/summary`` figures equal
what the containers' behaviours say (memory allocated at once and over time, bytes written to the writable
layer), ``/metrics/resource`` carries them under kubelet's names, the Node object has the configured capacity,
allocatable and conditions, and the host provider reports the host's own figures."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.nodestatus.node import MEMORY_PRESSURE
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.process import BASE_MEMORY_BYTES
from kubeharness.emulators.cri.server import CriServer
from kubeharness.emulators.cri.stats import PAUSE_MEMORY_BYTES
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import free_port, private_pod_cidr
from tests.promtext import parse, value
from tests.test_agent_e2e import NODE, Node, helper, http_get, phase, pod, stop_node

MiB = 1024 * 1024
MEMORY = 8 * 1024 * MiB
DISK = 100 * 1024 * MiB
CAPACITY = {"cpu": "4", "memory": "8Gi", "ephemeralStorage": "100Gi", "inodes": 1000000, "pids": 4096}


async def start(root: Path, capacity: dict[str, Any] | None = CAPACITY, **extra: Any) -> Node:
    clock = VirtualClock()
    (root / "manifests").mkdir(exist_ok=True)
    cri_config = CriConfig(pod_cidr=private_pod_cidr())
    cri = CriServer(str(root / "cri.sock"), root / "state", cri_config, clock)
    await cri.start()
    port = free_port()
    doc: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{root / 'cri.sock'}", "staticPodPath": str(root / "manifests"),
        "fileCheckFrequency": "5s", "readOnlyPort": port, "address": "127.0.0.1", "healthzPort": 0,
        "podLogsDir": str(root / "pods"), **extra}
    if capacity is not None:
        doc["kubeharnessNodeCapacity"] = capacity
    config = AgentConfig.from_dict(doc, node_name=NODE, root_dir=str(root / "kubelet"))
    (root / "kubelet").mkdir(exist_ok=True)
    agent = Agent(config, clock)
    await agent.start()
    return Node(root, clock, cri, agent, port, cri_config)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


async def summary(node: Node) -> dict[str, Any]:
    status, body = await http_get(node.port, "/stats/summary")
    assert status == 200, body
    return dict(json.loads(body))


def pod_of(found: dict[str, Any], name: str) -> dict[str, Any]:
    (match,) = [p for p in found["pods"] if p["podRef"]["name"] == f"{name}-{NODE}"]
    return dict(match)


async def runtime(node: Node) -> tuple[api.ImageFsInfoResponse, list[api.Container]]:
    async with node.channel() as channel:
        images = api_grpc.ImageServiceStub(channel)
        rt = api_grpc.RuntimeServiceStub(channel)
        return (await images.ImageFsInfo(api.ImageFsInfoRequest()),
                list((await rt.ListContainers(api.ListContainersRequest())).containers))


async def running(node: Node, name: str) -> None:
    await node.until(lambda p: phase(p, name) == "Running" and all(
        "running" in c.get("state", {}) for c in p[f"{name}-{NODE}"]["status"].get("containerStatuses", [{}])))


async def test_allocated_memory_is_the_working_set_and_comes_off_the_nodes_available(node: Node) -> None:
    node.write("mem", pod("mem", helper("app", "--memory-mib=64")))
    await running(node, "mem")
    found = await summary(node)
    mem = pod_of(found, "mem")
    (app,) = mem["containers"]
    working = 64 * MiB + BASE_MEMORY_BYTES
    assert app["name"] == "app" and app["memory"]["workingSetBytes"] == working
    assert mem["memory"]["workingSetBytes"] == working + PAUSE_MEMORY_BYTES  # the sandbox's pause process too
    assert found["node"]["memory"]["workingSetBytes"] == working + PAUSE_MEMORY_BYTES
    assert found["node"]["memory"]["availableBytes"] == MEMORY - working - PAUSE_MEMORY_BYTES
    assert mem["process_stats"] == {"process_count": 2}  # pause and the helper
    assert found["node"]["rlimit"]["maxpid"] == 4096 and found["node"]["rlimit"]["curproc"] == 2
    assert found["node"]["nodeName"] == NODE and mem["podRef"]["namespace"] == "default"


async def test_memory_grows_on_the_emulators_clock_exactly_as_the_behaviour_says(node: Node) -> None:
    node.write("grow", pod("grow", helper("app", "--memory-mib=64", "--memory-mib-per-second=4")))
    await running(node, "grow")
    _, containers = await runtime(node)
    async with node.channel() as channel:
        status = await api_grpc.RuntimeServiceStub(channel).ContainerStatus(
            api.ContainerStatusRequest(container_id=containers[0].id))
    started = status.status.started_at
    seen = []
    for _ in range(4):
        await node.advance(3)
        found = await summary(node)
        elapsed_s = (node.clock.now_ns() - started) / 1e9
        allocated = int(min(64.0, 4 * elapsed_s) * MiB)
        (app,) = pod_of(found, "grow")["containers"]
        assert app["memory"]["workingSetBytes"] == BASE_MEMORY_BYTES + allocated
        assert found["node"]["memory"]["availableBytes"] == MEMORY - BASE_MEMORY_BYTES - allocated - PAUSE_MEMORY_BYTES
        seen.append(found["node"]["memory"]["availableBytes"])
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 4  # it went down at every step


async def test_bytes_written_to_the_writable_layer_are_the_rootfs_and_fill_the_node_filesystem(node: Node) -> None:
    node.write("disk", pod("disk", helper("app", "--disk-mib=10", "--log-rate=5")))
    await running(node, "disk")
    await node.advance(2)
    found = await summary(node)
    disk = pod_of(found, "disk")
    (app,) = disk["containers"]
    assert app["rootfs"]["usedBytes"] == 10 * MiB and app["rootfs"]["inodesUsed"] == 1
    assert app["rootfs"]["capacityBytes"] == DISK  # the image filesystem is the node's disk
    log_dir = node.root / "pods" / f"default_disk-{NODE}_{disk['podRef']['uid']}"
    on_disk = sum(os.lstat(p).st_blocks * 512 for p in [log_dir / "app", *(log_dir / "app").iterdir()])
    assert app["logs"]["usedBytes"] == on_disk > 0 and app["logs"]["capacityBytes"] == DISK
    assert disk["ephemeral-storage"]["usedBytes"] == 10 * MiB + on_disk + os.lstat(log_dir).st_blocks * 512
    image_fs, _ = await runtime(node)
    images = sum(fs.used_bytes.value for fs in image_fs.image_filesystems)
    runtime_fs = found["node"]["runtime"]["imageFs"]
    assert runtime_fs["usedBytes"] == images + 10 * MiB and runtime_fs["capacityBytes"] == DISK
    nodefs = found["node"]["fs"]
    logs_total = sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, dirs, files in os.walk(node.root / "pods")
                     for f in [*dirs, *files]) + os.lstat(node.root / "pods").st_blocks * 512
    assert nodefs["usedBytes"] == images + 10 * MiB + logs_total
    assert nodefs["availableBytes"] == DISK - nodefs["usedBytes"] and nodefs["capacityBytes"] == DISK


async def test_resource_metrics_carry_the_summarys_figures_under_kubelets_names(node: Node) -> None:
    node.write("mem", pod("mem", helper("app", "--memory-mib=32", "--cpu-millicores=250")))
    await running(node, "mem")
    await node.advance(4)
    found = await summary(node)
    status, body = await http_get(node.port, "/metrics/resource")
    assert status == 200
    lines = body.decode().splitlines()
    (app,) = pod_of(found, "mem")["containers"]
    ms = node.clock.now_ns() // 1_000_000
    stamped = {(s.name, tuple(sorted(s.labels.items()))): (s.value, round(float(s.timestamp) * 1000))
               for s in parse(body) if s.timestamp is not None}
    labels = (("container", "app"), ("namespace", "default"), ("pod", f"mem-{NODE}"))
    assert stamped[("container_memory_working_set_bytes", labels)] == (32 * MiB + BASE_MEMORY_BYTES, ms)
    cpu_s = app["cpu"]["usageCoreNanoSeconds"] / 1e9
    assert stamped[("container_cpu_usage_seconds_total", labels)] == (cpu_s, ms) and cpu_s > 0.9
    pod_ws = 32 * MiB + BASE_MEMORY_BYTES + PAUSE_MEMORY_BYTES
    assert stamped[("pod_memory_working_set_bytes", labels[1:])] == (pod_ws, ms)
    assert stamped[("node_memory_working_set_bytes", ())] == (pod_ws, ms)
    assert ("node_cpu_usage_seconds_total", ()) in stamped
    assert value(body, "scrape_error") == 0 and value(body, "resource_scrape_error") == 0
    assert "# TYPE container_cpu_usage_seconds_total counter" in lines


async def test_a_runtime_that_is_gone_is_a_500_summary_and_a_scrape_error(node: Node) -> None:
    await node.cri.stop(grace=0)
    status, body = await http_get(node.port, "/stats/summary")
    assert status == 500 and b"UNAVAILABLE" in body and b"Traceback" not in body
    status, body = await http_get(node.port, "/metrics/resource")
    assert status == 200 and value(body, "scrape_error") == 1 and value(body, "resource_scrape_error") == 1


async def test_the_node_object_has_capacity_allocatable_conditions_and_node_info(tmp_path: Path) -> None:
    node = await start(tmp_path, systemReserved={"memory": "1Gi", "cpu": "500m"},
                       kubeReserved={"memory": "512Mi", "ephemeral-storage": "1Gi"})
    try:
        status, body = await http_get(node.port, f"/api/v1/nodes/{NODE}")
        assert status == 200
        obj = json.loads(body)
        assert (obj["kind"], obj["apiVersion"], obj["metadata"]["name"]) == ("Node", "v1", NODE)
        labels = obj["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == NODE and labels["kubernetes.io/os"] == "linux"
        assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
        assert obj["status"]["capacity"] == {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "100Gi",
                                             "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110"}
        # memory: 8Gi - 1Gi - 512Mi - 100Mi (evictionHard); ephemeral-storage: 100Gi - 1Gi - 10% of 100Gi
        assert obj["status"]["allocatable"] == {
            "cpu": "3500m", "memory": f"{8192 - 1024 - 512 - 100}Mi",
            "ephemeral-storage": f"{100 - 1 - 10}Gi",
            "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110"}
        conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
        assert conditions == {"MemoryPressure": ("False", "KubeletHasSufficientMemory"),
                              "DiskPressure": ("False", "KubeletHasNoDiskPressure"),
                              "PIDPressure": ("False", "KubeletHasSufficientPID")} | {
                                  "Ready": conditions["Ready"]}
        await node.advance(2)  # the PLEG has relisted: Ready
        node.agent.node_status.set_pressure(MEMORY_PRESSURE, True)
        obj = json.loads((await http_get(node.port, f"/api/v1/nodes/{NODE}"))[1])
        conditions = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
        assert conditions["Ready"] == ("True", "KubeletReady")
        assert conditions["MemoryPressure"] == ("True", "KubeletHasInsufficientMemory")
        async with node.channel() as channel:
            version = await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest())
        info = obj["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"] == f"{version.runtime_name}://{version.runtime_version}"
        assert info["kernelVersion"] == os.uname().release and info["kubeletVersion"].endswith("-kubeharness")
        assert (await http_get(node.port, "/api/v1/nodes/another-node"))[0] == 404
    finally:
        await stop_node(node)


def _pid_limits() -> list[int]:
    return [int(Path(p).read_text()) for p in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max")]


def _meminfo_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


async def test_without_a_capacity_the_host_is_the_node(tmp_path: Path) -> None:
    node = await start(tmp_path, capacity=None)
    try:
        node.write("mem", pod("mem", helper("app", "--memory-mib=16")))
        await running(node, "mem")
        found = await summary(node)
        memory = found["node"]["memory"]
        assert memory["availableBytes"] + memory["workingSetBytes"] == _meminfo_total()
        st = os.statvfs(tmp_path / "kubelet")
        assert found["node"]["fs"]["capacityBytes"] == st.f_blocks * st.f_frsize
        assert found["node"]["rlimit"]["maxpid"] == min(_pid_limits()) and found["node"]["rlimit"]["curproc"] > 0
        image_st = os.statvfs(tmp_path / "state" / "snapshots")  # the emulator's ImageFsInfo mountpoint
        assert found["node"]["runtime"]["imageFs"]["capacityBytes"] == image_st.f_blocks * image_st.f_frsize
        (app,) = pod_of(found, "mem")["containers"]  # the pods' figures are still the runtime's
        assert app["memory"]["workingSetBytes"] == 16 * MiB + BASE_MEMORY_BYTES
        obj = json.loads((await http_get(node.port, f"/api/v1/nodes/{NODE}"))[1])
        assert obj["status"]["capacity"]["cpu"] == str(os.cpu_count())
    finally:
        await stop_node(node)


async def test_without_pod_cgroups_the_runtime_refuses_sandbox_stats_and_pods_are_their_containers(
        tmp_path: Path) -> None:
    node = await start(tmp_path, cgroupsPerQOS=False)  # no cgroup parent: the emulator, as containerd 1.6, refuses
    try:
        node.write("mem", pod("mem", helper("app", "--memory-mib=8")))
        await running(node, "mem")
        found = await summary(node)
        mem = pod_of(found, "mem")
        working = 8 * MiB + BASE_MEMORY_BYTES
        assert mem["memory"]["workingSetBytes"] == working and "process_stats" not in mem
        assert found["node"]["memory"]["availableBytes"] == MEMORY - working
        assert found["node"]["rlimit"]["curproc"] == 2  # the ready sandbox and the running container
    finally:
        await stop_node(node)
