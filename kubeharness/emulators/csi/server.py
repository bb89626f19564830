"""Starting and stopping a CSI emulator: Identity, Controller and Node on one unix socket, its state in a
directory, optionally the registration socket, and the fault engine with its control socket.

``CsiServer`` runs inside any asyncio program (tests run it in-process); :func:`serve` is the daemon of
``kubeharness csi serve`` until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import grpc

from kubeharness.clock import Clock, RealClock
from kubeharness.emulators.csi.config import CsiConfig
from kubeharness.emulators.csi.controller import ControllerService
from kubeharness.emulators.csi.faultpoint import CsiFaultPoint
from kubeharness.emulators.csi.identity import IdentityService
from kubeharness.emulators.csi.mounts import EmulatedMounts, RealMounts
from kubeharness.emulators.csi.node import NodeService
from kubeharness.emulators.csi.paths import PathPolicy
from kubeharness.emulators.csi.registration import RegistrationService
from kubeharness.emulators.csi.volumes import VolumeStore
from kubeharness.faults import FaultEngine, FaultPlan
from kubeharness.faults.control import ControlServer
from kubeharness.grpcserve import add_service, serve_unix, wait_for_stop_signal
from kubeharness.persist import StateDirLock
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.pluginregistration import api_pb2 as reg

log = logging.getLogger(__name__)


def socket_path(endpoint: str) -> str:
    return endpoint.removeprefix("unix://")


async def _serve_socket(
    path: str, services: list[tuple[object, object]], around: CsiFaultPoint | None
) -> grpc.aio.Server:
    server = grpc.aio.server()
    for descriptor, impl in services:
        add_service(server, descriptor, impl, around)  # type: ignore[arg-type]
    serve_unix(server, path)  # 0600 from its first moment; too long a path is INVALID_ARGUMENT
    await server.start()
    return server


class CsiServer:
    """A CSI plugin serving on ``endpoint`` with its state in ``state_dir``."""

    def __init__(self, endpoint: str, state_dir: Path, config: CsiConfig | None = None, clock: Clock | None = None,
                 faults: FaultEngine | None = None, fault_control: Path | None = None,
                 registration_dir: Path | None = None) -> None:
        self.endpoint = endpoint
        self.state_dir = state_dir
        self.config = config or CsiConfig()
        self.config.check()
        self.clock = clock or RealClock()
        self.faults = faults
        self.control = ControlServer(faults, fault_control) if faults is not None and fault_control else None
        self.registration_dir = registration_dir
        self._lock = StateDirLock(state_dir, "CSI emulator")
        self.store = VolumeStore(state_dir, self.config.journal_compact_lines)
        mounts = RealMounts(state_dir) if self.config.mode == "real" else EmulatedMounts(state_dir)
        self.paths = PathPolicy([*self.config.roots, str(state_dir)])
        self.identity = IdentityService(self.config)
        self.controller = ControllerService(self.config, self.store, mounts)
        self.node = NodeService(self.config, self.store, mounts, self.paths)
        self.registration = RegistrationService(self.config.driver_name, socket_path(endpoint))
        self._servers: list[grpc.aio.Server] = []
        self._sockets: list[str] = []

    @property
    def registration_socket(self) -> str | None:
        if self.registration_dir is None:
            return None
        return str(self.registration_dir / f"{self.config.driver_name}-reg.sock")

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)  # nothing half-started stays behind
            raise

    async def _start(self) -> None:
        self.store.load()
        around = CsiFaultPoint(self.faults, self.clock, self.store.exclusive) if self.faults is not None else None
        services = csi.DESCRIPTOR.services_by_name
        path = socket_path(self.endpoint)
        self._servers.append(await _serve_socket(path, [
            (services["Identity"], self.identity), (services["Controller"], self.controller),
            (services["Node"], self.node)], around))
        self._sockets.append(path)
        reg_path = self.registration_socket
        if reg_path is not None:
            registration = reg.DESCRIPTOR.services_by_name["Registration"]
            self._servers.append(await _serve_socket(reg_path, [(registration, self.registration)], None))
            self._sockets.append(reg_path)
        if self.control is not None:
            await self.control.start()
        log.info("CSI emulator %s serving on unix://%s, state in %s", self.config.driver_name, path, self.state_dir)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self.control is not None:
            await self.control.stop()
        for server in self._servers:
            await server.stop(grace)
        self._servers = []
        for path in self._sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._sockets = []
        self.store.close()
        self._lock.release()

    async def __aenter__(self) -> CsiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(endpoint: str, state_dir: Path, config: CsiConfig, registration_dir: Path | None = None,
                faults: Path | None = None, fault_seed: int = 0, fault_log: Path | None = None,
                fault_control: Path | None = None) -> None:
    """Run a CSI emulator until SIGINT or SIGTERM."""
    clock = RealClock()
    engine = FaultEngine.from_file(faults, clock, fault_seed, fault_log) if faults else FaultEngine(FaultPlan(), clock)
    server = CsiServer(endpoint, state_dir, config, clock, engine, fault_control or state_dir / "faults.sock",
                       registration_dir)
    await server.start()
    print(f"kubeharness CSI emulator {config.driver_name} listening on unix://{socket_path(endpoint)}", flush=True)
    await wait_for_stop_signal()
    await server.stop()
