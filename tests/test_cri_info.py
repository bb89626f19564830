"""Runtime-wide RPCs (Version, Status, RuntimeConfig, UpdateRuntimeConfig, CheckpointContainer,
UpdatePodSandboxResources), stats and metrics, and that every CRI RPC is implemented.

Every call goes through the real gRPC stubs on the emulator's unix socket.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from kubeharness import __version__
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.process import START_CPU_NS
from kubeharness.emulators.cri.stats import UNLIMITED_MEMORY_BYTES
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
MIB = 1024 * 1024
BASE_MEMORY = 512 * 1024  # what an emulated process uses before it allocates anything
PAUSE_MEMORY = 300 * 1024  # a ready sandbox's pause process


async def expect_error(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


async def sandbox_ip(cri: CriHarness, sid: str) -> str:
    resp = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    return resp.status.network.ip


# -- Version, Status, RuntimeConfig ---------------------------------------------------------------


async def test_version_defaults(cri: CriHarness) -> None:
    resp = await cri.runtime.Version(api.VersionRequest(version="0.1.0"))
    assert resp.version == "0.1.0"
    assert resp.runtime_name == "kubeharness"
    assert resp.runtime_version == __version__
    assert resp.runtime_api_version == "v1"


async def test_status_reports_runtime_and_network_ready(cri: CriHarness) -> None:
    resp = await cri.runtime.Status(api.StatusRequest())
    conditions = {c.type: (c.status, c.reason, c.message) for c in resp.status.conditions}
    assert conditions == {"RuntimeReady": (True, "", ""), "NetworkReady": (True, "", "")}
    assert sorted(h.name for h in resp.runtime_handlers) == ["", "runc"]
    assert dict(resp.info) == {}
    verbose = await cri.runtime.Status(api.StatusRequest(verbose=True))
    config = json.loads(verbose.info["config"])
    assert config["runtimeName"] == "kubeharness"
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["podCIDR"] == "127.77.0.0/16"
    assert config["sandboxImage"] == "registry.k8s.io/pause:3.10"


async def test_runtime_config_reports_cgroupfs_by_default(cri: CriHarness) -> None:
    resp = await cri.runtime.RuntimeConfig(api.RuntimeConfigRequest())
    assert resp.linux.cgroup_driver == api.CGROUPFS


class TestConfiguredRuntime:
    @pytest.fixture
    def cri_config(self) -> CriConfig:
        return CriConfig.from_dict(
            {"runtime_name": "containerd", "runtime_version": "v2.0.0-emu", "cgroup_driver": "systemd",
             "network_ready": False}
        )

    async def test_version_from_config(self, cri: CriHarness) -> None:
        resp = await cri.runtime.Version(api.VersionRequest())
        assert (resp.version, resp.runtime_name, resp.runtime_version, resp.runtime_api_version) == (
            "0.1.0", "containerd", "v2.0.0-emu", "v1")

    async def test_runtime_config_systemd(self, cri: CriHarness) -> None:
        resp = await cri.runtime.RuntimeConfig(api.RuntimeConfigRequest())
        assert resp.linux.cgroup_driver == api.SYSTEMD

    async def test_network_not_ready(self, cri: CriHarness) -> None:
        resp = await cri.runtime.Status(api.StatusRequest(verbose=True))
        conditions = {c.type: c for c in resp.status.conditions}
        assert set(conditions) == {"RuntimeReady", "NetworkReady"}
        assert conditions["RuntimeReady"].status is True
        network = conditions["NetworkReady"]
        assert network.status is False
        assert network.reason == "NetworkPluginNotReady"
        assert "cni plugin not initialized" in network.message
        assert json.loads(resp.info["config"])["cgroupDriver"] == "systemd"


# -- UpdateRuntimeConfig -----------------------------------------------------------------------


async def test_update_runtime_config_changes_the_range_of_new_sandboxes(cri: CriHarness) -> None:
    old = await cri.run_sandbox(name="old")
    assert await sandbox_ip(cri, old) == "127.77.0.2"
    cfg = api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr="10.244.3.0/24,fd00:10:244:3::/64"))
    await cri.runtime.UpdateRuntimeConfig(api.UpdateRuntimeConfigRequest(runtime_config=cfg))
    new = await cri.run_sandbox(name="new")
    assert await sandbox_ip(cri, new) == "10.244.3.2"
    assert await sandbox_ip(cri, await cri.run_sandbox(name="newer")) == "10.244.3.3"
    assert await sandbox_ip(cri, old) == "127.77.0.2"  # a sandbox keeps its address
    status = await cri.runtime.Status(api.StatusRequest(verbose=True))
    assert json.loads(status.info["config"])["podCIDR"] == "10.244.3.0/24,fd00:10:244:3::/64"
    # The same CIDR again changes nothing: addresses already handed out stay taken.
    await cri.runtime.UpdateRuntimeConfig(api.UpdateRuntimeConfigRequest(runtime_config=cfg))
    assert await sandbox_ip(cri, await cri.run_sandbox(name="newest")) == "10.244.3.4"


@pytest.mark.parametrize("cidr", ["10.244.3.0/33", "not-a-cidr", "10.244.300.0/24"])
async def test_update_runtime_config_with_a_malformed_cidr_is_invalid(cri: CriHarness, cidr: str) -> None:
    cfg = api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=cidr))
    details = await expect_error(
        cri.runtime.UpdateRuntimeConfig(api.UpdateRuntimeConfigRequest(runtime_config=cfg)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert cidr in details
    assert await sandbox_ip(cri, await cri.run_sandbox()) == "127.77.0.2"  # the range did not change


# -- CheckpointContainer, UpdatePodSandboxResources ------------------------------------------


async def test_checkpoint_container_is_refused_clearly(cri: CriHarness) -> None:
    _, cid = await cri.run_container()
    details = await expect_error(
        cri.runtime.CheckpointContainer(api.CheckpointContainerRequest(container_id=cid, location="/tmp/x.tar")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert cid in details and "checkpoint" in details
    await expect_error(
        cri.runtime.CheckpointContainer(api.CheckpointContainerRequest(container_id="f" * 64)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        cri.runtime.CheckpointContainer(api.CheckpointContainerRequest()), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_update_pod_sandbox_resources(cri: CriHarness) -> None:
    sid = await cri.run_sandbox()
    resources = api.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=256 * MIB)
    await cri.runtime.UpdatePodSandboxResources(
        api.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sid, resources=resources)
    )
    await cri.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sid[:12]))
    await expect_error(
        cri.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(pod_sandbox_id="f" * 64)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        cri.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# -- stats ----------------------------------------------------------------------------------


async def container_stats(cri: CriHarness, cid: str) -> api.ContainerStats:
    return (await cri.runtime.ContainerStats(api.ContainerStatsRequest(container_id=cid))).stats


async def test_container_stats_follow_the_behaviour_on_the_clock(cri: CriHarness) -> None:
    _, cid = await cri.run_container(args=["--cpu-millicores=250", "--memory-mib=64", "--disk-mib=5"],
                                     labels={"app": "web"})
    started = (await cri.status(cid)).started_at
    await cri.clock.advance(10)
    now = cri.clock.now_ns()
    assert now - started == 10 * NS
    stats = await container_stats(cri, cid)
    assert stats.attributes.id == cid
    assert stats.attributes.metadata.name == "c"
    assert dict(stats.attributes.labels) == {"app": "web"}
    assert stats.cpu.timestamp == now
    assert stats.cpu.usage_core_nano_seconds.value == START_CPU_NS + 250 * 10 * NS // 1000  # start-up + 2.5 s
    assert stats.cpu.usage_nano_cores.value == 250_000_000
    assert stats.memory.timestamp == now
    assert stats.memory.working_set_bytes.value == 64 * MIB + BASE_MEMORY
    assert stats.memory.usage_bytes.value == 64 * MIB + BASE_MEMORY
    # no limit: what is left below the cgroup's maximum, as containerd reports it
    assert stats.memory.available_bytes.value == UNLIMITED_MEMORY_BYTES - stats.memory.working_set_bytes.value
    assert stats.writable_layer.timestamp == 0  # containerd 1.6 leaves it unset
    assert stats.writable_layer.used_bytes.value == 5 * MIB
    assert stats.writable_layer.fs_id.mountpoint == str(cri.state_dir / "snapshots")
    await cri.clock.advance(30)
    later = await container_stats(cri, cid)
    assert later.cpu.usage_core_nano_seconds.value == START_CPU_NS + 250 * 40 * NS // 1000
    assert later.cpu.timestamp == later.memory.timestamp == cri.clock.now_ns()


async def test_memory_grows_at_its_rate_and_available_bytes_follow_the_limit(cri: CriHarness) -> None:
    _, cid = await cri.run_container(args=["--memory-mib=64", "--memory-mib-per-second=4"], memory_limit=128 * MIB)
    await cri.clock.advance(5)
    stats = await container_stats(cri, cid)
    assert stats.memory.working_set_bytes.value == 20 * MIB + BASE_MEMORY
    assert stats.memory.available_bytes.value == 128 * MIB - 20 * MIB - BASE_MEMORY
    await cri.clock.advance(60)
    stats = await container_stats(cri, cid)
    assert stats.memory.working_set_bytes.value == 64 * MIB + BASE_MEMORY  # capped at --memory-mib
    assert stats.cpu.usage_core_nano_seconds.value == START_CPU_NS  # no --cpu-millicores: only its start-up


async def test_stats_of_an_exited_container_are_refused_but_listed_with_the_writable_layer(
    cri: CriHarness,
) -> None:
    _, cid = await cri.run_container(args=["--cpu-millicores=100", "--disk-mib=2", "--exit-after=3s"])
    await cri.clock.advance(5)
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    # containerd 1.6: no task, no metrics for ContainerStats; ListContainerStats still lists it
    await expect_error(cri.runtime.ContainerStats(api.ContainerStatsRequest(container_id=cid)),
                       grpc.StatusCode.UNKNOWN)
    listed = await cri.runtime.ListContainerStats(
        api.ListContainerStatsRequest(filter=api.ContainerStatsFilter(id=cid))
    )
    (stats,) = listed.stats
    assert stats.attributes.id == cid
    assert not stats.HasField("cpu") and not stats.HasField("memory")
    # The container's writable layer (its snapshot) stays until the container is removed.
    assert stats.writable_layer.used_bytes.value == 2 * MIB


async def test_container_stats_of_unknown_or_empty_id(cri: CriHarness) -> None:
    await expect_error(cri.runtime.ContainerStats(api.ContainerStatsRequest(container_id="f" * 64)),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(cri.runtime.ContainerStats(api.ContainerStatsRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(cri.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id="f" * 64)),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(cri.runtime.PodSandboxStats(api.PodSandboxStatsRequest()), grpc.StatusCode.INVALID_ARGUMENT)


async def two_pods(cri: CriHarness) -> tuple[tuple[str, str, str], tuple[str, str]]:
    """Pod a (label tier=front) with containers a1 (app=x) and a2 (app=y); pod b with b1 (app=x)."""
    await cri.pull("kubeharness.test/khelper:1")
    cfg_a = cri.sandbox_config(name="a", labels={"tier": "front"})
    cfg_b = cri.sandbox_config(name="b", labels={"tier": "back"})
    sid_a = await cri.run_sandbox(cfg_a)
    sid_b = await cri.run_sandbox(cfg_b)
    a1 = await cri.create(sid_a, cfg_a, name="a1", args=["--cpu-millicores=250", "--memory-mib=64"],
                          labels={"app": "x"})
    a2 = await cri.create(sid_a, cfg_a, name="a2", args=["--cpu-millicores=100"], labels={"app": "y"})
    b1 = await cri.create(sid_b, cfg_b, name="b1", args=["--cpu-millicores=500", "--disk-mib=1"],
                          labels={"app": "x"})
    for cid in (a1, a2, b1):
        await cri.start_container(cid)
    return (sid_a, a1, a2), (sid_b, b1)


async def test_list_container_stats_filters(cri: CriHarness) -> None:
    (sid_a, a1, a2), (sid_b, b1) = await two_pods(cri)

    async def listed(**flt: Any) -> list[str]:
        req = api.ListContainerStatsRequest(filter=api.ContainerStatsFilter(**flt))
        return sorted(s.attributes.id for s in (await cri.runtime.ListContainerStats(req)).stats)

    assert await listed() == sorted([a1, a2, b1])
    assert await listed(id=a2) == [a2]
    assert await listed(id=b1[:10]) == [b1]
    assert await listed(pod_sandbox_id=sid_a) == sorted([a1, a2])
    assert await listed(pod_sandbox_id=sid_b[:10]) == [b1]
    assert await listed(label_selector={"app": "x"}) == sorted([a1, b1])
    assert await listed(label_selector={"app": "x"}, pod_sandbox_id=sid_a) == [a1]
    assert await listed(id=a1, pod_sandbox_id=sid_b) == []
    assert await listed(id="f" * 64) == []
    assert await listed(pod_sandbox_id="f" * 64) == []
    assert await listed(label_selector={"app": "z"}) == []


async def test_pod_sandbox_stats_sum_their_containers(cri: CriHarness) -> None:
    (sid_a, a1, a2), _ = await two_pods(cri)
    await cri.clock.advance(8)
    now = cri.clock.now_ns()
    stats = (await cri.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id=sid_a))).stats
    assert stats.attributes.id == sid_a
    assert stats.attributes.metadata.name == "a"
    assert dict(stats.attributes.labels) == {"tier": "front"}
    linux = stats.linux
    assert sorted(c.attributes.id for c in linux.containers) == sorted([a1, a2])
    assert linux.cpu.timestamp == now
    assert linux.cpu.usage_core_nano_seconds.value == 2 * START_CPU_NS + (250 + 100) * 8 * NS // 1000
    assert linux.cpu.usage_nano_cores.value == 350_000_000
    assert linux.memory.timestamp == now
    assert linux.memory.working_set_bytes.value == PAUSE_MEMORY + 64 * MIB + 2 * BASE_MEMORY
    assert linux.process.process_count.value == 3
    assert linux.network.timestamp == now
    assert linux.network.default_interface.name == "eth0"


async def test_list_pod_sandbox_stats_filters(cri: CriHarness) -> None:
    (sid_a, _, _), (sid_b, _) = await two_pods(cri)

    async def listed(**flt: Any) -> list[str]:
        req = api.ListPodSandboxStatsRequest(filter=api.PodSandboxStatsFilter(**flt))
        return sorted(s.attributes.id for s in (await cri.runtime.ListPodSandboxStats(req)).stats)

    assert await listed() == sorted([sid_a, sid_b])
    assert await listed(id=sid_b) == [sid_b]
    assert await listed(id=sid_a[:10]) == [sid_a]
    assert await listed(label_selector={"tier": "front"}) == [sid_a]
    assert await listed(id=sid_a, label_selector={"tier": "back"}) == []
    assert await listed(id="f" * 64) == []


async def test_metric_descriptors(cri: CriHarness) -> None:
    resp = await cri.runtime.ListMetricDescriptors(api.ListMetricDescriptorsRequest())
    descriptors = {d.name: list(d.label_keys) for d in resp.descriptors}
    assert descriptors == {
        "container_cpu_usage_seconds_total": ["container", "pod", "namespace"],
        "container_memory_working_set_bytes": ["container", "pod", "namespace"],
        "container_fs_usage_bytes": ["container", "pod", "namespace"],
    }
    assert all(d.help for d in resp.descriptors)


async def test_pod_sandbox_metrics(cri: CriHarness) -> None:
    (sid_a, a1, a2), (sid_b, b1) = await two_pods(cri)
    await cri.clock.advance(10)
    now = cri.clock.now_ns()
    resp = await cri.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest())
    pods = {p.pod_sandbox_id: p for p in resp.pod_metrics}
    assert set(pods) == {sid_a, sid_b}
    assert sorted(c.container_id for c in pods[sid_a].container_metrics) == sorted([a1, a2])
    (b1_metrics,) = pods[sid_b].container_metrics
    assert b1_metrics.container_id == b1
    values = {m.name: (m.value.value, list(m.label_values), m.timestamp, m.metric_type) for m in b1_metrics.metrics}
    labels = ["b1", "b", "default"]
    assert values == {
        "container_cpu_usage_seconds_total": (5, labels, now, api.COUNTER),  # 500 millicores for 10 s
        "container_memory_working_set_bytes": (BASE_MEMORY, labels, now, api.GAUGE),
        "container_fs_usage_bytes": (MIB, labels, now, api.GAUGE),
    }


# -- every RPC is implemented -------------------------------------------------------------------


@pytest.mark.parametrize("service", ["RuntimeService", "ImageService"])
async def test_every_rpc_answers_an_empty_request(cri: CriHarness, service: str) -> None:
    assert cri.channel is not None
    descriptor = api.DESCRIPTOR.services_by_name[service]
    answers: dict[str, str] = {}
    for method in descriptor.methods:
        request_cls = getattr(api, method.input_type.name)
        response_cls = getattr(api, method.output_type.name)
        path = f"/{descriptor.full_name}/{method.name}"
        try:
            if method.server_streaming:
                stream = cri.channel.unary_stream(
                    path, request_serializer=request_cls.SerializeToString,
                    response_deserializer=response_cls.FromString,
                )(request_cls())
                try:
                    await asyncio.wait_for(stream.read(), timeout=0.3)
                    answers[method.name] = "OK"
                except TimeoutError:
                    answers[method.name] = "OPEN"  # a stream that waits for events (GetContainerEvents)
                finally:
                    stream.cancel()
            else:
                await asyncio.wait_for(
                    cri.channel.unary_unary(
                        path, request_serializer=request_cls.SerializeToString,
                        response_deserializer=response_cls.FromString,
                    )(request_cls()),
                    timeout=5,
                )
                answers[method.name] = "OK"
        except grpc.aio.AioRpcError as err:
            answers[method.name] = err.code().name
    assert len(answers) == len(descriptor.methods)
    bad = {name: code for name, code in answers.items() if code in ("UNIMPLEMENTED", "INTERNAL")}
    assert bad == {}, answers
    if service == "RuntimeService":
        ok = {"Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig", "ListPodSandbox", "StreamPodSandboxes",
              "ListContainers", "StreamContainers", "ListContainerStats", "StreamContainerStats",
              "ListPodSandboxStats", "StreamPodSandboxStats", "ListMetricDescriptors", "ListPodSandboxMetrics",
              "StreamPodSandboxMetrics"}
        expected = {name: "OK" if name in ok else "INVALID_ARGUMENT" for name in answers}
        expected["GetContainerEvents"] = "OPEN"  # waits for events
    else:
        ok = {"ListImages", "StreamImages", "ImageFsInfo"}
        expected = {name: "OK" if name in ok else "INVALID_ARGUMENT" for name in answers}
    # Calls that need an id or a config reject an empty one as INVALID_ARGUMENT; the rest answer.
    assert answers == expected
