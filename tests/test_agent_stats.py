"""Units of the stats package and the Node object: the Summary's JSON field by field, the emulated node's
arithmetic from one scrape of the runtime, the host figures' parsers, the resource metrics' samples and stamps,
allocatable, the pressure conditions and the capacity block's errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.config.kubelet import AgentConfig, ConfigError, NodeCapacity
from kubeharness.agent.nodestatus.node import DISK_PRESSURE, NodeStatus, allocatable, quantities
from kubeharness.agent.stats import host
from kubeharness.agent.stats.cri import CpuRates, RuntimeScrape, disk_usage
from kubeharness.agent.stats.emulated import EmulatedStats
from kubeharness.agent.stats.summary import resource_metrics, rfc3339, summary_json
from kubeharness.agent.stats.types import (
    ContainerStats,
    CpuStats,
    FsStats,
    MemoryStats,
    NodeStats,
    PodReference,
    PodStats,
    ProcessStats,
    RlimitStats,
    Summary,
)
from kubeharness.clock import VirtualClock
from kubeharness.wire.cri import api_pb2 as api
from tests.promtext import parse

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
MiB = 2**20


def doc(**fields: object) -> dict[str, object]:
    return {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", **fields}


# ---- the JSON


def test_the_summary_json_has_kubelets_field_names_and_leaves_out_what_is_unknown() -> None:
    fs = FsStats(T0, available_bytes=1, capacity_bytes=2, used_bytes=3, inodes_free=4, inodes=5, inodes_used=6)
    container = ContainerStats("app", T0 - NS, cpu=CpuStats(T0, 250_000_000, 7 * NS),
                               memory=MemoryStats(T0, available_bytes=10, usage_bytes=11, working_set_bytes=12,
                                                  rss_bytes=13, page_faults=14, major_page_faults=0),
                               rootfs=fs, logs=FsStats(T0, used_bytes=99))
    pod = PodStats(PodReference("web", "default", "u-1"), T0 - 2 * NS, containers=(container,),
                   cpu=CpuStats(T0, usage_core_nano_seconds=8), memory=MemoryStats(T0, working_set_bytes=20),
                   ephemeral_storage=FsStats(T0, used_bytes=5), process_stats=ProcessStats(2))
    node = NodeStats("n1", T0 - 3600 * NS, cpu=CpuStats(T0), memory=MemoryStats(T0, available_bytes=1),
                     fs=fs, image_fs=fs, container_fs=fs, rlimit=RlimitStats(T0, max_pid=4096,
                                                                             num_of_running_processes=3))
    out = summary_json(Summary(node, (pod,)))
    when = "2026-01-01T00:00:00Z"
    fs_json = {"time": when, "availableBytes": 1, "capacityBytes": 2, "usedBytes": 3, "inodesFree": 4, "inodes": 5,
               "inodesUsed": 6}
    assert out["node"] == {
        "nodeName": "n1", "startTime": "2025-12-31T23:00:00Z", "cpu": {"time": when},
        "memory": {"time": when, "availableBytes": 1}, "fs": fs_json,
        "runtime": {"imageFs": fs_json, "containerFs": fs_json}, "rlimit": {"time": when, "maxpid": 4096, "curproc": 3}}
    assert list(out["node"]) == ["nodeName", "startTime", "cpu", "memory", "fs", "runtime", "rlimit"]
    (p,) = out["pods"]
    assert p == {
        "podRef": {"name": "web", "namespace": "default", "uid": "u-1"}, "startTime": "2025-12-31T23:59:58Z",
        "containers": [{
            "name": "app", "startTime": "2025-12-31T23:59:59Z",
            "cpu": {"time": when, "usageNanoCores": 250_000_000, "usageCoreNanoSeconds": 7 * NS},
            "memory": {"time": when, "availableBytes": 10, "usageBytes": 11, "workingSetBytes": 12, "rssBytes": 13,
                       "pageFaults": 14, "majorPageFaults": 0},
            "rootfs": fs_json, "logs": {"time": when, "usedBytes": 99}}],
        "cpu": {"time": when, "usageCoreNanoSeconds": 8}, "memory": {"time": when, "workingSetBytes": 20},
        "ephemeral-storage": {"time": when, "usedBytes": 5}, "process_stats": {"process_count": 2}}


def test_rfc3339_is_to_the_second_in_utc() -> None:
    assert rfc3339(T0 + 999_999_999) == "2026-01-01T00:00:00Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


# ---- /metrics/resource


def samples(text: bytes) -> list[tuple[str, dict[str, str], float, int | None]]:
    """(name, labels, value, stamp in ms) of every sample, as prometheus_client's parser reads them."""
    return [(s.name, s.labels, s.value, None if s.timestamp is None else round(float(s.timestamp) * 1000))
            for s in parse(text)]


def test_resource_metrics_as_kubelets_collector_writes_them() -> None:
    c = ContainerStats("app", T0 - NS, cpu=CpuStats(T0 + 5_000_000, usage_core_nano_seconds=1_500_000_000),
                       memory=MemoryStats(T0, working_set_bytes=2048))
    pod = PodStats(PodReference("web", "ns1", "u"), T0, containers=(c,), cpu=CpuStats(T0, usage_core_nano_seconds=NS),
                   memory=MemoryStats(T0, working_set_bytes=4096))
    node = NodeStats("n", T0, cpu=CpuStats(T0, usage_core_nano_seconds=3 * NS),
                     memory=MemoryStats(T0, working_set_bytes=8 * MiB))
    text = resource_metrics(Summary(node, (pod,)))
    ms = T0 // 1_000_000
    app = {"container": "app", "namespace": "ns1", "pod": "web"}
    web = {"namespace": "ns1", "pod": "web"}
    assert samples(text) == [
        ("container_cpu_usage_seconds_total", app, 1.5, ms + 5),
        ("container_memory_working_set_bytes", app, 2048, ms),
        ("container_start_time_seconds", app, (T0 - NS) / NS, None),
        ("node_cpu_usage_seconds_total", {}, 3, ms), ("node_memory_working_set_bytes", {}, 8 * MiB, ms),
        ("pod_cpu_usage_seconds_total", web, 1, ms),
        ("pod_memory_working_set_bytes", web, 4096, ms),
        ("resource_scrape_error", {}, 0, None), ("scrape_error", {}, 0, None)]
    lines = text.decode().splitlines()
    assert "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes" in lines
    assert "# TYPE pod_cpu_usage_seconds_total counter" in lines
    # label pairs by label name, as kubelet's registry writes them; no _created series (kubelet has none)
    assert f'container_memory_working_set_bytes{{container="app",namespace="ns1",pod="web"}} 2048.0 {ms}' in lines
    assert not any("_created" in line for line in lines)


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_a_resource_samples_stamp_is_its_figures_time_in_whole_milliseconds(time_ns: int) -> None:
    node = NodeStats("n", time_ns, memory=MemoryStats(time_ns, working_set_bytes=1))
    (line,) = [line for line in resource_metrics(Summary(node, ())).decode().splitlines()
               if line.startswith("node_memory_working_set_bytes ")]
    assert line.split(" ")[-1] == str(time_ns // 1_000_000)


def test_a_failed_summary_is_only_the_scrape_errors_at_one() -> None:
    assert samples(resource_metrics(None)) == [("resource_scrape_error", {}, 1, None), ("scrape_error", {}, 1, None)]


# ---- the emulated node's arithmetic


def _scrape(now: int, *, sandbox_stats: bool = True, image_bytes: int = 50 * MiB) -> RuntimeScrape:
    meta = api.PodSandboxMetadata(name="web", namespace="default", uid="u1")
    sandboxes = (api.PodSandbox(id="sb-old", metadata=meta, state=api.SANDBOX_NOTREADY, created_at=now - 9 * NS),
                 api.PodSandbox(id="sb", metadata=meta, state=api.SANDBOX_READY, created_at=now - 5 * NS))
    cmeta = api.ContainerMetadata(name="app")
    containers = (api.Container(id="c1", pod_sandbox_id="sb", metadata=cmeta, state=api.CONTAINER_RUNNING,
                                created_at=now - 4 * NS),
                  api.Container(id="c0", pod_sandbox_id="sb", metadata=cmeta, state=api.CONTAINER_EXITED,
                                created_at=now - 8 * NS))
    running = api.ContainerStats(attributes=api.ContainerAttributes(id="c1", metadata=cmeta))
    running.cpu.timestamp = now
    running.cpu.usage_core_nano_seconds.value = 2 * NS
    running.cpu.usage_nano_cores.value = 500_000_000
    running.memory.timestamp = now
    running.memory.working_set_bytes.value = 64 * MiB
    running.writable_layer.used_bytes.value = 10 * MiB
    running.writable_layer.inodes_used.value = 3
    exited = api.ContainerStats(attributes=api.ContainerAttributes(id="c0", metadata=cmeta))
    exited.writable_layer.used_bytes.value = 1 * MiB  # still on disk until removed
    exited.writable_layer.inodes_used.value = 1
    sb_stats = None
    if sandbox_stats:
        s = api.PodSandboxStats(attributes=api.PodSandboxAttributes(id="sb", metadata=meta))
        s.linux.cpu.timestamp = now
        s.linux.cpu.usage_core_nano_seconds.value = 2 * NS
        s.linux.memory.timestamp = now
        s.linux.memory.working_set_bytes.value = 64 * MiB + 300 * 1024
        s.linux.process.process_count.value = 2
        sb_stats = (s,)
    image_fs = api.ImageFsInfoResponse()
    fs = image_fs.image_filesystems.add(timestamp=now)
    fs.fs_id.mountpoint = "/nowhere"
    fs.used_bytes.value = image_bytes
    fs.inodes_used.value = 64
    return RuntimeScrape(now, sandboxes, containers, (running, exited), sb_stats, image_fs)


def _emulated(tmp_path: Path, capacity: NodeCapacity) -> EmulatedStats:
    return EmulatedStats("n1", capacity, client=None, clock=VirtualClock(T0), pod_logs_dir=str(tmp_path))  # type: ignore[arg-type]


def test_the_emulated_node_is_its_capacity_minus_what_the_runtime_says(tmp_path: Path) -> None:
    logs = tmp_path / "default_web_u1" / "app"
    logs.mkdir(parents=True)
    (logs / "0.log").write_bytes(b"x" * 10000)
    provider = _emulated(tmp_path, NodeCapacity(memory_bytes=1024 * MiB, ephemeral_storage_bytes=1000 * MiB,
                                                inodes=1000, pids=100))
    out = provider.from_scrape(_scrape(T0))
    logs_bytes, logs_inodes = disk_usage(str(tmp_path))
    assert logs_bytes >= 10000 and logs_inodes == 4  # the root, the pod's directory, the container's, the file
    node = out.node
    assert node.memory == MemoryStats(T0, available_bytes=1024 * MiB - 64 * MiB - 300 * 1024,
                                      usage_bytes=64 * MiB + 300 * 1024, working_set_bytes=64 * MiB + 300 * 1024)
    used = logs_bytes + 50 * MiB + 10 * MiB + 1 * MiB  # logs, images, both writable layers (one disk)
    assert node.fs == FsStats(T0, available_bytes=1000 * MiB - used, capacity_bytes=1000 * MiB, used_bytes=used,
                              inodes_free=1000 - (logs_inodes + 64 + 3 + 1), inodes=1000,
                              inodes_used=logs_inodes + 64 + 3 + 1)
    assert node.image_fs is not None and node.image_fs.used_bytes == 61 * MiB
    assert node.image_fs.capacity_bytes == 1000 * MiB and node.image_fs.available_bytes == node.fs.available_bytes
    assert node.rlimit == RlimitStats(T0, max_pid=100, num_of_running_processes=2)
    assert node.cpu == CpuStats(T0, usage_nano_cores=500_000_000, usage_core_nano_seconds=2 * NS)
    (pod,) = out.pods
    assert (pod.pod_ref, pod.start_time_ns) == (PodReference("web", "default", "u1"), T0 - 5 * NS)  # the ready one
    (c,) = pod.containers  # the running container only
    assert (c.name, c.start_time_ns) == ("app", T0 - 4 * NS)
    assert c.rootfs is not None and (c.rootfs.used_bytes, c.rootfs.inodes_used) == (10 * MiB, 3)
    assert c.logs is not None and c.logs.used_bytes == disk_usage(str(logs))[0]
    assert pod.process_stats == ProcessStats(2) and pod.memory is not None
    assert pod.memory.working_set_bytes == 64 * MiB + 300 * 1024
    pod_dir_bytes, pod_dir_inodes = disk_usage(str(tmp_path / "default_web_u1"))
    assert pod.ephemeral_storage is not None
    assert (pod.ephemeral_storage.used_bytes, pod.ephemeral_storage.inodes_used) == (10 * MiB + pod_dir_bytes,
                                                                                     3 + pod_dir_inodes)


def test_an_image_filesystem_of_its_own_takes_the_images_and_layers_off_the_nodefs(tmp_path: Path) -> None:
    provider = _emulated(tmp_path, NodeCapacity(ephemeral_storage_bytes=1000 * MiB, inodes=1000,
                                                image_fs_bytes=500 * MiB, image_fs_inodes=200))
    node = provider.from_scrape(_scrape(T0)).node
    assert node.fs is not None and node.fs.used_bytes == disk_usage(str(tmp_path))[0]
    assert node.image_fs == FsStats(T0, available_bytes=439 * MiB, capacity_bytes=500 * MiB, used_bytes=61 * MiB,
                                    inodes_free=200 - 68, inodes=200, inodes_used=68)


def test_without_sandbox_stats_the_pod_is_the_sum_of_its_running_containers(tmp_path: Path) -> None:
    provider = _emulated(tmp_path, NodeCapacity(memory_bytes=1024 * MiB))
    out = provider.from_scrape(_scrape(T0, sandbox_stats=False))
    (pod,) = out.pods
    assert pod.memory is not None and pod.memory.working_set_bytes == 64 * MiB and pod.process_stats is None
    assert out.node.memory is not None and out.node.memory.available_bytes == 960 * MiB
    assert out.node.rlimit is not None and out.node.rlimit.num_of_running_processes == 2  # the sandbox, c1


@given(st.lists(st.integers(0, 2**34), max_size=6), st.integers(1, 2**35), st.integers(0, 2**32))
def test_available_memory_is_the_capacity_minus_every_sandboxs_working_set(
        working_sets: list[int], capacity: int, images: int) -> None:
    found = _scrape(T0, image_bytes=images)
    assert found.sandbox_stats is not None
    template = found.sandbox_stats[0]
    stats = []
    for i, working in enumerate(working_sets):
        s = api.PodSandboxStats()
        s.CopyFrom(template)
        s.attributes.id = f"sb{i}"
        s.linux.memory.working_set_bytes.value = working
        stats.append(s)
    found = RuntimeScrape(T0, found.sandboxes, found.containers, found.container_stats, tuple(stats), found.image_fs)
    node = EmulatedStats("n", NodeCapacity(memory_bytes=capacity, ephemeral_storage_bytes=2**40), None,  # type: ignore[arg-type]
                         VirtualClock(T0), "/nonexistent-logs").from_scrape(found).node
    assert node.memory is not None and node.memory.working_set_bytes == sum(working_sets)
    assert node.memory.available_bytes == max(0, capacity - sum(working_sets))
    assert node.fs is not None and node.fs.used_bytes == images + 11 * MiB  # no logs; both writable layers
    assert node.rlimit is not None and node.rlimit.num_of_running_processes == 2 * len(working_sets)


def test_memory_available_never_goes_below_zero(tmp_path: Path) -> None:
    provider = _emulated(tmp_path, NodeCapacity(memory_bytes=32 * MiB, ephemeral_storage_bytes=MiB))
    node = provider.from_scrape(_scrape(T0)).node
    assert node.memory is not None and node.memory.available_bytes == 0
    assert node.fs is not None and node.fs.available_bytes == 0


def test_the_nodes_cpu_counter_keeps_what_containers_gone_had_used(tmp_path: Path) -> None:
    provider = _emulated(tmp_path, NodeCapacity())
    first = provider.from_scrape(_scrape(T0)).node.cpu
    gone = _scrape(T0 + NS)
    gone = RuntimeScrape(gone.time_ns, gone.sandboxes, (), (), None, gone.image_fs)
    later = provider.from_scrape(gone).node.cpu
    assert first is not None and later is not None
    assert later.usage_core_nano_seconds == first.usage_core_nano_seconds == 2 * NS and later.usage_nano_cores == 0


def test_cpu_rates_from_two_readings() -> None:
    rates = CpuRates()
    assert rates.rate("c", T0, 10 * NS) is None
    assert rates.rate("c", T0 + 2 * NS, 11 * NS) == 500_000_000
    assert rates.rate("c", T0 + 2 * NS, 12 * NS) is None  # no time passed
    assert rates.rate("c", T0 + 3 * NS, 1 * NS) is None  # a counter that went back (a new container)


def test_disk_usage_counts_blocks_and_entries_as_du(tmp_path: Path) -> None:
    assert disk_usage(str(tmp_path / "missing")) == (0, 0)
    (tmp_path / "a").write_bytes(b"y" * 5000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"")
    used, inodes = disk_usage(str(tmp_path))
    assert inodes == 4
    assert used == sum(os.lstat(p).st_blocks * 512 for p in (tmp_path, tmp_path / "a", tmp_path / "d",
                                                              tmp_path / "d" / "b"))


# ---- the host's figures


def test_the_working_set_of_a_v2_cgroup_is_current_minus_inactive_file(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("1000000\n")
    (tmp_path / "memory.stat").write_text("anon 500000\ninactive_file 300000\nactive_file 1\n")
    assert host.memory_working_set({}, str(tmp_path)) == 700000


def test_the_working_set_of_v1_is_usage_minus_total_inactive_file(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("900\n")
    (tmp_path / "memory" / "memory.stat").write_text("inactive_file 5\ntotal_inactive_file 100\n")
    assert host.memory_working_set({}, str(tmp_path)) == 800


def test_without_cgroup_files_the_working_set_comes_from_meminfo(tmp_path: Path) -> None:
    info = {"MemTotal": 1000, "MemFree": 200, "Inactive(file)": 300, "MemAvailable": 700}
    assert host.memory_working_set(info, str(tmp_path)) == 500


def test_proc_stat_gives_busy_time_and_boot_time() -> None:
    tick_ns = NS // os.sysconf("SC_CLK_TCK")
    stat = "cpu  10 20 30 4000 50 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1\nbtime 1767225600\n"
    assert host.cpu_usage_core_ns(stat) == (10 + 20 + 30 + 6 + 7 + 8) * tick_ns
    assert host.boot_time_ns(stat) == T0
    assert host.cpu_usage_core_ns("") is None


def test_meminfo_is_in_bytes() -> None:
    info = host.meminfo()
    assert info["MemTotal"] > 0 and info["MemTotal"] % 1024 == 0


def test_statvfs_figures(tmp_path: Path) -> None:
    fs = host.fs_of(str(tmp_path), T0)
    st_ = os.statvfs(tmp_path)
    assert fs is not None and fs.capacity_bytes == st_.f_blocks * st_.f_frsize and fs.inodes == st_.f_files
    assert host.fs_of(str(tmp_path / "missing"), T0) is None


# ---- allocatable, conditions, capacity block


def test_allocatable_is_capacity_minus_reserved_and_hard_thresholds() -> None:
    config = AgentConfig.from_dict(doc(systemReserved={"cpu": "250m", "memory": "1Gi", "pid": "100"},
                                       kubeReserved={"memory": "100Mi", "ephemeral-storage": "2Gi"},
                                       evictionHard={"memory.available": "5%", "nodefs.available": "1Gi"}))
    capacity = {"cpu": 2000, "memory": 4 * 2**30, "ephemeral-storage": 10 * 2**30, "pods": 110}
    memory = 4 * 2**30 - 2**30 - 100 * MiB - int(0.05 * 4 * 2**30)
    assert allocatable(capacity, config) == {"cpu": 1750, "memory": memory, "ephemeral-storage": 7 * 2**30,
                                             "pods": 110}
    small = AgentConfig.from_dict(doc(systemReserved={"memory": "8Gi"}))
    assert allocatable(capacity, small)["memory"] == 0  # never below zero
    assert quantities({"memory": 3 * 2**30, "cpu": 1500, "pods": 1024}) == {"cpu": "1500m", "memory": "3Gi",
                                                                           "pods": "1024"}


def test_pressure_conditions_are_set_by_the_eviction_manager_and_keep_their_transition_time() -> None:
    clock = VirtualClock(T0)
    ready: list[str | None] = [None]

    async def no_version() -> api.VersionResponse:
        return api.VersionResponse(runtime_name="x", runtime_version="1")

    status = NodeStatus(AgentConfig(node_name="n1"), clock, dict, lambda: ready[0], no_version)
    first = {c["type"]: c for c in status.conditions()}
    assert [c for c in first] == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    assert first["Ready"]["status"] == "True" and first["Ready"]["reason"] == "KubeletReady"
    asyncio.run(clock.advance(60))
    status.set_pressure(DISK_PRESSURE, True)
    ready[0] = "PLEG is not healthy"
    later = {c["type"]: c for c in status.conditions()}
    assert later["DiskPressure"] == {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure",
                                     "message": "kubelet has disk pressure", "lastHeartbeatTime": rfc3339(T0 + 60 * NS),
                                     "lastTransitionTime": rfc3339(T0 + 60 * NS)}
    assert later["MemoryPressure"]["lastTransitionTime"] == rfc3339(T0)  # unchanged: its old transition time
    assert later["Ready"]["status"] == "False" and later["Ready"]["message"] == "PLEG is not healthy"
    with pytest.raises(ValueError, match="unknown node condition"):
        status.set_pressure("Ready", True)


@pytest.mark.parametrize(("block", "message"), [
    ({"memory": "lots"}, "kubeharnessNodeCapacity.memory"),
    ({"disk": "1Gi"}, "kubeharnessNodeCapacity.disk: unknown key"),
    ({"pids": 0}, "kubeharnessNodeCapacity.pids: must be positive"),
    ({"inodes": True}, "kubeharnessNodeCapacity.inodes: must be a quantity"),
    ({"cpu": "-1"}, "kubeharnessNodeCapacity.cpu"),
    ("8Gi", "kubeharnessNodeCapacity: must be a map"),
])
def test_a_bad_capacity_block_names_its_field(block: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AgentConfig.from_dict(doc(kubeharnessNodeCapacity=block))


def test_the_capacity_block_parses_quantities() -> None:
    config = AgentConfig.from_dict(doc(kubeharnessNodeCapacity={
        "cpu": "1500m", "memory": "8Gi", "ephemeralStorage": "100G", "inodes": "1M", "pids": 4096, "imageFs": "20Gi"}))
    assert config.node_capacity == NodeCapacity(cpu_millicores=1500, memory_bytes=8 * 2**30,
                                                ephemeral_storage_bytes=100 * 10**9, inodes=10**6, pids=4096,
                                                image_fs_bytes=20 * 2**30)
    assert AgentConfig.from_dict(doc()).node_capacity is None
