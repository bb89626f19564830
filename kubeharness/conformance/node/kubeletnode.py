"""The ``kubelet`` node target: a kubelet binary the user names, started as a person starts a standalone kubelet.

The suite writes a KubeletConfiguration (:func:`agentnode.kubelet_config` plus :data:`STANDALONE`, what a
standalone kubelet needs on a test machine: no API server, anonymous and always-allowed access to its
ports on loopback, no swap check) and runs ``BINARY --config=FILE --root-dir=DIR
--hostname-override=NODE -v=2`` with no ``--kubeconfig``, so the kubelet runs static pods only. The
runtime is a CRI emulator in this process (``kubelet+emulator``; the real clock, as a kubelet has no
other) or a containerd endpoint (``kubelet+containerd``). Its output goes to ``kubelet.log`` in the spec's
directory, whose tail is in the error when it does not come up.

The project tests this target with ``kubeharness agent`` standing in for the binary (``ci/kubelet-standin``),
which takes these flags as kubelet does. Nothing here knows which binary runs: the node is reached only
through the static pod directory, the read-only port, the log directory and CRI.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from kubeharness.clock import RealClock
from kubeharness.conformance.node.agentnode import NODE_NAME, free_port, kubelet_config, pod_cidr
from kubeharness.conformance.node.remotenode import RemoteNode
from kubeharness.conformance.node.target import NodeUnavailable
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer

# what a standalone kubelet needs beside kubelet_config(); the agent ignores what it does not implement
STANDALONE: dict[str, Any] = {
    "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
    "authorization": {"mode": "AlwaysAllow"},
    "cgroupDriver": "cgroupfs",
    "failSwapOn": False,
    "registerNode": False,
}
START_S = 60.0  # real seconds for the binary to serve /pods
STOP_S = 30.0  # real seconds between SIGTERM and SIGKILL
LOG_TAIL = 3000  # characters of kubelet.log in an error


class KubeletNode(RemoteNode):
    """A kubelet (or a stand-in) in a process of its own, on the real clock."""

    def __init__(self, name: str, root: Path, port: int, process: asyncio.subprocess.Process, endpoint: str,
                 cri: CriServer | None) -> None:
        super().__init__(NODE_NAME, root / "manifests", root / "pods", port, endpoint)
        self.name = name
        self.root = root
        self.process = process
        self.cri = cri

    def log_tail(self) -> str:
        try:
            return (self.root / "kubelet.log").read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + START_S
        while True:
            if self.process.returncode is not None:
                raise NodeUnavailable(f"{self.name}: the binary exited with {self.process.returncode}; "
                                      f"kubelet.log:\n{self.log_tail()}")
            try:
                await self._get("/pods")
                return
            except NodeUnavailable as err:
                if time.monotonic() > deadline:
                    raise NodeUnavailable(f"{err}: not serving {START_S:g} s after its start; "
                                          f"kubelet.log:\n{self.log_tail()}") from None
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        try:
            await stop(self.process)
        finally:
            await super().close()
            if self.cri is not None:
                await self.cri.stop(grace=0)


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process we started, SIGKILL it after :data:`STOP_S`."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def command(binary: str, config: Path, root: Path) -> list[str]:
    """A standalone kubelet's command line."""
    return [binary, f"--config={config}", f"--root-dir={root / 'kubelet'}", f"--hostname-override={NODE_NAME}",
            "-v=2"]


async def kubelet_node(root: Path, binary: str, extra: dict[str, Any], endpoint: str | None = None) -> KubeletNode:
    """Start ``binary`` as a standalone kubelet on ``endpoint`` (containerd), or on a CRI emulator of its own."""
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    cri: CriServer | None = None
    if endpoint is None:
        cri = CriServer(str(root / "cri.sock"), root / "state", CriConfig(pod_cidr=pod_cidr()), RealClock())
        await cri.start()
        endpoint = f"unix://{root / 'cri.sock'}"
    port = free_port()
    config = root / "kubelet.yaml"
    config.write_text(yaml.safe_dump({**kubelet_config(endpoint, root, port, {}), **STANDALONE, **extra}))
    try:
        with (root / "kubelet.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command(binary, config, root), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
    except OSError as err:
        if cri is not None:
            await cri.stop(grace=0)
        raise NodeUnavailable(f"--kubelet-binary {binary}: cannot start it: {err.strerror or err}") from None
    node = KubeletNode(f"kubelet+{'emulator' if cri else 'containerd'}", root, port, process, endpoint, cri)
    return await node.serving()
