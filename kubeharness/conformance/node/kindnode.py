"""The ``kind`` node target: a kind cluster's node, reached through its Docker engine.

Everything goes through the node's container (:mod:`kubeharness.kind.transport`): a manifest is copied
into ``/etc/kubernetes/manifests`` as a dot-file and renamed there (the kubelet ignores dot-files, so it
never reads one half-written); ``/pods`` is read with ``curl`` inside the node from the kubelet's
read-only port (kind's kubelet has it off: the cluster's configuration must set ``readOnlyPort: 10255``,
see the README); log files are read from ``/var/log/pods``; the node's containerd is reached over a CRI
bridge (:mod:`kubeharness.kind.bridge`). The node runs the cluster's own pods too (the control plane,
kindnet, kube-proxy): the target sees, and removes, only the pods its spec wrote. The kubelet's
configuration is the cluster's, so specs that ask for KubeletConfiguration fields are skipped.

``write``, ``remove`` and ``log_files`` are synchronous in :class:`NodeTarget`'s interface (specs call
them inside their checks); here they make blocking Engine API requests, which is fine: nothing else runs
in the suite's event loop beside a remote node. The real clock: the node shares this host's kernel.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from kubeharness.conformance.node.remotenode import RemoteNode
from kubeharness.conformance.node.target import NodeUnavailable, Pods
from kubeharness.kind.bridge import CriBridge
from kubeharness.kind.layout import CONTAINERD_SOCKET, MANIFESTS, POD_LOGS, READ_ONLY_PORT
from kubeharness.kind.transport import DockerError, DockerNode
from kubeharness.wire.cri import api_pb2 as api

START_S = 60.0  # real seconds for the node's kubelet to answer on its read-only port
RUNTIMES = {"kubeharness": "emulator"}  # CRI runtime_name -> the target name's second part


class KindNode(RemoteNode):
    """A kind node (or a stand-in with the same outside) through the Docker engine, on the real clock."""

    def __init__(self, docker_node: DockerNode, bridge: CriBridge, port: int) -> None:
        super().__init__(docker_node.hostname, Path(MANIFESTS), Path(POD_LOGS), port, bridge.endpoint)
        self.name = "kind"
        self.docker = docker_node
        self.bridge = bridge
        self._written: set[str] = set()  # manifest names this spec wrote

    def write(self, name: str, manifest: dict[str, Any]) -> None:
        part = f".{name}.json.part"
        try:
            self.docker.put_files_sync(MANIFESTS, {part: (json.dumps(manifest).encode(), 0o644)})
            moved = self.docker.exec_sync(["mv", f"{MANIFESTS}/{part}", f"{MANIFESTS}/{name}.json"])
        except DockerError as err:
            raise NodeUnavailable(f"{self.name}: {err}") from None
        if moved.code != 0:
            raise NodeUnavailable(f"{self.name}: renaming {part}: {moved.stderr.decode(errors='replace').strip()}")
        self._written.add(name)

    def remove(self, name: str) -> None:
        try:
            self.docker.exec_sync(["rm", "-f", f"{MANIFESTS}/{name}.json"])
        except DockerError as err:
            raise NodeUnavailable(f"{self.name}: {err}") from None

    async def _get(self, path: str) -> bytes:
        try:
            got = await self.docker.exec(["curl", "-sS", "-f", "--max-time", "20",
                                          f"http://127.0.0.1:{self.read_only_port}{path}"])
        except DockerError as err:
            raise NodeUnavailable(f"{self.name}: GET {path}: {err}") from None
        if got.code != 0:
            raise NodeUnavailable(f"{self.name}: GET {path}: curl: {got.stderr.decode(errors='replace').strip()}")
        return got.stdout

    async def pods(self) -> Pods:
        """The pods of the manifests this spec wrote (the node's own pods are none of the suite's business)."""
        ours = {self.pod_name(name) for name in self._written}
        return await self.pods_of(lambda pod_name: pod_name in ours)

    def log_files(self, pod: dict[str, Any], container: str) -> dict[str, bytes]:
        meta = pod["metadata"]
        try:
            return self.docker.read_dir_sync(f"{POD_LOGS}/{meta['namespace']}_{meta['name']}_{meta['uid']}/{container}")
        except DockerError as err:
            raise NodeUnavailable(f"{self.name}: {err}") from None

    async def drain(self, within_s: float) -> None:
        """Remove the manifests this spec wrote and wait until their pods are gone."""
        for name in self._written:
            self.remove(name)
        await self.until(lambda pods: not pods, within_s, "every pod of the spec removed once its manifest went")

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + START_S
        while True:
            try:
                await self._get("/pods")
                version = await self.runtime.Version(api.VersionRequest(), timeout=30)
                self.name = f"kind+{RUNTIMES.get(version.runtime_name, version.runtime_name)}"
                return
            except (NodeUnavailable, grpc.aio.AioRpcError) as err:
                if time.monotonic() > deadline:
                    raise NodeUnavailable(f"kind node {self.docker.name}: not serving /pods on its read-only port "
                                          f"{self.read_only_port} and CRI at {CONTAINERD_SOCKET} {START_S:g} s "
                                          f"after the start ({err}); a kind cluster needs readOnlyPort: "
                                          f"{READ_ONLY_PORT} in its KubeletConfiguration (see the README)") from None
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        await super().close()
        await self.bridge.stop()
        self.bridge.listen.parent.rmdir()
        self.docker.close()


async def kind_node(container: str, docker_host: str | None = None) -> KindNode:
    """The kind node in ``container`` (for a one-node cluster NAME: ``NAME-control-plane``)."""
    try:
        docker_node = await asyncio.to_thread(DockerNode, container, docker_host)
    except DockerError as err:
        raise NodeUnavailable(f"kind node: {err}") from None
    if not await asyncio.to_thread(lambda: docker_node.running):
        docker_node.close()
        raise NodeUnavailable(f"kind node {container}: the container is not running")
    bridge = CriBridge(docker_node, Path(tempfile.mkdtemp(prefix="kh-kind-")) / "cri.sock")
    await bridge.start()
    node = KindNode(docker_node, bridge, READ_ONLY_PORT)
    return await node.serving()
