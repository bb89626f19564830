"""The Controller service: creating, attaching, listing, sizing and deleting volumes.

Each call states the spec's rules where it applies them. Every call is idempotent: repeating a call that
succeeded succeeds again with the same answer and changes nothing. A second operation on a volume while
one is in flight is ABORTED (:meth:`VolumeStore.exclusive`). The checks come in the node service's order:
missing required fields (INVALID_ARGUMENT), then the volume's existence (NOT_FOUND), then the values of
the other fields.
"""

from __future__ import annotations

import re

from kubeharness.emulators.csi import capabilities as caps
from kubeharness.emulators.csi.config import TOPOLOGY_KEY, CsiConfig
from kubeharness.emulators.csi.mounts import Mounts
from kubeharness.emulators.csi.volumes import Volume, VolumeStore, volume_id_for
from kubeharness.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unimplemented,
)
from kubeharness.wire.csi import csi_pb2 as csi

RPC = csi.ControllerServiceCapability.RPC
# The spec bans these control characters in names (whitespace such as tab and newline is allowed).
BANNED_IN_NAMES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
TOKEN = re.compile("[0-9]{1,9}")
ADVERTISED = (RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY,
              RPC.PUBLISH_READONLY, RPC.EXPAND_VOLUME, RPC.LIST_VOLUMES_PUBLISHED_NODES,
              RPC.SINGLE_NODE_MULTI_WRITER)


def ours(topology: csi.Topology, config: CsiConfig) -> bool:
    """Whether ``topology`` is this plugin's one segment: its node."""
    return dict(topology.segments) == {TOPOLOGY_KEY: config.node_id}


def wire_volume(volume: Volume, config: CsiConfig) -> csi.Volume:
    return csi.Volume(volume_id=volume.id, capacity_bytes=volume.capacity_bytes, volume_context=volume.context,
                      accessible_topology=[csi.Topology(segments={TOPOLOGY_KEY: config.node_id})])


class ControllerService:
    """csi.v1.Controller over a :class:`VolumeStore`."""

    def __init__(self, config: CsiConfig, store: VolumeStore, mounts: Mounts) -> None:
        self.config = config
        self.store = store
        self.mounts = mounts

    async def CreateVolume(self, request: csi.CreateVolumeRequest) -> csi.CreateVolumeResponse:
        name = caps.require(request.name, "name")
        wanted = caps.capabilities("volume_capabilities", list(request.volume_capabilities))
        if BANNED_IN_NAMES.search(name):
            raise InvalidArgument(f"name {name!r} contains a control character the spec bans")
        if request.HasField("volume_content_source"):
            raise InvalidArgument("volume_content_source: this plugin has no snapshots or clones")
        requisite = request.accessibility_requirements.requisite
        if requisite and not any(ours(t, self.config) for t in requisite):
            # the spec: a valid topology the plugin cannot provision in is RESOURCE_EXHAUSTED
            raise ResourceExhausted(f"accessibility_requirements: this plugin provisions only in "
                                    f"{{{TOPOLOGY_KEY}: {self.config.node_id}}}")
        with self.store.exclusive(name):
            existing = self.store.find_name(name)
            budget_left = self.config.capacity_bytes - self.store.used_bytes()
            if existing is not None:
                budget_left += existing.capacity_bytes
            size = caps.size_for("capacity_range", request.capacity_range, request.HasField("capacity_range"),
                                 self.config.default_volume_bytes, budget_left, self.config.capacity_bytes)
            params = dict(request.parameters)
            if existing is not None:
                # Same name: the same volume if compatible (spec: idempotent), ALREADY_EXISTS if not.
                limit = request.capacity_range.limit_bytes
                fits = existing.capacity_bytes >= request.capacity_range.required_bytes and (
                    not limit or existing.capacity_bytes <= limit)
                if not fits or existing.parameters != params or set(existing.capabilities) != set(wanted):
                    raise AlreadyExists(f"volume {name!r} exists with a different size, parameters or capabilities")
                return csi.CreateVolumeResponse(volume=wire_volume(existing, self.config))
            volume = Volume(id=volume_id_for(name), name=name, capacity_bytes=size, parameters=params,
                            capabilities=wanted, context={"kubeharness.io/volume-name": name})
            self.store.save(volume)
            return csi.CreateVolumeResponse(volume=wire_volume(volume, self.config))

    async def DeleteVolume(self, request: csi.DeleteVolumeRequest) -> csi.DeleteVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        with self.store.exclusive(volume_id):
            volume = self.store.volumes.get(volume_id)
            if volume is None:
                return csi.DeleteVolumeResponse()  # spec: an unknown volume is already deleted
            if volume.attached or volume.staged_at or volume.published:
                raise FailedPrecondition(f"volume {volume_id!r} is in use (published to "
                                         f"{', '.join(sorted(volume.attached)) or 'this node'})")
            await self.mounts.delete(volume)
            self.store.remove(volume)
        return csi.DeleteVolumeResponse()

    def _node(self, node_id: str) -> str:
        if caps.require(node_id, "node_id") != self.config.node_id:
            raise NotFound(f"node {node_id!r} does not exist (this plugin serves {self.config.node_id!r})")
        return node_id

    async def ControllerPublishVolume(
        self, request: csi.ControllerPublishVolumeRequest
    ) -> csi.ControllerPublishVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.require(request.node_id, "node_id")
        caps.present("volume_capability", request.HasField("volume_capability"))
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            node_id = self._node(request.node_id)
            cap = caps.capability("volume_capability", request.volume_capability)
            wanted = {"readonly": request.readonly, "mode": cap.mode}
            current = volume.attached.get(node_id)
            if current is not None:
                if current != wanted:
                    raise AlreadyExists(f"volume {volume_id!r} is published to node {node_id!r} with other "
                                        "readonly or access mode")
            else:
                others = [n for n in volume.attached if n != node_id]
                if others and cap.mode in caps.SINGLE_NODE_MODES:
                    raise FailedPrecondition(f"volume {volume_id!r} is published to node {others[0]!r} and its "
                                             "access mode allows one node")
                limit = self.config.max_volumes_per_node
                on_node = sum(1 for v in self.store.volumes.values() if node_id in v.attached)
                if limit and on_node >= limit:
                    raise ResourceExhausted(f"node {node_id!r} has its maximum of {limit} volumes")
                volume.attached[node_id] = wanted
                self.store.save(volume)
        return csi.ControllerPublishVolumeResponse(publish_context={"kubeharness.io/attached-to": node_id})

    async def ControllerUnpublishVolume(
        self, request: csi.ControllerUnpublishVolumeRequest
    ) -> csi.ControllerUnpublishVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        with self.store.exclusive(volume_id):
            volume = self.store.volumes.get(volume_id)
            if volume is None:
                # the spec: a volume that cannot be found can safely be regarded as unpublished
                return csi.ControllerUnpublishVolumeResponse()
            nodes = [request.node_id] if request.node_id else list(volume.attached)  # empty: from every node
            if any(volume.attached.pop(n, None) is not None for n in nodes):
                self.store.save(volume)
        return csi.ControllerUnpublishVolumeResponse()

    async def ValidateVolumeCapabilities(
        self, request: csi.ValidateVolumeCapabilitiesRequest
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise InvalidArgument("volume_capabilities is required")
        volume = self.store.get(volume_id)
        caps.capabilities("volume_capabilities", list(request.volume_capabilities))
        if dict(request.parameters) and dict(request.parameters) != volume.parameters:
            return csi.ValidateVolumeCapabilitiesResponse(message="parameters differ from the volume's")
        confirmed = csi.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return csi.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    async def ListVolumes(self, request: csi.ListVolumesRequest) -> csi.ListVolumesResponse:
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        ids = sorted(self.store.volumes)
        start = 0
        if request.starting_token:
            if not TOKEN.fullmatch(request.starting_token) or int(request.starting_token) > len(ids):
                raise Aborted(f"starting_token {request.starting_token!r} is not one this plugin gave")
            start = int(request.starting_token)
        end = len(ids) if not request.max_entries else min(len(ids), start + request.max_entries)
        entries = []
        for volume_id in ids[start:end]:
            volume = self.store.volumes[volume_id]
            status = csi.ListVolumesResponse.VolumeStatus(published_node_ids=sorted(volume.attached))
            entries.append(csi.ListVolumesResponse.Entry(volume=wire_volume(volume, self.config), status=status))
        return csi.ListVolumesResponse(entries=entries, next_token=str(end) if end < len(ids) else "")

    async def GetCapacity(self, request: csi.GetCapacityRequest) -> csi.GetCapacityResponse:
        for i, cap in enumerate(request.volume_capabilities):
            caps.capability(f"volume_capabilities[{i}]", cap)
        left = max(0, self.config.capacity_bytes - self.store.used_bytes())
        if request.HasField("accessible_topology") and not ours(request.accessible_topology, self.config):
            left = 0  # nothing can be provisioned in a topology that is not this plugin's
        response = csi.GetCapacityResponse(available_capacity=left)
        response.maximum_volume_size.value = self.config.capacity_bytes
        return response

    async def ControllerGetCapabilities(
        self, request: csi.ControllerGetCapabilitiesRequest
    ) -> csi.ControllerGetCapabilitiesResponse:
        return csi.ControllerGetCapabilitiesResponse(capabilities=[
            csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapability.RPC(type=kind))
            for kind in ADVERTISED])

    async def ControllerExpandVolume(
        self, request: csi.ControllerExpandVolumeRequest
    ) -> csi.ControllerExpandVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.present("capacity_range", request.HasField("capacity_range"))
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            if request.HasField("volume_capability"):
                cap = caps.capability("volume_capability", request.volume_capability)
                if volume.capabilities and cap not in volume.capabilities and (cap.access_type, cap.mode) not in {
                        (c.access_type, c.mode) for c in volume.capabilities}:
                    raise InvalidArgument(f"volume_capability: volume {volume_id!r} was not created for "
                                          f"{cap.access_type} access with mode {cap.mode}")
            limit = request.capacity_range.limit_bytes
            if 0 < limit < volume.capacity_bytes and request.capacity_range.required_bytes <= limit:
                raise OutOfRange(f"capacity_range: volume {volume_id!r} is already {volume.capacity_bytes} bytes, "
                                 f"more than limit_bytes {limit} (volumes do not shrink)")
            left = self.config.capacity_bytes - self.store.used_bytes() + volume.capacity_bytes
            size = caps.size_for("capacity_range", request.capacity_range, True, volume.capacity_bytes, left,
                                 self.config.capacity_bytes)
            if size > volume.capacity_bytes:  # never shrinks: a smaller request is already satisfied
                volume.capacity_bytes = size
                self.store.save(volume)
        return csi.ControllerExpandVolumeResponse(capacity_bytes=volume.capacity_bytes,
                                                  node_expansion_required=True)

    # Not advertised: the spec's answer for an RPC a plugin does not offer is UNIMPLEMENTED.

    async def CreateSnapshot(self, request: csi.CreateSnapshotRequest) -> csi.CreateSnapshotResponse:
        raise Unimplemented("CreateSnapshot: this plugin does not advertise CREATE_DELETE_SNAPSHOT")

    async def DeleteSnapshot(self, request: csi.DeleteSnapshotRequest) -> csi.DeleteSnapshotResponse:
        raise Unimplemented("DeleteSnapshot: this plugin does not advertise CREATE_DELETE_SNAPSHOT")

    async def ListSnapshots(self, request: csi.ListSnapshotsRequest) -> csi.ListSnapshotsResponse:
        raise Unimplemented("ListSnapshots: this plugin does not advertise LIST_SNAPSHOTS")

    async def GetSnapshot(self, request: csi.GetSnapshotRequest) -> csi.GetSnapshotResponse:
        raise Unimplemented("GetSnapshot: this plugin does not advertise GET_SNAPSHOT")

    async def ControllerGetVolume(self, request: csi.ControllerGetVolumeRequest) -> csi.ControllerGetVolumeResponse:
        raise Unimplemented("ControllerGetVolume: this plugin does not advertise GET_VOLUME")

    async def ControllerModifyVolume(
        self, request: csi.ControllerModifyVolumeRequest
    ) -> csi.ControllerModifyVolumeResponse:
        raise Unimplemented("ControllerModifyVolume: this plugin does not advertise MODIFY_VOLUME")
