"""Shared fixtures: a CRI emulator served in-process on a real unix socket, driven by a virtual clock.

Tests talk to it only through real gRPC stubs on the socket, exactly as kubelet or crictl would.
``cri.restart()`` stops the server and starts a new one on the same state directory and socket
(the clock keeps its time), which is how restart persistence is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.server import CriServer
from kubeharness.faults import FaultEngine
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests import fuzzing  # noqa: F401  (registers and loads the hypothesis profiles)

T = TypeVar("T")

# Each channel gets its own connection: gRPC otherwise shares one connection among channels to the same
# target, so "16 clients" would be one, and a channel opened after a restart could reuse the dead
# connection to the server that was just stopped.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]


@dataclass
class CriHarness:
    """A running emulator and clients for it."""

    root: Path
    clock: VirtualClock
    config: CriConfig
    server: CriServer | None = None
    faults: FaultEngine | None = None  # a fault engine the server consults on every call
    fault_control: Path | None = None  # and its control socket
    channel: grpc.aio.Channel | None = None
    runtime: api_grpc.RuntimeServiceAsyncStub = field(init=False)
    images: api_grpc.ImageServiceAsyncStub = field(init=False)

    @property
    def socket(self) -> str:
        return str(self.root / "cri.sock")

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_dir(self) -> Path:
        return self.root / "pods"

    async def start(self) -> None:
        self.server = CriServer(self.socket, self.state_dir, self.config, self.clock, self.faults, self.fault_control)
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"unix://{self.socket}", options=CHANNEL_OPTIONS)
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)
        self.images = api_grpc.ImageServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        if self.server is not None:
            await self.server.stop(grace=0)
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    # -- conveniences that keep tests short; each is one or two plain RPCs --

    def sandbox_config(self, name: str = "pod", namespace: str = "default", uid: str = "", attempt: int = 0,
                       labels: dict[str, str] | None = None, host_network: bool = False) -> api.PodSandboxConfig:
        cfg = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or f"uid-{name}", attempt=attempt),
            log_directory=str(self.log_dir / f"{namespace}_{name}_{uid or 'uid-' + name}"),
            labels=labels or {},
        )
        cfg.linux.cgroup_parent = f"/kubepods/pod{uid or 'uid-' + name}"  # as the kubelet sets it
        if host_network:
            cfg.linux.security_context.namespace_options.network = api.NODE
        return cfg

    async def run_sandbox(self, cfg: api.PodSandboxConfig | None = None, **kw: object) -> str:
        cfg = cfg or self.sandbox_config(**kw)  # type: ignore[arg-type]
        return (await self.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=cfg))).pod_sandbox_id

    async def drive(self, call: Awaitable[T], step: float = 0.05, limit: float = 3600) -> T:
        """Await an RPC that waits on the emulator's clock, advancing the virtual clock until it returns."""
        task = asyncio.ensure_future(call)
        advanced = 0.0
        while not task.done():
            if advanced >= limit:
                task.cancel()
                raise AssertionError(f"call did not finish within {limit}s of virtual time")
            await self.clock.advance(step)
            advanced += step
            await asyncio.sleep(0.001)  # let the gRPC round trip finish on the real loop
        return task.result()

    async def until_timer_added(self, before: int) -> None:
        """Wait until the server scheduled a clock timer beyond the ``before`` it had: the call has arrived and
        waits on the clock. Then the test advances exactly what it means to, however slow the round trip was."""
        await eventually(lambda: self.clock.pending() > before, "the server to schedule the call's timer")

    async def subscribed(self, count: int = 1) -> None:
        """Wait until ``count`` GetContainerEvents subscriptions have reached the server (events published
        before that would not be sent to them)."""
        assert self.server is not None
        hub = self.server.runtime.events
        await eventually(lambda: hub.subscribers >= count, f"{count} event subscription(s) to reach the server")

    async def pull(self, image: str) -> str:
        request = api.PullImageRequest(image=api.ImageSpec(image=image))
        return (await self.drive(self.images.PullImage(request))).image_ref

    async def create(self, sandbox_id: str, sandbox_cfg: api.PodSandboxConfig, name: str = "c",
                     image: str = "kubeharness.test/khelper:1", args: list[str] | None = None,
                     command: list[str] | None = None, attempt: int = 0, memory_limit: int = 0,
                     labels: dict[str, str] | None = None) -> str:
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=attempt),
            image=api.ImageSpec(image=image),
            command=command or [],
            args=args or [],
            log_path=f"{name}/{attempt}.log",
            labels=labels or {},
        )
        # as the kubelet asks unless the pod shares its process namespace: the container is its own PID 1
        cfg.linux.security_context.namespace_options.pid = api.CONTAINER
        if memory_limit:
            cfg.linux.resources.memory_limit_in_bytes = memory_limit
        req = api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=cfg, sandbox_config=sandbox_cfg)
        return (await self.runtime.CreateContainer(req)).container_id

    async def start_container(self, container_id: str) -> None:
        await self.runtime.StartContainer(api.StartContainerRequest(container_id=container_id))

    async def status(self, container_id: str) -> api.ContainerStatus:
        return (await self.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id))).status

    async def run_container(self, name: str = "pod", args: list[str] | None = None, **kw: object) -> tuple[str, str]:
        """Sandbox + pulled helper image + created and started container: (sandbox id, container id)."""
        cfg = self.sandbox_config(name=name)
        sid = await self.run_sandbox(cfg)
        image = str(kw.pop("image", "kubeharness.test/khelper:1"))
        await self.pull(image)
        cid = await self.create(sid, cfg, image=image, args=args, **kw)  # type: ignore[arg-type]
        await self.start_container(cid)
        return sid, cid


_cidrs = itertools.count()


def private_pod_cidr() -> str:
    """A /24 of loopback pod addresses no other test process uses: the emulated containers' ports are real
    sockets on their pod IPs, and every emulator with the default pool hands out 127.77.0.2 first, so two
    tests on two xdist workers listening on 8080 of the same address would collide. The second octet is the
    worker's (100 + its number), the third counts the calls in this process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    second = 100 + (int(worker) if worker.isdigit() else 0) % 150
    return f"127.{second}.{next(_cidrs) % 256}.0/24"


@pytest.fixture
def cri_config() -> CriConfig:
    """Override in a test module to run the emulator with other settings."""
    return CriConfig()


@pytest.fixture
async def cri(tmp_path: Path, cri_config: CriConfig) -> AsyncIterator[CriHarness]:
    harness = CriHarness(root=tmp_path, clock=VirtualClock(), config=cri_config)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait (real time) until ``predicate()`` holds. The deadline is generous: it only turns a hang into a
    failure, so a loaded machine waits longer instead of failing. Use it for whatever the test waits on in
    real time (a round trip, a subscription reaching the server, another process); never a bare sleep."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.002)


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    """The status code a call ends with (OK when it answers)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kubeharness(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``kubeharness`` command as a user would; its output, never raising on failure."""
    return subprocess.run([sys.executable, "-m", "kubeharness.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False)


@contextlib.contextmanager
def containerd_env(run_dir: Path, *up_args: str) -> Iterator[str]:
    """``kubeharness env up`` in ``run_dir`` (on a free registry port), yielding containerd's endpoint;
    ``env down`` afterwards, whatever happened."""
    up = kubeharness("env", "up", "--run-dir", str(run_dir), "--registry-port", str(free_port()), *up_args)
    try:
        assert up.returncode == 0, up.stderr
        yield up.stdout.strip()
    finally:
        down = kubeharness("env", "down", "--run-dir", str(run_dir))
        assert down.returncode == 0, down.stderr
