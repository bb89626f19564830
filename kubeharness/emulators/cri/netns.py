"""Network namespaces of pod sandboxes: emulated placeholders, or real ones made with ``ip netns``.

``emulated`` (the default) names a path in containerd's format, ``/var/run/netns/cni-<uuid>``, that
does not exist: nothing touches the kernel, and only CNI plugins that do not enter the namespace (such
as ``kubeharness-cni`` in emulated mode) can work with it. ``real`` (root only) creates one namespace per
non-host-network sandbox with ``ip netns add kh-<uuid>`` (a bind mount under ``/var/run/netns``), which
kernel-touching plugins such as the reference ``bridge`` need, and deletes it when the sandbox stops,
after the CNI DEL, as containerd does.
"""

from __future__ import annotations

import asyncio
import os
import uuid

NETNS_DIR = "/var/run/netns"
REAL_PREFIX = "kh-"
MODES = ("emulated", "real")


class NetnsError(Exception):
    """A namespace could not be created or removed."""


async def _ip(*args: str) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            "ip", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as err:
        raise NetnsError(f"cannot run ip {' '.join(args)}: {err}") from None
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise NetnsError(stderr.decode(errors="replace").strip() or f"ip {' '.join(args)} failed")


class Namespaces:
    """Creates and removes the sandboxes' network namespaces in one mode."""

    def __init__(self, mode: str = "emulated") -> None:
        if mode not in MODES:
            raise ValueError(f"netns mode must be one of {MODES}, not {mode!r}")
        self.mode = mode

    @property
    def real(self) -> bool:
        return self.mode == "real"

    @staticmethod
    def placeholder() -> str:
        return f"{NETNS_DIR}/cni-{uuid.uuid4()}"

    async def create(self) -> str:
        """A new namespace's path."""
        if not self.real:
            return self.placeholder()
        name = f"{REAL_PREFIX}{uuid.uuid4()}"
        try:
            await _ip("netns", "add", name)
        except NetnsError as err:
            hint = " (netns: real needs root)" if os.geteuid() != 0 else ""
            raise NetnsError(f"{err}{hint}") from None
        return f"{NETNS_DIR}/{name}"

    @staticmethod
    def is_real(path: str) -> bool:
        return os.path.basename(path).startswith(REAL_PREFIX) and os.path.dirname(path) == NETNS_DIR

    @staticmethod
    def exists(path: str) -> bool:
        return bool(path) and os.path.exists(path)

    async def remove(self, path: str) -> None:
        """Delete a real namespace (a gone one is fine); placeholders have nothing to delete."""
        if not self.is_real(path) or not self.exists(path):
            return
        await _ip("netns", "delete", os.path.basename(path))
