"""The CSI emulator through a real gRPC client on its socket: the volume lifecycle, the spec's errors,
idempotency, path checks, concurrency, persistence, registration and faults (emulated mounts)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.csi.config import CsiConfig
from kubeharness.emulators.csi.server import CsiServer
from kubeharness.errors import KubeharnessError
from kubeharness.faults import FaultEngine, load_plan
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc
from kubeharness.wire.pluginregistration import api_pb2 as reg
from kubeharness.wire.pluginregistration import api_pb2_grpc as reg_grpc
from tests.conftest import code_of, eventually

Mode = csi.VolumeCapability.AccessMode
GiB = 1024**3
Code = grpc.StatusCode


def mount_cap(mode: int = Mode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = ()) -> csi.VolumeCapability:
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4", mount_flags=list(flags)),
                                access_mode=Mode(mode=mode))  # type: ignore[arg-type]


def block_cap(mode: int = Mode.SINGLE_NODE_WRITER) -> csi.VolumeCapability:
    return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=mode))  # type: ignore[arg-type]


def on_disk(path: str) -> tuple[str, int] | None:
    """What is at ``path``: ("dir", 0), ("file", size) or None."""
    if os.path.isdir(path):
        return "dir", 0
    return ("file", os.path.getsize(path)) if os.path.exists(path) else None


@dataclass
class Csi:
    root: Path
    server: CsiServer
    channel: grpc.aio.Channel
    identity: csi_grpc.IdentityAsyncStub
    controller: csi_grpc.ControllerAsyncStub
    node: csi_grpc.NodeAsyncStub

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    def staging(self, name: str = "vol") -> str:
        return str(self.kubelet / "plugins" / "kubernetes.io" / "csi" / name / "globalmount")

    def target(self, pod: str = "pod", name: str = "vol") -> str:
        return str(self.kubelet / "pods" / pod / "volumes" / "kubernetes.io~csi" / name / "mount")

    async def create(self, name: str = "vol", size: int = GiB, cap: csi.VolumeCapability | None = None) -> str:
        reply = await self.controller.CreateVolume(csi.CreateVolumeRequest(
            name=name, capacity_range=csi.CapacityRange(required_bytes=size), volume_capabilities=[cap or mount_cap()]))
        return reply.volume.volume_id

    async def attach(self, volume_id: str, cap: csi.VolumeCapability | None = None) -> None:
        await self.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id="node-1", volume_capability=cap or mount_cap()))

    async def stage(self, volume_id: str, name: str = "vol", cap: csi.VolumeCapability | None = None) -> None:
        await self.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=self.staging(name), volume_capability=cap or mount_cap()))

    def publish_request(self, volume_id: str, pod: str = "pod", name: str = "vol", readonly: bool = False,
                        cap: csi.VolumeCapability | None = None) -> csi.NodePublishVolumeRequest:
        return csi.NodePublishVolumeRequest(volume_id=volume_id, staging_target_path=self.staging(name),
                                            target_path=self.target(pod, name), readonly=readonly,
                                            volume_capability=cap or mount_cap())


def short_dir(root: Path) -> Path:
    """Where a test's sockets go: below ``root`` if its paths stay under the unix socket limit, else a short
    directory in /tmp named after it (pytest's tmp paths under xdist can be long)."""
    if len(str(root / "registry" / "csi.kubeharness.io-reg.sock")) <= 100:
        return root
    path = Path("/tmp") / ("khcsi-" + hashlib.sha256(str(root).encode()).hexdigest()[:12])
    path.mkdir(exist_ok=True)
    return path


async def start(root: Path, plan: str | None = None, **config: object) -> Csi:
    clock = VirtualClock()
    settings = CsiConfig(node_id="node-1", roots=[str(root / "kubelet")], capacity_bytes=10 * GiB,
                         max_volumes_per_node=5)
    for key, value in config.items():
        setattr(settings, key, value)
    engine = FaultEngine(load_plan(plan), clock, log_path=root / "fired.jsonl") if plan else None
    sockets = short_dir(root)
    server = CsiServer(f"unix://{sockets / 'csi.sock'}", root / "state", settings, clock, engine,
                       sockets / "faults.sock" if engine else None, registration_dir=sockets / "registry")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sockets / 'csi.sock'}")
    return Csi(root, server, channel, csi_grpc.IdentityStub(channel), csi_grpc.ControllerStub(channel),
               csi_grpc.NodeStub(channel))


async def stop(c: Csi) -> None:
    await c.channel.close(None)
    await c.server.stop(grace=0)
    sockets = short_dir(c.root)
    if sockets != c.root:
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[Csi]:
    c = await start(tmp_path)
    try:
        yield c
    finally:
        await stop(c)


async def test_identity_names_the_driver_its_services_and_is_ready(plugin: Csi) -> None:
    info = await plugin.identity.GetPluginInfo(csi.GetPluginInfoRequest())
    assert info.name == "csi.kubeharness.io" and info.vendor_version
    kinds = {c.service.type for c in (await plugin.identity.GetPluginCapabilities(
        csi.GetPluginCapabilitiesRequest())).capabilities if c.HasField("service")}
    assert csi.PluginCapability.Service.CONTROLLER_SERVICE in kinds
    assert (await plugin.identity.Probe(csi.ProbeRequest())).ready.value is True
    node = await plugin.node.NodeGetInfo(csi.NodeGetInfoRequest())
    assert (node.node_id, node.max_volumes_per_node) == ("node-1", 5)
    assert dict(node.accessible_topology.segments) == {"topology.csi.kubeharness.io/node": "node-1"}


async def test_a_whole_volume_lifecycle_where_every_call_is_idempotent(plugin: Csi) -> None:
    c = plugin
    calls = []
    create = csi.CreateVolumeRequest(name="data", capacity_range=csi.CapacityRange(required_bytes=2 * GiB),
                                     volume_capabilities=[mount_cap()], parameters={"tier": "fast"})
    first = await c.controller.CreateVolume(create)
    assert first == await c.controller.CreateVolume(create)
    volume_id = first.volume.volume_id
    assert first.volume.capacity_bytes == 2 * GiB
    publish = csi.ControllerPublishVolumeRequest(volume_id=volume_id, node_id="node-1", volume_capability=mount_cap())
    stage = csi.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=c.staging("data"),
                                       volume_capability=mount_cap())
    node_publish = c.publish_request(volume_id, name="data")
    calls = [(c.controller.ControllerPublishVolume, publish), (c.node.NodeStageVolume, stage),
             (c.node.NodePublishVolume, node_publish)]
    for method, request in calls:
        assert await method(request) == await method(request)  # type: ignore[operator]
    assert on_disk(node_publish.target_path) == on_disk(c.staging("data")) == ("dir", 0)
    stats = await c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=node_publish.target_path))
    by_unit = {u.unit: u for u in stats.usage}
    assert by_unit[csi.VolumeUsage.BYTES].total == 2 * GiB and not stats.volume_condition.abnormal
    listed = await c.controller.ListVolumes(csi.ListVolumesRequest())
    assert [(e.volume.volume_id, list(e.status.published_node_ids)) for e in listed.entries] == [
        (volume_id, ["node-1"])]
    # and back down, each step twice
    unpublish = csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=node_publish.target_path)
    unstage = csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=c.staging("data"))
    detach = csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-1")
    delete = csi.DeleteVolumeRequest(volume_id=volume_id)
    for method, request in [(c.node.NodeUnpublishVolume, unpublish), (c.node.NodeUnstageVolume, unstage),
                            (c.controller.ControllerUnpublishVolume, detach), (c.controller.DeleteVolume, delete)]:
        await method(request)  # type: ignore[operator]
        await method(request)  # type: ignore[operator]
    assert on_disk(node_publish.target_path) is None  # unpublish removes the target path
    assert (await c.controller.ListVolumes(csi.ListVolumesRequest())).entries == []
    assert (await c.controller.GetCapacity(csi.GetCapacityRequest())).available_capacity == 10 * GiB


async def test_missing_fields_are_invalid_argument_naming_the_field(plugin: Csi) -> None:
    c = plugin
    volume_id = await c.create()
    cases: list[tuple[Awaitable[object], str]] = [
        (c.controller.CreateVolume(csi.CreateVolumeRequest(volume_capabilities=[mount_cap()])), "name"),
        (c.controller.CreateVolume(csi.CreateVolumeRequest(name="x")), "volume_capabilities"),
        (c.controller.CreateVolume(csi.CreateVolumeRequest(name="x", volume_capabilities=[csi.VolumeCapability()])),
         "access type"),
        (c.controller.DeleteVolume(csi.DeleteVolumeRequest()), "volume_id"),
        (c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=volume_id,
                                                                                 node_id="node-1")),
         "volume_capability"),
        (c.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=volume_id, volume_capability=mount_cap())),
         "staging_target_path"),
        (c.node.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=volume_id,
                                                               staging_target_path=c.staging(),
                                                               volume_capability=mount_cap())), "target_path"),
        (c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=volume_id)), "volume_path"),
        (c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(target_path=c.target())), "volume_id"),
        (c.controller.CreateVolume(csi.CreateVolumeRequest(
            name="x", volume_capabilities=[mount_cap(flags=("exec;rm -rf",))])), "mount flag"),
        (c.controller.CreateVolume(csi.CreateVolumeRequest(
            name="x", volume_capabilities=[mount_cap()],
            capacity_range=csi.CapacityRange(required_bytes=2, limit_bytes=1))), "limit_bytes"),
    ]
    for call, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() == Code.INVALID_ARGUMENT, words
        assert words in (failed.value.details() or ""), failed.value.details()


async def test_unknown_volumes_are_not_found_except_where_the_spec_says_ok(plugin: Csi) -> None:
    c = plugin
    ghost = "khv-ghost"
    assert await code_of(c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=ghost))) == Code.OK
    # the spec: a volume that cannot be found can safely be regarded as unpublished
    assert await code_of(c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=ghost, node_id="node-1"))) == Code.OK
    for call in (
        c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=ghost, node_id="node-1", volume_capability=mount_cap())),
        c.controller.ValidateVolumeCapabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=ghost, volume_capabilities=[mount_cap()])),
        c.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=ghost, staging_target_path=c.staging(),
                                                          volume_capability=mount_cap())),
        c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=ghost, target_path=c.target())),
        c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=ghost, volume_path=c.target())),
    ):
        assert await code_of(call) == Code.NOT_FOUND
    volume_id = await c.create()
    unknown_node = c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id="elsewhere", volume_capability=mount_cap()))
    assert await code_of(unknown_node) == Code.NOT_FOUND


async def test_the_spec_preconditions(plugin: Csi) -> None:
    c = plugin
    volume_id = await c.create()
    # staging before the controller published it to this node
    assert await code_of(c.node.NodeStageVolume(csi.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=c.staging(), volume_capability=mount_cap()))) == \
        Code.FAILED_PRECONDITION
    await c.attach(volume_id)
    # publishing before staging (STAGE_UNSTAGE_VOLUME is advertised)
    assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id))) == Code.FAILED_PRECONDITION
    assert on_disk(c.target()) is None
    await c.stage(volume_id)
    await c.node.NodePublishVolume(c.publish_request(volume_id, pod="a"))
    # a single-node-writer volume read-write at a second target; read-only is fine
    assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id, pod="b"))) == Code.FAILED_PRECONDITION
    assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id, pod="c", readonly=True))) == Code.OK
    # the same target with other settings
    assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id, pod="a", readonly=True))) == \
        Code.ALREADY_EXISTS
    # unstage while published, delete while in use
    assert await code_of(c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
        volume_id=volume_id, staging_target_path=c.staging()))) == Code.FAILED_PRECONDITION
    assert await code_of(c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))) == \
        Code.FAILED_PRECONDITION
    # an incompatible re-create
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="vol", capacity_range=csi.CapacityRange(required_bytes=3 * GiB),
        volume_capabilities=[mount_cap()]))) == Code.ALREADY_EXISTS
    # a single-node volume attached to a second node
    c.server.config.node_id = "node-2"
    assert await code_of(c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id="node-2", volume_capability=mount_cap()))) == Code.FAILED_PRECONDITION


async def test_capacity_runs_out(plugin: Csi) -> None:
    c = plugin
    await c.create("big", 8 * GiB)
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="more", capacity_range=csi.CapacityRange(required_bytes=3 * GiB),
        volume_capabilities=[mount_cap()]))) == Code.RESOURCE_EXHAUSTED
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="huge", capacity_range=csi.CapacityRange(required_bytes=11 * GiB),
        volume_capabilities=[mount_cap()]))) == Code.OUT_OF_RANGE
    capacity = await c.controller.GetCapacity(csi.GetCapacityRequest())
    assert (capacity.available_capacity, capacity.maximum_volume_size.value) == (2 * GiB, 10 * GiB)
    small = await c.create("small", GiB)
    expanded = await c.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=small, capacity_range=csi.CapacityRange(required_bytes=GiB + GiB // 2)))
    assert (expanded.capacity_bytes, expanded.node_expansion_required) == (GiB + GiB // 2, True)
    assert await code_of(c.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=small, capacity_range=csi.CapacityRange(required_bytes=4 * GiB)))) == Code.RESOURCE_EXHAUSTED


async def test_hostile_paths_are_refused_and_nothing_is_touched(plugin: Csi, tmp_path: Path) -> None:
    c = plugin
    volume_id = await c.create()
    await c.attach(volume_id)
    outside = tmp_path / "elsewhere" / "x"
    for path in (str(outside), str(c.kubelet / "pods" / ".." / ".." / "escape"), "relative/path",
                 str(c.kubelet / "a\x00b"), str(c.kubelet)):
        for call in (c.node.NodeStageVolume(csi.NodeStageVolumeRequest(
                         volume_id=volume_id, staging_target_path=path, volume_capability=mount_cap())),
                     c.node.NodePublishVolume(csi.NodePublishVolumeRequest(
                         volume_id=volume_id, staging_target_path=c.staging(), target_path=path,
                         volume_capability=mount_cap()))):
            assert await code_of(call) == Code.INVALID_ARGUMENT, path
    assert on_disk(str(outside.parent)) is None and on_disk(str(tmp_path / "escape")) is None


async def test_block_access_publishes_a_file_of_the_volume_size(plugin: Csi) -> None:
    c = plugin
    volume_id = await c.create("raw", GiB, block_cap())
    await c.attach(volume_id, block_cap())
    await c.stage(volume_id, "raw", block_cap())
    await c.node.NodePublishVolume(c.publish_request(volume_id, name="raw", cap=block_cap()))
    target = c.target(name="raw")
    assert on_disk(target) == ("file", GiB)
    await c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target))
    assert on_disk(target) is None


async def test_list_volumes_pages_and_refuses_a_token_it_did_not_give(plugin: Csi) -> None:
    c = plugin
    ids = sorted([await c.create(f"v{i}", GiB) for i in range(5)])
    first = await c.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2))
    second = await c.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2, starting_token=first.next_token))
    third = await c.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2, starting_token=second.next_token))
    pages = [[e.volume.volume_id for e in page.entries] for page in (first, second, third)]
    assert pages == [ids[:2], ids[2:4], ids[4:]] and third.next_token == ""
    assert await code_of(c.controller.ListVolumes(csi.ListVolumesRequest(starting_token="bogus"))) == Code.ABORTED


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    c = await start(tmp_path)
    volume_id = await c.create()
    await c.attach(volume_id)
    await c.stage(volume_id)
    await c.node.NodePublishVolume(c.publish_request(volume_id))
    await stop(c)
    c = await start(tmp_path)
    try:
        # already published there: the same call succeeds, a conflicting one still conflicts
        assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id))) == Code.OK
        assert await code_of(c.node.NodePublishVolume(c.publish_request(volume_id, pod="b"))) == \
            Code.FAILED_PRECONDITION
        listed = await c.controller.ListVolumes(csi.ListVolumesRequest())
        assert list(listed.entries[0].status.published_node_ids) == ["node-1"]
    finally:
        await stop(c)


async def test_a_second_operation_on_a_volume_in_flight_is_aborted(tmp_path: Path) -> None:
    c = await start(tmp_path, """
rules:
  - {name: stuck-stage, where: csi, method: NodeStageVolume, action: hang, when: {first: 1}}
""")
    try:
        volume_id = await c.create()
        await c.attach(volume_id)
        other = await c.create("other")
        await c.attach(other)
        stuck = asyncio.ensure_future(code_of(c.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=c.staging(), volume_capability=mount_cap()), timeout=5)))
        assert c.server.faults is not None
        engine = c.server.faults
        await eventually(lambda: any(f.rule == "stuck-stage" for f in engine.fired()), "the stage to hang")
        # while the stage hangs, every call on its volume is ABORTED; other volumes go on
        assert await code_of(c.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=c.staging(), volume_capability=mount_cap()))) == Code.ABORTED
        assert await code_of(c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))) == Code.ABORTED
        await c.stage(other, "other")
        assert await stuck == Code.DEADLINE_EXCEEDED
        await c.stage(volume_id)  # the caller gave up, the volume is free again
    finally:
        await stop(c)


async def test_faults_hang_a_mount_fail_a_stage_halfway_and_report_abnormal(tmp_path: Path) -> None:
    c = await start(tmp_path, """
rules:
  - {name: mount-hangs, where: csi, method: NodePublishVolume, action: hang, when: {first: 1}}
  - {name: stage-half, where: csi, method: NodeStageVolume, action: {partial: {code: INTERNAL}}, when: {first: 1}}
  - {name: sick, where: csi, method: NodeGetVolumeStats, action: {csi_abnormal: {message: disk on fire}}}
  - {name: starting, where: csi, method: Probe, action: csi_not_ready, when: {first: 1}}
""")
    try:
        assert (await c.identity.Probe(csi.ProbeRequest())).ready.value is False
        assert (await c.identity.Probe(csi.ProbeRequest())).ready.value is True
        volume_id = await c.create()
        await c.attach(volume_id)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await c.stage(volume_id)
        assert failed.value.code() == Code.INTERNAL
        await c.stage(volume_id)  # it was staged anyway: the retry finds it done
        hung = c.node.NodePublishVolume(c.publish_request(volume_id), timeout=0.3)
        assert await code_of(hung) == Code.DEADLINE_EXCEEDED
        await c.node.NodePublishVolume(c.publish_request(volume_id))
        stats = await c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=volume_id,
                                                                              volume_path=c.target()))
        assert (stats.volume_condition.abnormal, stats.volume_condition.message) == (True, "disk on fire")
        rules = [line for line in (tmp_path / "fired.jsonl").read_text().splitlines()]
        assert len(rules) == 4
    finally:
        await stop(c)


async def test_the_registration_socket_tells_kubelet_about_the_driver(plugin: Csi) -> None:
    socket = short_dir(plugin.root) / "registry" / "csi.kubeharness.io-reg.sock"
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = reg_grpc.RegistrationStub(channel)
        info = await stub.GetInfo(reg.InfoRequest())
        assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
            "CSIPlugin", "csi.kubeharness.io", str(short_dir(plugin.root) / "csi.sock"), ["1.0.0"])
        await stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True))
    assert plugin.server.registration.statuses == [(True, "")]


@pytest.mark.parametrize(("settings", "words"), [
    ({"driver_name": "../evil"}, "driver name"),
    ({"driver_name": "Upper.Case"}, "driver name"),
    ({"driver_name": "x" * 64}, "driver name"),
    ({"roots": [1]}, "roots"),
    ({"roots": ["relative/dir"]}, "roots"),
    ({"mode": "magic"}, "mode"),
])
def test_bad_settings_are_refused_naming_them(settings: dict[str, object], words: str) -> None:
    config = CsiConfig()
    for key, value in settings.items():
        setattr(config, key, value)
    with pytest.raises(KubeharnessError) as refused:
        config.check()
    assert words in refused.value.message


async def test_many_volumes_go_through_their_lifecycle_concurrently(plugin: Csi) -> None:
    c = plugin

    async def cycle(index: int) -> None:
        name = f"many-{index}"
        volume_id = await c.create(name, GiB // 4)
        await c.attach(volume_id)
        await c.stage(volume_id, name)
        request = c.publish_request(volume_id, pod=f"p{index}", name=name)
        await c.node.NodePublishVolume(request)
        await c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                        target_path=request.target_path))
        await c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id,
                                                                    staging_target_path=c.staging(name)))
        await c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume_id,
                                                                                          node_id="node-1"))
        await c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))

    c.server.config.max_volumes_per_node = 0
    await asyncio.gather(*(cycle(i) for i in range(16)))
    assert (await c.controller.ListVolumes(csi.ListVolumesRequest())).entries == []


async def test_the_volume_is_looked_up_before_the_other_fields_are_judged(plugin: Csi, tmp_path: Path) -> None:
    """Spec corners (issue 18): missing fields first, then NOT_FOUND for an unknown volume whatever its paths
    and capability look like, then the values; stats and expansion at a path the volume is not at are NOT_FOUND."""
    c = plugin
    ghost = "khv-ghost"
    odd_paths = ("some/path", "/path/does/not/exist", str(c.kubelet / ".." / "escape"), str(c.kubelet / "a\x00b"))
    odd_cap = mount_cap(mode=Mode.UNKNOWN, flags=("exec;rm -rf",))
    for path in odd_paths:
        for call in (
            c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=ghost, volume_path=path)),
            c.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(volume_id=ghost, volume_path=path)),
            c.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=ghost, staging_target_path=path,
                                                              volume_capability=odd_cap)),
            c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=ghost, staging_target_path=path)),
            c.node.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=ghost, staging_target_path=path,
                                                                  target_path=path, volume_capability=odd_cap)),
            c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=ghost, target_path=path)),
        ):
            assert await code_of(call) == Code.NOT_FOUND, path
    for controller_call in (
        c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=ghost, node_id="node-1", volume_capability=odd_cap)),
        c.controller.ValidateVolumeCapabilities(csi.ValidateVolumeCapabilitiesRequest(
            volume_id=ghost, volume_capabilities=[odd_cap])),
        c.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
            volume_id=ghost, capacity_range=csi.CapacityRange(required_bytes=-1))),
    ):
        assert await code_of(controller_call) == Code.NOT_FOUND
    # a missing required field still comes first, even for an unknown volume
    assert await code_of(c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=ghost))) == \
        Code.INVALID_ARGUMENT
    # a known volume: a path it is not at is NOT_FOUND for stats and expansion, whatever the path looks like
    volume_id = await c.create()
    await c.attach(volume_id)
    await c.stage(volume_id)
    for path in odd_paths:
        assert await code_of(c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
            volume_id=volume_id, volume_path=path))) == Code.NOT_FOUND, path
        assert await code_of(c.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
            volume_id=volume_id, volume_path=path))) == Code.NOT_FOUND, path
    assert await code_of(c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=c.staging() + "/"))) == Code.OK
    # where the volume is, the paths' form is judged as before: nothing outside the roots is touched
    outside = tmp_path / "elsewhere"
    assert await code_of(c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(outside)))) == Code.INVALID_ARGUMENT
    assert on_disk(str(outside)) is None


async def test_the_spec_error_tables_codes(plugin: Csi) -> None:
    """Codes from the spec's per-RPC error tables that a simple driver easily gets wrong (issue 18)."""
    c = plugin
    volume_id = await c.create()
    await c.attach(volume_id)
    # NodeStageVolume / NodePublishVolume: a capability the volume was not created for exceeds its capabilities
    assert await code_of(c.node.NodeStageVolume(csi.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=c.staging(), volume_capability=block_cap()))) == \
        Code.FAILED_PRECONDITION
    assert on_disk(c.staging()) is None
    await c.stage(volume_id)
    assert await code_of(c.node.NodePublishVolume(c.publish_request(
        volume_id, cap=mount_cap(Mode.MULTI_NODE_MULTI_WRITER)))) == Code.FAILED_PRECONDITION
    # NodePublishVolume without a staging path while STAGE_UNSTAGE_VOLUME is advertised
    no_staging = c.publish_request(volume_id)
    no_staging.ClearField("staging_target_path")
    assert await code_of(c.node.NodePublishVolume(no_staging)) == Code.FAILED_PRECONDITION
    assert on_disk(c.target()) is None
    # NodeExpandVolume: a size the node cannot give is OUT_OF_RANGE; another access type INVALID_ARGUMENT
    assert await code_of(c.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=c.staging(),
        capacity_range=csi.CapacityRange(required_bytes=2 * GiB)))) == Code.OUT_OF_RANGE
    assert await code_of(c.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=c.staging(), volume_capability=block_cap()))) == Code.INVALID_ARGUMENT
    assert (await c.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=c.staging()))).capacity_bytes == GiB
    # ControllerExpandVolume below the volume's size with a limit: the range cannot be met
    assert await code_of(c.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi.CapacityRange(limit_bytes=GiB // 2)))) == Code.OUT_OF_RANGE
    # CreateVolume in a topology this plugin does not serve, and a name with a banned control character
    elsewhere = csi.TopologyRequirement(requisite=[csi.Topology(segments={"zone": "z9"})])
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="far", volume_capabilities=[mount_cap()], accessibility_requirements=elsewhere))) == \
        Code.RESOURCE_EXHAUSTED
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="bad\x07name", volume_capabilities=[mount_cap()]))) == Code.INVALID_ARGUMENT
    here = csi.TopologyRequirement(requisite=[csi.Topology(segments={
        "topology.csi.kubeharness.io/node": "node-1"})])
    assert await code_of(c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="near", volume_capabilities=[mount_cap()], accessibility_requirements=here))) == Code.OK
    listed = await c.controller.ListVolumes(csi.ListVolumesRequest())
    assert sorted(e.volume.volume_id for e in listed.entries) == sorted([volume_id, await c.create("near")])
    capacity = await c.controller.GetCapacity(csi.GetCapacityRequest(
        accessible_topology=csi.Topology(segments={"zone": "z9"})))
    assert capacity.available_capacity == 0


async def test_list_volumes_refuses_tokens_that_only_look_like_numbers(plugin: Csi) -> None:
    """Regression (found while reading the handlers for the fuzz tests): '²' passes str.isdigit, and so
    does a 5000-digit token; int() of either raised, which the client saw as INTERNAL."""
    c = plugin
    await c.create()
    for token in ("\u00b2", "9" * 5000, "\u0661", "-1", " 1"):
        assert await code_of(c.controller.ListVolumes(csi.ListVolumesRequest(starting_token=token))) == \
            Code.ABORTED, token
