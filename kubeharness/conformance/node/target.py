"""A node under test, as the node specs see it: static pod manifests in; the pods, logs and events out; time.

Every node has the same interface, whatever runs it: a static pod directory it watches, a read-only port
serving ``/pods`` (and, on our agent, ``/events``), a directory of container logs, and a clock. A node
with a virtual clock (the agent beside the CRI emulator) covers minutes in milliseconds; one on the real
clock (containerd, a kubelet binary) is waited on. Specs never ask which node they have, except through
:attr:`NodeTarget.virtual` to choose how far a long timing is followed; they use :meth:`NodeTarget.until`
and :meth:`NodeTarget.wait` for time.

Each ``pods()`` read adds the containers' changes to :attr:`NodeTarget.timeline` (state, ready, restarts,
in node seconds since the target started), which the report draws per spec and target.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

Pods = dict[str, dict[str, Any]]
KHELPER = "kubeharness.test/khelper:1"
BUSYBOX = "docker.io/library/busybox:1.36"  # a second image every target has (the emulator's, env up's)


class NodeUnavailable(Exception):
    """The node did not start or stopped answering."""


@dataclass(frozen=True)
class Sample:
    """One container's state from a time on: ``waiting:Reason``, ``running`` or ``terminated:Reason``."""

    t: float
    pod: str
    container: str
    state: str
    ready: bool
    restarts: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def container_state(status: dict[str, Any]) -> str:
    state = status.get("state", {})
    for kind in ("waiting", "running", "terminated"):
        if kind in state:
            reason = state[kind].get("reason", "")
            return f"{kind}:{reason}" if reason and kind != "running" else kind
    return "unknown"


def samples(pods: Pods, t: float) -> list[Sample]:
    """The containers of ``pods`` at ``t``: init containers first, then the app containers."""
    result = []
    for name, item in sorted(pods.items()):
        status = item.get("status", {})
        for key in ("initContainerStatuses", "containerStatuses"):
            for c in status.get(key, []):
                result.append(Sample(round(t, 3), name, c.get("name", ""), container_state(c),
                                     bool(c.get("ready")), int(c.get("restartCount", 0))))
    return result


class NodeTarget(abc.ABC):
    """One node; started by its factory, then :meth:`close` removes its pods and stops what it started."""

    name: str  # agent+emulator, agent+containerd, kubelet+emulator, ...
    virtual: bool  # a virtual clock the suite advances
    poll_s: float  # how often until() reads the pods, in node seconds
    image = KHELPER

    def __init__(self, node_name: str, manifests: Path, pod_logs_dir: Path, read_only_port: int) -> None:
        self.node_name = node_name
        self.manifests = manifests
        self.pod_logs_dir = pod_logs_dir
        self.read_only_port = read_only_port
        self.timeline: list[Sample] = []
        self._last: dict[tuple[str, str], Sample] = {}
        self._session: aiohttp.ClientSession | None = None
        self._began = 0.0

    # -- time -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def now_s(self) -> float:
        """The node's time in seconds (virtual or real)."""

    @abc.abstractmethod
    async def wait(self, seconds: float) -> None:
        """Let ``seconds`` of node time pass."""

    def elapsed_s(self) -> float:
        return self.now_s() - self._began

    async def until(self, check: Callable[[Pods], bool], within_s: float, what: str) -> Pods:
        """Read the pods until ``check`` holds, for at most ``within_s`` node seconds; the pods then."""
        deadline = self.now_s() + within_s
        while True:
            pods = await self.pods()
            if check(pods):
                return pods
            if self.now_s() >= deadline:
                raise AssertionError(f"{self.name}: {what}: not within {within_s:g} s; pods: "
                                     f"{json.dumps(pods)[:4000]}")
            await self.wait(self.poll_s)

    async def holds(self, check: Callable[[Pods], bool], for_s: float, what: str) -> Pods:
        """Read the pods for ``for_s`` node seconds, failing as soon as ``check`` does not hold."""
        end = self.now_s() + for_s
        while True:
            pods = await self.pods()
            if not check(pods):
                raise AssertionError(f"{self.name}: {what}: broken after {self.elapsed_s():.1f} s; pods: "
                                     f"{json.dumps(pods)[:4000]}")
            if self.now_s() >= end:
                return pods
            await self.wait(self.poll_s)

    # -- pods ---------------------------------------------------------------------------------------------

    def pod_name(self, name: str) -> str:
        """The name a static pod's manifest ``name`` gets on this node (kubelet appends the node's)."""
        return f"{name}-{self.node_name}"

    def write(self, name: str, manifest: dict[str, Any]) -> None:
        """Put a static pod manifest in place (written aside, then renamed, so never read half-written)."""
        part = self.manifests / f".{name}.json.part"
        part.write_text(json.dumps(manifest))
        part.rename(self.manifests / f"{name}.json")

    def remove(self, name: str) -> None:
        (self.manifests / f"{name}.json").unlink(missing_ok=True)

    async def _get(self, path: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            async with self._session.get(f"http://127.0.0.1:{self.read_only_port}{path}") as reply:
                if reply.status != 200:
                    raise NodeUnavailable(f"{self.name}: GET {path}: HTTP {reply.status}")
                return await reply.read()
        except (TimeoutError, aiohttp.ClientError) as err:
            raise NodeUnavailable(f"{self.name}: GET {path}: {err}") from None

    async def pods(self) -> Pods:
        """The node's pods from ``/pods``, by name; the containers' changes go into the timeline."""
        return await self.pods_of(lambda _: True)

    async def pods_of(self, keep: Callable[[str], bool]) -> Pods:
        """:meth:`pods`, of the pods whose names ``keep`` keeps."""
        pods: Pods = {item["metadata"]["name"]: item for item in json.loads(await self._get("/pods"))["items"]
                      if keep(item["metadata"]["name"])}
        for s in samples(pods, self.elapsed_s()):
            key = (s.pod, s.container)
            last = self._last.get(key)
            if last is None or (last.state, last.ready, last.restarts) != (s.state, s.ready, s.restarts):
                self._last[key] = s
                self.timeline.append(s)
        return pods

    async def events(self) -> list[dict[str, Any]] | None:
        """The node's events (v1 Event objects), or None where the node does not serve them."""
        return None

    async def running(self, full_name: str, namespace: str = "default") -> list[str]:
        """The names of the pod's containers that its runtime runs now (a static pod leaves ``/pods`` as
        soon as its manifest goes, as in kubelet, while its containers are still being stopped)."""
        raise NotImplementedError(f"{self.name} cannot list its runtime's containers")

    async def sandboxes(self, full_name: str, namespace: str = "default") -> list[tuple[str, bool]]:
        """The pod's sandboxes in its runtime (CRI ListPodSandbox): (id, ready) for each."""
        raise NotImplementedError(f"{self.name} cannot list its runtime's sandboxes")

    async def images(self) -> set[str]:
        """The tags of the images the node's runtime has (CRI ListImages)."""
        raise NotImplementedError(f"{self.name} cannot list its runtime's images")

    def log_files(self, pod: dict[str, Any], container: str) -> dict[str, bytes]:
        """The container's log files in kubelet's layout (``<ns>_<name>_<uid>/<container>/``), by name."""
        meta = pod["metadata"]
        folder = self.pod_logs_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / container
        try:
            return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        except FileNotFoundError:
            return {}

    # -- the end ----------------------------------------------------------------------------------------

    async def drain(self, within_s: float) -> None:
        """Remove every manifest and wait until the node has no pods left."""
        for path in self.manifests.glob("*.json"):
            path.unlink()
        await self.until(lambda pods: not pods, within_s, "every pod removed once its manifest went")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

