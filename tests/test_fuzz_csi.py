"""Generated requests for every CSI RPC against the CSI emulator on a real unix socket, between valid lifecycles.

The RPCs are enumerated from ``kubeharness.wire.csi``'s descriptors (Identity, Controller, Node and the
GroupController and SnapshotMetadata services the emulator does not serve); requests come from
``tests/protofuzz.py`` with the ids and paths that matter drawn from the live volumes, the plugin's own
paths, hostile paths and a symlink inside the root that points outside it. Each example starts a fresh
plugin (in-process, real gRPC on a real socket), runs a few steps, and after every step checks:

- no call is answered INTERNAL or UNKNOWN (the spec names neither for any condition; unserved services
  and unadvertised RPCs are UNIMPLEMENTED);
- ListVolumes, paged two at a time, lists every volume once; GetCapacity agrees with their sizes; every
  volume the valid steps created is listed until they delete it; a CreateVolume that failed left no volume;
- NodeGetVolumeStats answers for every path a volume is staged or published at, and those paths exist;
- nothing exists under the test's directory outside the state directory and the configured root, and the
  directory the symlink points to stays empty.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st

from kubeharness.emulators.csi.config import CsiConfig
from kubeharness.emulators.csi.server import CsiServer
from kubeharness.emulators.csi.volumes import volume_id_for
from kubeharness.wire.csi import csi_pb2 as csi
from tests.protofuzz import hostile_paths, hostile_strings, message_strategy

GiB = 1024**3
Mode = csi.VolumeCapability.AccessMode
SERVED = ("Identity", "Controller", "Node")
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

# Every RPC of every service in the wire definitions: (service, method, request class, server streaming).
RPCS: list[tuple[str, str, type[Message], bool]] = [
    (service.name, method.name, message_factory.GetMessageClass(method.input_type), method.server_streaming)
    for service in csi.DESCRIPTOR.services_by_name.values() for method in service.methods]


DELETE = next(i for i, r in enumerate(RPCS) if r[1] == "DeleteVolume")
ID_V1 = volume_id_for("v1")


def test_every_rpc_of_the_wire_definitions_is_fuzzed() -> None:
    """The table above is the whole of csi.proto, and the plugin serves the three services CSI requires."""
    listed = {(s, m) for s, m, _, _ in RPCS}
    declared = {(s.name, m.name) for s in csi.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert listed == declared and len(listed) == len(RPCS)
    assert set(csi.DESCRIPTOR.services_by_name) == {*SERVED, "GroupController", "SnapshotMetadata"}
    assert len([r for r in RPCS if r[0] in SERVED]) == 3 + 15 + 8


@dataclass
class Places:
    """The fixed directories of one test: the kubelet root the plugin may use, and an outside one."""

    base: Path

    @property
    def kubelet(self) -> Path:
        return self.base / "kubelet"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    @property
    def sockets(self) -> Path:
        return self.base / "s"

    def staging(self, name: str) -> str:
        return str(self.kubelet / "plugins" / "csi" / name / "globalmount")

    def target(self, name: str, pod: str = "p") -> str:
        return str(self.kubelet / "pods" / pod / "volumes" / name / "mount")

    def escape(self) -> str:
        """A path inside the root that walks through a symlink to the outside directory."""
        return str(self.kubelet / "pods" / "evil" / "volumes" / "v" / "mount")


NAMES = ("v1", "v2")


def mount_cap(mode: int = Mode.SINGLE_NODE_WRITER) -> csi.VolumeCapability:
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                                access_mode=Mode(mode=mode))  # type: ignore[arg-type]


def overrides(places: Places, ids: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    paths = st.one_of(st.sampled_from([places.staging(n) for n in NAMES] + [places.target(n) for n in NAMES]
                                      + [places.escape(), str(places.outside / "x"), str(places.kubelet)]),
                      hostile_paths())
    return {
        "volume_id": st.one_of(st.sampled_from(ids), hostile_strings()),
        "source_volume_id": st.one_of(st.sampled_from(ids), hostile_strings()),
        "name": st.one_of(st.sampled_from([*NAMES, "fz"]), hostile_strings()),
        "node_id": st.sampled_from(["node-1", "", "elsewhere", "\x00"]),
        "staging_target_path": paths, "target_path": paths, "volume_path": paths,
    }


Step = tuple[str, Any]


@st.composite
def plans(draw: st.DrawFn, places: Places) -> list[Step]:

    ids = [volume_id_for(n) for n in NAMES]
    table = overrides(places, ids)
    out: list[Step] = []
    for _ in range(draw(st.integers(min_value=2, max_value=6))):
        if draw(st.booleans()):
            out.append(("valid", (draw(st.sampled_from(["create", "attach", "stage", "publish", "unpublish",
                                                        "unstage", "detach", "delete"])),
                                  draw(st.sampled_from(NAMES)))))
        else:
            index = draw(st.integers(min_value=0, max_value=len(RPCS) - 1))
            request = draw(message_strategy(RPCS[index][2], overrides=table, max_depth=3, max_size=2))
            out.append(("fuzz", (index, request)))
    return out


@dataclass
class World:
    places: Places
    server: CsiServer
    channel: grpc.aio.Channel
    created: set[str] = field(default_factory=set)  # volume ids the valid steps created and did not delete

    def call(self, service: str, method: str, streaming: bool = False) -> Callable[..., Any]:
        path = f"/csi.v1.{service}/{method}"
        factory = self.channel.unary_stream if streaming else self.channel.unary_unary
        return factory(path, request_serializer=lambda m: m.SerializeToString(),
                       response_deserializer=lambda b: b)


async def code_of(world: World, service: str, method: str, request: Message, streaming: bool = False) \
        -> grpc.StatusCode:
    try:
        if streaming:
            async for _ in world.call(service, method, True)(request, timeout=30):
                pass
        else:
            await world.call(service, method)(request, timeout=30)
    except grpc.aio.AioRpcError as err:
        assert err.code() not in NEVER, (service, method, err.code(), err.details())
        return err.code()
    return grpc.StatusCode.OK


async def valid(world: World, action: str, name: str) -> None:

    p, vid, cap = world.places, volume_id_for(name), mount_cap()
    requests: dict[str, tuple[str, str, Message]] = {
        "create": ("Controller", "CreateVolume", csi.CreateVolumeRequest(
            name=name, capacity_range=csi.CapacityRange(required_bytes=GiB), volume_capabilities=[cap])),
        "attach": ("Controller", "ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="node-1", volume_capability=cap)),
        "stage": ("Node", "NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=p.staging(name), volume_capability=cap)),
        "publish": ("Node", "NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=p.staging(name), target_path=p.target(name), volume_capability=cap)),
        "unpublish": ("Node", "NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=p.target(name))),
        "unstage": ("Node", "NodeUnstageVolume", csi.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=p.staging(name))),
        "detach": ("Controller", "ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(
            volume_id=vid, node_id="node-1")),
        "delete": ("Controller", "DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid)),
    }
    service, method, request = requests[action]
    code = await code_of(world, service, method, request)
    exists = vid in world.server.store.volumes
    if action == "create" and code == grpc.StatusCode.OK:
        world.created.add(vid)
    if action == "delete" and code == grpc.StatusCode.OK:
        assert not exists
        world.created.discard(vid)
    if action in ("unpublish", "detach") and exists:
        assert code == grpc.StatusCode.OK, (action, code)  # nothing a valid undo can be refused for here
    if action == "unstage" and exists and not world.server.store.volumes[vid].published:
        assert code == grpc.StatusCode.OK, (action, code)


def missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.lexists(path)]


async def check(world: World) -> None:
    """The invariants that hold after every step."""
    listed: list[csi.ListVolumesResponse.Entry] = []
    token = ""
    while True:
        page = csi.ListVolumesResponse.FromString(await world.call("Controller", "ListVolumes")(
            csi.ListVolumesRequest(max_entries=2, starting_token=token), timeout=30))
        listed += page.entries
        token = page.next_token
        if not token:
            break
    ids = [e.volume.volume_id for e in listed]
    assert len(ids) == len(set(ids)), ids
    assert set(ids) == set(world.server.store.volumes) and world.created <= set(ids), (ids, world.created)
    capacity = csi.GetCapacityResponse.FromString(await world.call("Controller", "GetCapacity")(
        csi.GetCapacityRequest(), timeout=30))
    assert capacity.available_capacity == world.server.config.capacity_bytes - sum(
        e.volume.capacity_bytes for e in listed)
    for volume in world.server.store.volumes.values():
        assert not volume.published or volume.staged_at, volume  # published means staged (STAGE_UNSTAGE)
        assert not volume.staged_at or "node-1" in volume.attached, volume
        paths = [*volume.published, *([volume.staged_at] if volume.staged_at else [])]
        assert missing(paths) == [], volume
        for path in paths:
            assert await code_of(world, "Node", "NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(
                volume_id=volume.id, volume_path=path)) == grpc.StatusCode.OK, path
    base = world.places.base
    assert sorted(os.listdir(base)) == ["kubelet", "outside", "s", "state"], os.listdir(base)
    assert os.listdir(world.places.outside) == [], os.listdir(world.places.outside)


async def run_plan(places: Places, plan: list[Step]) -> None:
    for path in (places.kubelet, places.outside, places.base / "state"):
        shutil.rmtree(path, ignore_errors=True)
    (places.kubelet / "pods").mkdir(parents=True)
    places.outside.mkdir()
    os.symlink(places.outside, places.kubelet / "pods" / "evil")
    config = CsiConfig(node_id="node-1", roots=[str(places.kubelet)], capacity_bytes=10 * GiB)
    server = CsiServer(f"unix://{places.sockets / 'csi.sock'}", places.base / "state", config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{places.sockets / 'csi.sock'}")
    world = World(places, server, channel)
    try:
        for kind, what in plan:
            if kind == "valid":
                await valid(world, *what)
            else:
                index, request = what
                service, method, _, streaming = RPCS[index]
                name = getattr(request, "name", "") if method == "CreateVolume" else ""
                existed = world.server.store.find_name(name) is not None
                code = await code_of(world, service, method, request, streaming)
                if service not in SERVED:
                    assert code == grpc.StatusCode.UNIMPLEMENTED, (service, method, code)
                if method == "CreateVolume" and code != grpc.StatusCode.OK and not existed:
                    assert world.server.store.find_name(name) is None, "a failed CreateVolume left a volume"
                if method == "DeleteVolume" and code == grpc.StatusCode.OK:  # a generated request may be valid
                    world.created.discard(request.volume_id)
            await check(world)
    finally:
        await channel.close(None)
        await server.stop(grace=0)


def test_generated_requests_for_every_rpc_keep_the_plugin_consistent() -> None:
    with tempfile.TemporaryDirectory(prefix="khfzcsi-") as tmp:  # short: the socket path has a length limit
        places = Places(Path(tmp))
        places.sockets.mkdir()
        loop = asyncio.new_event_loop()

        @example(plan=[("valid", ("create", "v1")), ("fuzz", (DELETE, csi.DeleteVolumeRequest(volume_id=ID_V1)))])
        @given(plan=plans(places))
        def run(plan: list[Step]) -> None:
            loop.run_until_complete(run_plan(places, plan))

        try:
            run()
        finally:
            loop.close()
