"""The Node service: staging, publishing, statistics and expansion of volumes on this node.

Rules from the spec, applied here: every call is idempotent. The checks come in one order: a missing
required field (volume id, path, capability) is INVALID_ARGUMENT; then the volume is looked up (an
unknown one is NOT_FOUND, whatever its paths look like); then the fields' values are judged: a path
outside the plugin's roots, or with ``..``, or a malformed capability is INVALID_ARGUMENT before anything
is touched (:mod:`.paths`). NodeGetVolumeStats and NodeExpandVolume only read what the store records, so
for them a path where the volume is neither staged nor published is NOT_FOUND, however odd it is (the
spec's "does not exist on the specified volume_path"). This plugin advertises STAGE_UNSTAGE_VOLUME, so
publishing without a staging path, or a volume that is not staged (or staged elsewhere), is
FAILED_PRECONDITION, as is staging a volume the controller has not published to this node, staging or
publishing with a capability (access type and mode) the volume was not created with (the spec's
"exceeds capabilities"), publishing a single-writer volume read-write at a second target, and unstaging
while targets are still published. Re-staging or re-publishing at the same path with another capability
or readonly is ALREADY_EXISTS. Unpublishing removes the target path.
"""

from __future__ import annotations

import os

from kubeharness.emulators.csi import capabilities as caps
from kubeharness.emulators.csi.config import TOPOLOGY_KEY, CsiConfig
from kubeharness.emulators.csi.mounts import Mounts
from kubeharness.emulators.csi.paths import PathPolicy
from kubeharness.emulators.csi.volumes import Capability, Published, Volume, VolumeStore
from kubeharness.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from kubeharness.wire.csi import csi_pb2 as csi

NodeRPC = csi.NodeServiceCapability.RPC
ADVERTISED = (NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.EXPAND_VOLUME,
              NodeRPC.VOLUME_CONDITION, NodeRPC.SINGLE_NODE_MULTI_WRITER)
Usage = csi.VolumeUsage


def _statvfs(path: str) -> os.statvfs_result | None:
    try:
        return os.statvfs(path)
    except OSError:
        return None


def _supported(volume: Volume, cap: Capability) -> None:
    """FAILED_PRECONDITION unless the volume was created for this access type and mode."""
    offered = {(c.access_type, c.mode) for c in volume.capabilities}
    if offered and (cap.access_type, cap.mode) not in offered:
        raise FailedPrecondition(f"volume {volume.id!r} was not created for {cap.access_type} access with mode "
                                 f"{cap.mode}: the capability exceeds the volume's")


class NodeService:
    """csi.v1.Node for the node ``config.node_id``."""

    def __init__(self, config: CsiConfig, store: VolumeStore, mounts: Mounts, paths: PathPolicy) -> None:
        self.config = config
        self.store = store
        self.mounts = mounts
        self.paths = paths
        # volume id -> message: volumes reported abnormal by NodeGetVolumeStats (set by a fault or a test)
        self.abnormal: dict[str, str] = {}

    async def NodeStageVolume(self, request: csi.NodeStageVolumeRequest) -> csi.NodeStageVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.require(request.staging_target_path, "staging_target_path")
        caps.present("volume_capability", request.HasField("volume_capability"))
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            path = self.paths.check("staging_target_path", request.staging_target_path)
            cap = caps.capability("volume_capability", request.volume_capability)
            if volume.staged_at:
                if volume.staged_at != path or volume.staged_capability != cap:
                    raise AlreadyExists(f"volume {volume_id!r} is staged at {volume.staged_at!r} with its own "
                                        "capability; unstage it first")
                return csi.NodeStageVolumeResponse()
            if self.config.node_id not in volume.attached:
                raise FailedPrecondition(f"volume {volume_id!r} is not published to node {self.config.node_id!r}: "
                                         "ControllerPublishVolume first")
            _supported(volume, cap)
            await self.mounts.stage(volume, path, cap)
            volume.staged_at, volume.staged_capability = path, cap
            self.store.save(volume)
        return csi.NodeStageVolumeResponse()

    async def NodeUnstageVolume(self, request: csi.NodeUnstageVolumeRequest) -> csi.NodeUnstageVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.require(request.staging_target_path, "staging_target_path")
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            path = self.paths.check("staging_target_path", request.staging_target_path)
            if volume.staged_at != path:
                return csi.NodeUnstageVolumeResponse()  # not staged there: nothing to undo
            if volume.published:
                raise FailedPrecondition(f"volume {volume_id!r} is still published at "
                                         f"{', '.join(sorted(volume.published))}: unpublish it first")
            await self.mounts.unstage(volume, path)
            volume.staged_at, volume.staged_capability = "", None
            self.store.save(volume)
        return csi.NodeUnstageVolumeResponse()

    async def NodePublishVolume(self, request: csi.NodePublishVolumeRequest) -> csi.NodePublishVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.require(request.target_path, "target_path")
        caps.present("volume_capability", request.HasField("volume_capability"))
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            target = self.paths.check("target_path", request.target_path)
            cap = caps.capability("volume_capability", request.volume_capability)
            readonly = request.readonly or cap.mode in caps.READ_ONLY_MODES
            if not request.staging_target_path:  # the spec's "staging target path not set"
                raise FailedPrecondition("staging_target_path is required: this plugin advertises "
                                         "STAGE_UNSTAGE_VOLUME, NodeStageVolume first")
            staging = self.paths.check("staging_target_path", request.staging_target_path)
            current = volume.published.get(target)
            if current is not None:
                if current.readonly != readonly or current.capability != cap:
                    raise AlreadyExists(f"volume {volume_id!r} is published at {target!r} with another "
                                        "capability or readonly")
                return csi.NodePublishVolumeResponse()
            if volume.staged_at != staging:
                where = f"staged at {volume.staged_at!r}" if volume.staged_at else "not staged"
                raise FailedPrecondition(f"volume {volume_id!r} is {where}: NodeStageVolume at {staging!r} first")
            _supported(volume, cap)
            writers = [t for t, p in volume.published.items() if not p.readonly]
            if not readonly and writers and cap.mode in caps.ONE_WRITER_MODES:
                raise FailedPrecondition(f"volume {volume_id!r} is published read-write at {writers[0]!r} and its "
                                         "access mode allows one writer")
            await self.mounts.publish(volume, staging, target, readonly, cap)
            volume.published[target] = Published(target, readonly, cap)
            self.store.save(volume)
        return csi.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(self, request: csi.NodeUnpublishVolumeRequest) -> csi.NodeUnpublishVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        caps.require(request.target_path, "target_path")
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            target = self.paths.check("target_path", request.target_path)
            if target in volume.published:
                await self.mounts.unpublish(volume, target)
                del volume.published[target]
                self.store.save(volume)
        return csi.NodeUnpublishVolumeResponse()

    def _mounted_at(self, volume_id: str, path: str) -> tuple[Volume, str]:
        """The volume and its recorded path, if it is published or staged at ``path``; NOT_FOUND otherwise
        (an unknown volume first, then a path it is not at, whatever the path looks like). Only a path the
        store records (one the path policy accepted at stage or publish) is returned, so nothing else is read.
        """
        volume = self.store.get(volume_id)
        recorded = {*volume.published, *([volume.staged_at] if volume.staged_at else [])}
        plain = path.startswith("/") and "\x00" not in path and ".." not in path.split("/")
        normal = os.path.normpath(path) if plain else path
        if normal not in recorded:
            raise NotFound(f"volume {volume_id!r} is not published or staged at {path!r}")
        return volume, normal

    async def NodeGetVolumeStats(self, request: csi.NodeGetVolumeStatsRequest) -> csi.NodeGetVolumeStatsResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        volume, path = self._mounted_at(volume_id, caps.require(request.volume_path, "volume_path"))
        st = _statvfs(path) if self.mounts.real else None
        if st is not None:
            total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            usage = [Usage(unit=Usage.BYTES, total=total, available=free, used=total - st.f_bfree * st.f_frsize),
                     Usage(unit=Usage.INODES, total=st.f_files, available=st.f_favail, used=st.f_files - st.f_ffree)]
        else:
            used = min(self.config.used_bytes, volume.capacity_bytes)
            usage = [Usage(unit=Usage.BYTES, total=volume.capacity_bytes, used=used,
                           available=volume.capacity_bytes - used),
                     Usage(unit=Usage.INODES, total=self.config.inodes, used=self.config.used_inodes,
                           available=self.config.inodes - self.config.used_inodes)]
        message = self.abnormal.get(volume_id)
        condition = csi.VolumeCondition(abnormal=message is not None, message=message or "volume is healthy")
        return csi.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    async def NodeExpandVolume(self, request: csi.NodeExpandVolumeRequest) -> csi.NodeExpandVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        volume, _ = self._mounted_at(volume_id, caps.require(request.volume_path, "volume_path"))
        if request.HasField("volume_capability"):  # the spec's "exceeds capabilities" here is INVALID_ARGUMENT
            cap = caps.capability("volume_capability", request.volume_capability)
            try:
                _supported(volume, cap)
            except FailedPrecondition as err:
                raise InvalidArgument(err.message) from None
        wanted = request.capacity_range
        if wanted.required_bytes < 0 or wanted.limit_bytes < 0:
            raise InvalidArgument("capacity_range: sizes must not be negative")
        if wanted.limit_bytes and wanted.required_bytes > wanted.limit_bytes:
            raise InvalidArgument(f"capacity_range: required_bytes {wanted.required_bytes} exceeds limit_bytes "
                                  f"{wanted.limit_bytes}")
        if wanted.required_bytes > volume.capacity_bytes or 0 < wanted.limit_bytes < volume.capacity_bytes:
            raise OutOfRange(f"capacity_range: volume {volume_id!r} is {volume.capacity_bytes} bytes "
                             "(ControllerExpandVolume changes its size)")
        return csi.NodeExpandVolumeResponse(capacity_bytes=volume.capacity_bytes)

    async def NodeGetCapabilities(self, request: csi.NodeGetCapabilitiesRequest) -> csi.NodeGetCapabilitiesResponse:
        return csi.NodeGetCapabilitiesResponse(capabilities=[
            csi.NodeServiceCapability(rpc=NodeRPC(type=kind)) for kind in ADVERTISED])

    async def NodeGetInfo(self, request: csi.NodeGetInfoRequest) -> csi.NodeGetInfoResponse:
        return csi.NodeGetInfoResponse(
            node_id=self.config.node_id, max_volumes_per_node=self.config.max_volumes_per_node,
            accessible_topology=csi.Topology(segments={TOPOLOGY_KEY: self.config.node_id}))
