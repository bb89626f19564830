"""The Node service: staging, publishing, statistics and expansion of volumes on this node.

Rules from the spec, applied here: every call is idempotent; a missing volume id, path or capability is
INVALID_ARGUMENT; an unknown volume NOT_FOUND; a path outside the plugin's roots, or with ``..``,
INVALID_ARGUMENT before anything is touched (:mod:`.paths`). This plugin advertises STAGE_UNSTAGE_VOLUME,
so publishing a volume that is not staged (or staged elsewhere) is FAILED_PRECONDITION, as is staging a
volume the controller has not published to this node, publishing a single-writer volume read-write at a
second target, and unstaging while targets are still published. Re-staging or re-publishing at the same
path with another capability or readonly is ALREADY_EXISTS. Unpublishing removes the target path.
"""

from __future__ import annotations

import os

from kubeharness.emulators.csi import capabilities as caps
from kubeharness.emulators.csi.config import TOPOLOGY_KEY, CsiConfig
from kubeharness.emulators.csi.mounts import Mounts
from kubeharness.emulators.csi.paths import PathPolicy
from kubeharness.emulators.csi.volumes import Published, Volume, VolumeStore
from kubeharness.errors import AlreadyExists, FailedPrecondition, NotFound
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
        path = self.paths.check("staging_target_path", request.staging_target_path)
        cap = caps.capability("volume_capability", request.volume_capability, request.HasField("volume_capability"))
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            if volume.staged_at:
                if volume.staged_at != path or volume.staged_capability != cap:
                    raise AlreadyExists(f"volume {volume_id!r} is staged at {volume.staged_at!r} with its own "
                                        "capability; unstage it first")
                return csi.NodeStageVolumeResponse()
            if self.config.node_id not in volume.attached:
                raise FailedPrecondition(f"volume {volume_id!r} is not published to node {self.config.node_id!r}: "
                                         "ControllerPublishVolume first")
            await self.mounts.stage(volume, path, cap)
            volume.staged_at, volume.staged_capability = path, cap
            self.store.save(volume)
        return csi.NodeStageVolumeResponse()

    async def NodeUnstageVolume(self, request: csi.NodeUnstageVolumeRequest) -> csi.NodeUnstageVolumeResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        path = self.paths.check("staging_target_path", request.staging_target_path)
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
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
        staging = self.paths.check("staging_target_path", request.staging_target_path)
        target = self.paths.check("target_path", request.target_path)
        cap = caps.capability("volume_capability", request.volume_capability, request.HasField("volume_capability"))
        readonly = request.readonly or cap.mode in caps.READ_ONLY_MODES
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            current = volume.published.get(target)
            if current is not None:
                if current.readonly != readonly or current.capability != cap:
                    raise AlreadyExists(f"volume {volume_id!r} is published at {target!r} with another "
                                        "capability or readonly")
                return csi.NodePublishVolumeResponse()
            if volume.staged_at != staging:
                where = f"staged at {volume.staged_at!r}" if volume.staged_at else "not staged"
                raise FailedPrecondition(f"volume {volume_id!r} is {where}: NodeStageVolume at {staging!r} first")
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
        target = self.paths.check("target_path", request.target_path)
        with self.store.exclusive(volume_id):
            volume = self.store.get(volume_id)
            if target in volume.published:
                await self.mounts.unpublish(volume, target)
                del volume.published[target]
                self.store.save(volume)
        return csi.NodeUnpublishVolumeResponse()

    def _mounted_at(self, volume_id: str, path: str) -> Volume:
        """The volume, if it is published or staged at ``path``; NOT_FOUND otherwise."""
        volume = self.store.get(volume_id)
        if path not in volume.published and path != volume.staged_at:
            raise NotFound(f"volume {volume_id!r} is not published or staged at {path!r}")
        return volume

    async def NodeGetVolumeStats(self, request: csi.NodeGetVolumeStatsRequest) -> csi.NodeGetVolumeStatsResponse:
        volume_id = caps.require(request.volume_id, "volume_id")
        path = self.paths.check("volume_path", request.volume_path)
        volume = self._mounted_at(volume_id, path)
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
        path = self.paths.check("volume_path", request.volume_path)
        volume = self._mounted_at(volume_id, path)
        wanted = request.capacity_range.required_bytes
        if wanted > volume.capacity_bytes:
            raise FailedPrecondition(f"volume {volume_id!r} is {volume.capacity_bytes} bytes; "
                                     "ControllerExpandVolume it first")
        return csi.NodeExpandVolumeResponse(capacity_bytes=volume.capacity_bytes)

    async def NodeGetCapabilities(self, request: csi.NodeGetCapabilitiesRequest) -> csi.NodeGetCapabilitiesResponse:
        return csi.NodeGetCapabilitiesResponse(capabilities=[
            csi.NodeServiceCapability(rpc=NodeRPC(type=kind)) for kind in ADVERTISED])

    async def NodeGetInfo(self, request: csi.NodeGetInfoRequest) -> csi.NodeGetInfoResponse:
        return csi.NodeGetInfoResponse(
            node_id=self.config.node_id, max_volumes_per_node=self.config.max_volumes_per_node,
            accessible_topology=csi.Topology(segments={TOPOLOGY_KEY: self.config.node_id}))
