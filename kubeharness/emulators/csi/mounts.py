"""Carrying out stage and publish: emulated (directories and files, nothing privileged) or real mounts.

Emulated: staging makes the staging directory; publishing makes the target directory (mount access) or
an empty sparse file of the volume's size (block access); unpublishing removes what publishing made.
Nothing is mounted; the plugin's state says what would be.

Real (root only): each volume has a backing directory under the state directory (or a tmpfs of the
volume's size when its parameters say ``medium: tmpfs``), bind-mounted at the staging path; publishing
bind-mounts the staging path at the target and remounts it with the requested flags (``ro`` for a
read-only publish, and mount flags such as ``noatime``, ``nodev``, ``nosuid``, ``noexec``), so a container
given the target sees the volume. Block access bind-mounts a backing file onto a target file (no loop
device). Mounts are made with util-linux's ``mount``/``umount``; ``/proc/self/mountinfo`` says what is
mounted, so a repeated call finds its work done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from kubeharness.emulators.csi.volumes import Capability, Volume
from kubeharness.errors import InvalidArgument, KubeharnessError

# Flags a publish or stage may ask for (mount(8) option names); anything else is INVALID_ARGUMENT.
ALLOWED_FLAGS = frozenset({
    "ro", "rw", "noatime", "nodiratime", "relatime", "strictatime", "nodev", "nosuid", "noexec",
    "sync", "dirsync", "lazytime",
})


def check_flags(flags: tuple[str, ...]) -> None:
    for flag in flags:
        if flag not in ALLOWED_FLAGS:
            raise InvalidArgument(f"mount flag {flag!r} is not supported; "
                                  f"supported: {', '.join(sorted(ALLOWED_FLAGS))}")


def mounted_at(path: str) -> bool:
    """Whether something is mounted exactly at ``path`` (from /proc/self/mountinfo)."""
    wanted = os.path.normpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == wanted:
                return True
    return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _make_target(path: str, capability: Capability, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if capability.access_type == "block":
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(size)
    else:
        os.makedirs(path, exist_ok=True)


class EmulatedMounts:
    """Directories and files only; what is 'mounted' lives in the plugin's state."""

    real = False

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    async def stage(self, volume: Volume, path: str, capability: Capability) -> None:
        os.makedirs(path, exist_ok=True)

    async def unstage(self, volume: Volume, path: str) -> None:
        return None  # the staging directory belongs to the CO

    async def publish(self, volume: Volume, staging: str, target: str, readonly: bool, capability: Capability) -> None:
        _make_target(target, capability, volume.capacity_bytes)

    async def unpublish(self, volume: Volume, target: str) -> None:
        _remove(target)

    async def delete(self, volume: Volume) -> None:
        return None


class RealMounts:
    """Bind mounts and tmpfs, made with mount(8) (root only)."""

    real = True

    def __init__(self, state_dir: Path) -> None:
        self.backing_root = state_dir / "backing"

    async def _run(self, *argv: str) -> None:
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
        _, stderr = await process.communicate()
        if process.returncode != 0:
            raise KubeharnessError(f"{' '.join(argv)} failed: {stderr.decode(errors='replace').strip()}")

    def _backing(self, volume: Volume, capability: Capability) -> str:
        base = self.backing_root / volume.id
        if capability.access_type == "block":
            base.parent.mkdir(parents=True, exist_ok=True)
            path = str(base) + ".img"
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.truncate(volume.capacity_bytes)
            return path
        base.mkdir(parents=True, exist_ok=True)
        return str(base)

    async def stage(self, volume: Volume, path: str, capability: Capability) -> None:
        if mounted_at(path):
            return
        if capability.access_type == "block":
            _make_target(path, capability, volume.capacity_bytes)
        else:
            os.makedirs(path, exist_ok=True)
        if volume.parameters.get("medium") == "tmpfs" and capability.access_type == "mount":
            options = ",".join(("size=" + str(volume.capacity_bytes), *capability.mount_flags))
            await self._run("mount", "-t", "tmpfs", "-o", options, f"kh-{volume.id}", path)
            return
        await self._run("mount", "--bind", self._backing(volume, capability), path)
        if capability.mount_flags:
            await self._run("mount", "-o", ",".join(("remount", "bind", *capability.mount_flags)), path)

    async def unstage(self, volume: Volume, path: str) -> None:
        if mounted_at(path):
            await self._run("umount", path)

    async def publish(self, volume: Volume, staging: str, target: str, readonly: bool, capability: Capability) -> None:
        if mounted_at(target):
            return
        _make_target(target, capability, 0)
        await self._run("mount", "--bind", staging, target)
        flags = (*(("ro",) if readonly else ()), *capability.mount_flags)
        if flags:
            await self._run("mount", "-o", ",".join(("remount", "bind", *flags)), target)

    async def unpublish(self, volume: Volume, target: str) -> None:
        if mounted_at(target):
            await self._run("umount", target)
        _remove(target)

    async def delete(self, volume: Volume) -> None:
        base = str(self.backing_root / volume.id)
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + ".img")


Mounts = EmulatedMounts | RealMounts
