"""A CSI workload for :mod:`.torture`: volume lifecycles through Controller and Node, and the check of what survived.

Each lifecycle creates a volume, publishes it to the node (ControllerPublishVolume), stages it, publishes it
at a target path, then undoes all of it in reverse and deletes it; it ends at a stage drawn from the
worker's seeded random source. Every CSI call is idempotent by the spec, so an in-doubt call is repeated
until acknowledged, and the ledger knows exactly what the plugin must show. :func:`check` compares:

- ListVolumes holds exactly the volumes not acknowledged deleted, each once, attached to the node exactly
  when acknowledged so;
- NodeGetVolumeStats answers at the staging path exactly when staged, at the target exactly when published;
- everything can be undone and deleted afterwards, leaving ListVolumes empty.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeharness.testing.torture import CALL_OPTIONS, CALL_TIMEOUT_S, CHANNEL_OPTIONS, Torture, duplicates
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc

Mode = csi.VolumeCapability.AccessMode
CAPABILITY = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                                  access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
STAGES = ("created", "attached", "staged", "published", "unpublished", "unstaged", "detached", "deleted")
WEIGHTS = (1, 1, 1, 2, 1, 1, 1, 8)


@dataclass
class Expected:
    """What the plugin must show for one volume."""

    volume_id: str
    attached: bool = False
    staged: bool = False
    published: bool = False


class CsiWorkload:
    """Volume lifecycles on one CSI endpoint for ``node_id``, with paths below ``root`` (which the plugin
    must accept as a kubelet directory)."""

    def __init__(self, torture: Torture, endpoint: str, node_id: str, root: Path) -> None:
        self.torture = torture
        self.node_id = node_id
        self.root = root
        self.expected: dict[str, Expected] = {}
        self._channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self.controller = csi_grpc.ControllerStub(self._channel)
        self.node = csi_grpc.NodeStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    def staging(self, name: str) -> str:
        return str(self.root / "plugins" / "torture" / "globalmount" / name)

    def target(self, name: str) -> str:
        return str(self.root / "pods" / name / "volumes" / "mount")

    async def worker(self, index: int) -> None:
        rng = self.torture.worker_rng(index)
        n = 0
        while not self.torture.stopping:
            await self.lifecycle(f"w{index}-{n}", rng)
            n += 1

    async def lifecycle(self, name: str, rng: random.Random) -> None:
        end = STAGES.index(rng.choices(STAGES, WEIGHTS)[0])
        t, ctl, node = self.torture, self.controller, self.node
        opts = CALL_OPTIONS
        created = await t.settle(lambda: ctl.CreateVolume(csi.CreateVolumeRequest(
            name=name, volume_capabilities=[CAPABILITY],
            capacity_range=csi.CapacityRange(required_bytes=1 << 20)), **opts))
        volume_id = created.volume.volume_id
        exp = self.expected[name] = Expected(volume_id)
        steps: list[tuple[Callable[[], Awaitable[object]], str, bool]] = [
            (lambda: ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.node_id, volume_capability=CAPABILITY), **opts), "attached", True),
            (lambda: node.NodeStageVolume(csi.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=self.staging(name), volume_capability=CAPABILITY,
                publish_context={"kubeharness.io/attached-to": self.node_id}), **opts), "staged", True),
            (lambda: node.NodePublishVolume(csi.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=self.staging(name), target_path=self.target(name),
                volume_capability=CAPABILITY), **opts), "published", True),
            (lambda: node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
                volume_id=volume_id, target_path=self.target(name)), **opts), "published", False),
            (lambda: node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=self.staging(name)), **opts), "staged", False),
            (lambda: ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
                volume_id=volume_id, node_id=self.node_id), **opts), "attached", False),
            (lambda: ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id), **opts), "", False),
        ]
        for stage, (rpc, what, value) in enumerate(steps, start=1):
            if stage > end:
                break
            await t.settle(rpc)
            if what:
                setattr(exp, what, value)
            else:
                del self.expected[name]
        t.report.lifecycles += 1

    async def _listed(self) -> list[csi.ListVolumesResponse.Entry]:
        entries: list[csi.ListVolumesResponse.Entry] = []
        token = ""
        while True:
            page = await self.controller.ListVolumes(csi.ListVolumesRequest(starting_token=token),
                                                     timeout=CALL_TIMEOUT_S, wait_for_ready=True)
            entries.extend(page.entries)
            token = page.next_token
            if not token:
                return entries

    async def _mounted(self, volume_id: str, path: str) -> bool:
        try:
            await self.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path),
                                               timeout=CALL_TIMEOUT_S, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def check(self) -> list[str]:
        """Compare what the plugin shows with the ledger; then undo and delete everything."""
        problems: list[str] = []
        entries = await self._listed()
        ids = [e.volume.volume_id for e in entries]
        problems += [f"volume {v} is listed twice" for v in duplicates(ids)]
        by_id = {e.volume.volume_id: e for e in entries}
        wanted = {exp.volume_id: name for name, exp in self.expected.items()}
        problems += [f"volume {v} is listed, but no lifecycle has it (deleted, or never created)"
                     for v in ids if v not in wanted]
        for name, exp in sorted(self.expected.items()):
            entry = by_id.get(exp.volume_id)
            if entry is None:
                problems.append(f"{name}: acknowledged volume {exp.volume_id} is gone")
                continue
            attached = self.node_id in entry.status.published_node_ids
            if attached != exp.attached:
                problems.append(f"{name}: published to the node is {attached}, acknowledged {exp.attached}")
            for what, path, want in (("staged", self.staging(name), exp.staged),
                                     ("published", self.target(name), exp.published)):
                if await self._mounted(exp.volume_id, path) != want:
                    problems.append(f"{name}: {what} is {not want}, acknowledged {want}")
            if os.path.exists(self.target(name)) != exp.published:  # noqa: ASYNC240 (one stat)
                problems.append(f"{name}: the target path exists is {not exp.published}, "
                                f"acknowledged published {exp.published}")
        problems += await self._delete_everything()
        return problems

    async def _delete_everything(self) -> list[str]:
        opts = CALL_OPTIONS
        for name, exp in self.expected.items():
            await self.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
                volume_id=exp.volume_id, target_path=self.target(name)), **opts)
            await self.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
                volume_id=exp.volume_id, staging_target_path=self.staging(name)), **opts)
        for entry in await self._listed():
            await self.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
                volume_id=entry.volume.volume_id), **opts)
            await self.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=entry.volume.volume_id),
                                               **opts)
        left = await self._listed()
        return [f"after deleting everything, {len(left)} volumes remain"] if left else []
