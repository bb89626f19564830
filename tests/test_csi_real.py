"""The CSI emulator in real mode (root): bind mounts and tmpfs at the staging and target paths, with the
requested flags, seen in the mount table and gone after unpublish and unstage."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeharness.wire.csi import csi_pb2 as csi
from tests.test_csi import Csi, GiB, mount_cap, start, stop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real mounts need root")


def mount_of(path: str) -> dict[str, str] | None:
    """The mount table's entry for exactly ``path``: its options, file system type and source."""
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            if fields[4] == path:
                rest = fields[fields.index("-") + 1:]
                return {"options": fields[5], "fstype": rest[0], "source": rest[1], "super": rest[2]}
    return None


def write(path: str, text: str) -> int:
    """Write a file; 0 or the errno it failed with."""
    try:
        Path(path).write_text(text)
    except OSError as err:
        return err.errno or -1
    return 0


def read(path: str) -> str:
    return Path(path).read_text()


def mounts_at(path: str) -> int:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        return sum(1 for line in info if line.split()[4] == path)


def gone(path: str) -> bool:
    return mount_of(path) is None and not os.path.exists(path)


def unmount_all(c: Csi) -> None:
    for volume in list(c.server.store.volumes.values()):
        for path in [*volume.published, volume.staged_at]:
            if path and mount_of(path) is not None:
                subprocess.run(["umount", path], check=False)


@pytest.fixture
async def real(tmp_path: Path) -> AsyncIterator[Csi]:
    c = await start(tmp_path, mode="real")
    try:
        yield c
    finally:
        unmount_all(c)  # never leave a mount behind a failed test
        await stop(c)


async def test_a_volume_is_bind_mounted_with_its_flags_and_read_only_where_asked(real: Csi) -> None:
    c = real
    cap = mount_cap(flags=("noatime", "nodev"))
    volume_id = await c.create("data", GiB, cap)
    await c.attach(volume_id, cap)
    await c.stage(volume_id, "data", cap)
    staging = c.staging("data")
    staged = mount_of(staging)
    assert staged is not None and {"noatime", "nodev"} <= set(staged["options"].split(","))
    writer = c.publish_request(volume_id, pod="writer", name="data", cap=cap)
    reader = c.publish_request(volume_id, pod="reader", name="data", readonly=True, cap=cap)
    await c.node.NodePublishVolume(writer)
    await c.node.NodePublishVolume(reader)
    assert write(os.path.join(writer.target_path, "hello"), "from the writer") == 0
    # the same volume at every mount point; the read-only one refuses writes
    assert read(os.path.join(reader.target_path, "hello")) == read(os.path.join(staging, "hello")) == "from the writer"
    assert "ro" in mount_of(reader.target_path)["options"].split(",")  # type: ignore[index]
    assert write(os.path.join(reader.target_path, "nope"), "x") == errno.EROFS
    # repeated publish finds its work done (one mount, not two)
    await c.node.NodePublishVolume(writer)
    assert mounts_at(writer.target_path) == 1
    for request in (writer, reader):
        await c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                        target_path=request.target_path))
        assert gone(request.target_path)
    await c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging))
    assert mount_of(staging) is None
    # the data stays with the volume: staged again, it is there
    await c.stage(volume_id, "data", cap)
    assert read(os.path.join(staging, "hello")) == "from the writer"
    await c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging))


async def test_a_tmpfs_volume_has_its_size_and_stats_come_from_statfs(real: Csi) -> None:
    c = real
    volume = await c.controller.CreateVolume(csi.CreateVolumeRequest(
        name="scratch", capacity_range=csi.CapacityRange(required_bytes=64 * 1024 * 1024),
        volume_capabilities=[mount_cap()], parameters={"medium": "tmpfs"}))
    volume_id = volume.volume.volume_id
    await c.attach(volume_id)
    await c.stage(volume_id, "scratch")
    staged = mount_of(c.staging("scratch"))
    assert staged is not None and staged["fstype"] == "tmpfs"
    await c.node.NodePublishVolume(c.publish_request(volume_id, name="scratch"))
    stats = await c.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=volume_id, volume_path=c.target(name="scratch")))
    by_unit = {u.unit: u for u in stats.usage}
    assert by_unit[csi.VolumeUsage.BYTES].total == 64 * 1024 * 1024
    assert by_unit[csi.VolumeUsage.INODES].total > 0
    await c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                    target_path=c.target(name="scratch")))
    await c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id,
                                                                staging_target_path=c.staging("scratch")))
    assert mount_of(c.staging("scratch")) is None
