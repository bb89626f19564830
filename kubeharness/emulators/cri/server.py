"""Starting and stopping a CRI emulator: the gRPC server on a unix socket around a Runtime.

One emulator owns one state directory (an exclusive lock file guards it). ``CriServer`` runs inside
any asyncio program (tests run it in-process with a virtual clock); :func:`serve` is the daemon that
``kubeharness cri serve`` runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from pathlib import Path

import grpc

from kubeharness.clock import Clock, RealClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.faultpoint import FaultPoint
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.service import ImageService, RuntimeService
from kubeharness.faults import FaultEngine
from kubeharness.faults.control import ControlServer
from kubeharness.grpcserve import add_service, clear_stale_socket, serve_unix, wait_for_stop_signal
from kubeharness.persist import StateDirLock
from kubeharness.wire.cri import api_pb2 as cri

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # what kubelet allows for CRI messages
REAL_CLOCK_TICK_NS = 20_000_000  # batch log writes to at most 50 wakes per second per container


def socket_path(endpoint: str) -> str:
    """``unix:///run/x.sock`` or ``/run/x.sock`` -> ``/run/x.sock``."""
    return endpoint.removeprefix("unix://")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class CriServer:
    """A CRI emulator serving on ``endpoint`` with its state in ``state_dir``."""

    def __init__(
        self, endpoint: str, state_dir: Path, config: CriConfig | None = None, clock: Clock | None = None,
        faults: FaultEngine | None = None, fault_control: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.faults = faults  # the fault engine every unary call consults, if any
        # its control socket (owner-only), where rules are changed and the fired log read at run time
        self.control = ControlServer(faults, fault_control) if faults is not None and fault_control else None
        self.state_dir = state_dir
        self.clock = clock or RealClock()
        tick = REAL_CLOCK_TICK_NS if isinstance(self.clock, RealClock) else 0
        self._lock = StateDirLock(state_dir, "emulator")
        self.runtime = Runtime(config or CriConfig(), state_dir, self.clock, min_tick_ns=tick)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        path = socket_path(self.endpoint)
        clear_stale_socket(path)  # before loading: a live emulator's socket is refused with nothing touched
        self.runtime.load()
        await self.runtime.recover_setups()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        around = FaultPoint(self.faults, self.runtime, self.clock) if self.faults is not None else None
        add_service(server, cri.DESCRIPTOR.services_by_name["RuntimeService"], RuntimeService(self.runtime), around)
        add_service(server, cri.DESCRIPTOR.services_by_name["ImageService"], ImageService(self.runtime), around)
        serve_unix(server, path)  # 0600 from its first moment
        await server.start()
        self._server = server
        if self.control is not None:
            await self.control.start()
        log.info("CRI emulator serving on unix://%s, state in %s", path, self.state_dir)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self.control is not None:
            await self.control.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.runtime.shutdown()
        await self.runtime.listeners.closed()  # the containers' gRPC servers have let their ports go
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.endpoint))
        self._lock.release()

    async def __aenter__(self) -> CriServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(endpoint: str, state_dir: Path, config: CriConfig, faults: Path | None = None,
                fault_seed: int = 0, fault_log: Path | None = None, fault_control: Path | None = None) -> None:
    """Run an emulator until SIGINT or SIGTERM, with the fault plan in ``faults`` (or none, changeable at
    run time through the control socket, by default ``state_dir/faults.sock``)."""
    raise_fd_limit()
    clock = RealClock()
    engine = FaultEngine.from_file(faults, clock, fault_seed, fault_log)
    control = fault_control or state_dir / "faults.sock"
    server = CriServer(endpoint, state_dir, config, clock, engine, control)
    await server.start()
    print(f"kubeharness CRI emulator listening on unix://{socket_path(endpoint)}", flush=True)
    await wait_for_stop_signal()
    await server.stop()
