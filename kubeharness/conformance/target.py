"""A CRI runtime under test, as the specs see it: stubs, time, images, unique names and clean-up.

Two kinds: the emulator, started in-process per test on its own socket and state directory with a
virtual clock (so a spec that waits a minute takes milliseconds, and tests are isolated under
``pytest -n auto``), and a real runtime at a CRI endpoint, shared by all tests, where waiting is real.
Specs never look at which one they have, except through :attr:`Target.name` in observations; they
use :meth:`Target.wait` and :meth:`Target.until` for time and :meth:`Target.pod` for names that do
not collide with other tests on a shared runtime. Everything a spec creates is removed afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

T = TypeVar("T")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
KHELPER = "kubeharness.test/khelper:1"
BUSYBOX = "docker.io/library/busybox:1.36"
POLL_S = 0.1


class Target:
    """One runtime under test."""

    def __init__(self, name: str, channel: grpc.aio.Channel, log_root: Path, clock: VirtualClock | None) -> None:
        self.name = name
        self.channel = channel
        self.runtime = api_grpc.RuntimeServiceStub(channel)
        self.images = api_grpc.ImageServiceStub(channel)
        self.log_root = log_root
        self.clock = clock  # the emulator's virtual clock; None for a real runtime
        self.run_id = secrets.token_hex(3)
        self._sandboxes: list[str] = []

    @property
    def emulated(self) -> bool:
        return self.clock is not None

    # -- time ----------------------------------------------------------------------------------------

    async def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the runtime's clock."""
        if self.clock is not None:
            await self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def until(self, check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
        """Wait until ``check()`` holds, polling; AssertionError naming ``what`` after ``timeout_s``."""
        waited = 0.0
        while not await check():
            if waited >= timeout_s:
                raise AssertionError(f"{what}: not within {timeout_s:g} s")
            await self.wait(POLL_S)
            waited += POLL_S

    async def call(self, call: Awaitable[T]) -> T:
        """Await an RPC that takes runtime time (a pull, a stop with a grace period, an exec that sleeps)."""
        if self.clock is None:
            return await call
        task = asyncio.ensure_future(call)
        while not task.done():
            await self.clock.advance(POLL_S)
            await asyncio.sleep(0.001)
        return task.result()

    # -- objects -------------------------------------------------------------------------------------

    async def pull(self, image: str) -> str:
        request = api.PullImageRequest(image=api.ImageSpec(image=image))
        return (await self.call(self.images.PullImage(request, timeout=120))).image_ref

    def pod(self, name: str, **labels: str) -> api.PodSandboxConfig:
        """A sandbox config with a name unique to this test run, logs under the target's log root."""
        unique = f"{name}-{self.run_id}"
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=unique, namespace="conformance", uid=f"uid-{unique}"),
            log_directory=str(self.log_root / unique),
            labels={"kubeharness.test/run": self.run_id, **labels},
        )
        (self.log_root / unique).mkdir(parents=True, exist_ok=True)
        return config

    async def run_pod(self, config: api.PodSandboxConfig) -> str:
        sid = (await self.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60)).pod_sandbox_id
        self._sandboxes.append(sid)
        return sid

    def container(self, name: str, image: str = KHELPER, args: list[str] | None = None,
                  command: list[str] | None = None, attempt: int = 0) -> api.ContainerConfig:
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=attempt),
            image=api.ImageSpec(image=image),
            args=args or [],
            command=command or [],
            log_path=f"{name}/{attempt}.log",
        )
        config.linux.security_context.namespace_options.pid = api.CONTAINER  # as the kubelet asks
        return config

    async def create(self, sid: str, pod: api.PodSandboxConfig, config: api.ContainerConfig) -> str:
        request = api.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod)
        return (await self.runtime.CreateContainer(request, timeout=60)).container_id

    async def start(self, cid: str) -> None:
        await self.runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=60)

    async def status(self, cid: str) -> api.ContainerStatus:
        return (await self.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=30)).status

    async def sandbox_status(self, sid: str) -> api.PodSandboxStatus:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sid)
        return (await self.runtime.PodSandboxStatus(request, timeout=30)).status

    async def running_container(self, name: str, args: list[str] | None = None, image: str = KHELPER,
                                command: list[str] | None = None) -> tuple[str, str, api.PodSandboxConfig]:
        """(sandbox id, container id, sandbox config): a pod with one started container."""
        await self.pull(image)
        pod = self.pod(name)
        sid = await self.run_pod(pod)
        cid = await self.create(sid, pod, self.container(name, image, args, command))
        await self.start(cid)
        return sid, cid, pod

    async def exited(self, cid: str, timeout_s: float) -> api.ContainerStatus:
        """The container's status once it has exited."""
        async def done() -> bool:
            return (await self.status(cid)).state == api.CONTAINER_EXITED

        await self.until(done, timeout_s, f"container {cid[:12]} to exit")
        return await self.status(cid)

    async def cleanup(self) -> None:
        for sid in reversed(self._sandboxes):
            try:
                await self.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
                await self.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            except grpc.aio.AioRpcError:
                continue


async def emulator_target(root: Path) -> tuple[Target, CriServer]:
    clock = VirtualClock()
    server = CriServer(str(root / "cri.sock"), root / "state", CriConfig(), clock)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{root / 'cri.sock'}", options=CHANNEL_OPTIONS)
    return Target("emulator", channel, root / "logs", clock), server


async def endpoint_target(endpoint: str, root: Path) -> Target:
    channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    version = await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=10)
    return Target(version.runtime_name or endpoint, channel, root / "logs", None)
