"""The prober's tcpSocket and grpc handlers against real servers on loopback.

TCP: a listening port, a closed one, and a port whose accept queue is full (the kernel drops the SYN, so
the connection hangs until the probe's timeout on the virtual clock). gRPC: a real ``grpc.aio`` server
with grpcio-health-checking's servicer (SERVING, NOT_SERVING, an unknown service), a server without the
health service (UNIMPLEMENTED), one whose Check never answers, and no server at all.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer  # grpc_health.v1.health.aio's

from kubeharness.agent.prober.handlers import grpc_health, tcp_socket
from kubeharness.agent.prober.outcome import Outcome, ProbeResult
from kubeharness.clock import RealClock, VirtualClock
from tests.conftest import eventually

SUCCESS, FAILURE = ProbeResult.SUCCESS, ProbeResult.FAILURE


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- tcpSocket ----------------------------------------------------------------------------------------------

async def test_tcp_open_port_succeeds_and_the_connection_is_closed() -> None:
    connected = asyncio.Event()
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        if await reader.read() == b"":  # the probe sends nothing and closes
            closed.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_socket(RealClock(), host="127.0.0.1", port=port, timeout_s=30) == Outcome(SUCCESS, "")
        await eventually(closed.is_set, "the probe's connection to be closed")
        assert connected.is_set()
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_a_host_name_is_resolved() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_socket(RealClock(), host="localhost", port=port, timeout_s=30) == Outcome(SUCCESS, "")
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_refused() -> None:
    port = free_port()
    assert await tcp_socket(RealClock(), host="127.0.0.1", port=port, timeout_s=30) == Outcome(
        FAILURE, f"dial tcp 127.0.0.1:{port}: connect: connection refused")


async def test_tcp_ipv6_refused_names_the_bracketed_address() -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    outcome = await tcp_socket(RealClock(), host="::1", port=port, timeout_s=30)
    assert outcome == Outcome(FAILURE, f"dial tcp [::1]:{port}: connect: connection refused")


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: a new connection's SYN is dropped and the connection hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # room for one connection that is never accepted
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


async def test_tcp_hang_times_out_on_the_clock(full_listener: int) -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(tcp_socket(clock, host="127.0.0.1", port=full_listener, timeout_s=3))
    await eventually(lambda: clock.pending() > 0, "the probe to start its timeout")
    await clock.advance(2.9)
    assert not task.done()
    await clock.advance(0.1)
    assert await task == Outcome(FAILURE, f"dial tcp 127.0.0.1:{full_listener}: i/o timeout")


# -- grpc ---------------------------------------------------------------------------------------------------

@dataclass
class Hanging(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # (no stubs for the servicer)
    """A Check that never answers (until released), and the peers and user agents it saw."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
                    ) -> health_pb2.HealthCheckResponse:
        self.arrived.set()
        await self.release.wait()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Recording(AioHealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer, noting each caller's address and user agent."""

    peers: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
                    ) -> health_pb2.HealthCheckResponse:
        self.peers.append(context.peer())
        self.agents.append(dict(context.invocation_metadata() or ()).get("user-agent", ""))
        reply: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return reply


@dataclass
class GrpcServer:
    port: int
    server: grpc.aio.Server
    health: Recording | None = None


async def serve(servicer: health_pb2_grpc.HealthServicer | None) -> GrpcServer:
    server = grpc.aio.server()
    if servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return GrpcServer(port, server, servicer if isinstance(servicer, Recording) else None)


@pytest.fixture
async def health() -> AsyncIterator[GrpcServer]:
    servicer = Recording()
    await servicer.set("ready", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("sick", health_pb2.HealthCheckResponse.NOT_SERVING)
    await servicer.set("unknown-state", health_pb2.HealthCheckResponse.UNKNOWN)
    s = await serve(servicer)
    yield s
    await s.server.stop(None)


async def check(port: int, service: str = "", clock: RealClock | VirtualClock | None = None,
                timeout_s: float = 30) -> Outcome:
    return await grpc_health(clock or RealClock(), host="127.0.0.1", port=port, service=service, timeout_s=timeout_s)


@pytest.mark.parametrize(("service", "outcome"), [
    ("", Outcome(SUCCESS, "service healthy")),
    ("ready", Outcome(SUCCESS, "service healthy")),
    ("sick", Outcome(FAILURE, 'service unhealthy (responded with "NOT_SERVING")')),
    ("unknown-state", Outcome(FAILURE, 'service unhealthy (responded with "UNKNOWN")')),
    ("no-such-service", Outcome(FAILURE, "error: health rpc probe failed: rpc error: code = NotFound desc = ")),
])
async def test_grpc_health_statuses(health: GrpcServer, service: str, outcome: Outcome) -> None:
    assert await check(health.port, service) == outcome


async def test_grpc_a_fresh_connection_per_probe_with_kubelets_user_agent(health: GrpcServer) -> None:
    assert health.health is not None
    for _ in range(3):
        assert (await check(health.port)).result is SUCCESS
    assert len(set(health.health.peers)) == 3  # three connections, from three client ports
    assert all(agent.startswith("kube-probe/1.36 ") for agent in health.health.agents), health.health.agents


async def test_grpc_without_the_health_service() -> None:
    s = await serve(None)
    try:
        outcome = await check(s.port)
        assert outcome.result is FAILURE
        assert outcome.output.startswith(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): ")
    finally:
        await s.server.stop(None)


async def test_grpc_a_hung_check_times_out_on_the_clock() -> None:
    servicer = Hanging()
    s = await serve(servicer)
    clock = VirtualClock()
    try:
        task = asyncio.ensure_future(check(s.port, clock=clock, timeout_s=1))
        await eventually(servicer.arrived.is_set, "the Check to reach the server")
        await clock.advance(0.999)
        assert not task.done()
        await clock.advance(0.001)
        assert await task == Outcome(FAILURE, "timeout: health rpc did not complete within 1s")
    finally:
        servicer.release.set()
        await s.server.stop(None)


async def test_grpc_nothing_listening_is_a_connect_timeout_on_the_clock() -> None:
    port = free_port()
    clock = VirtualClock()
    task = asyncio.ensure_future(check(port, clock=clock, timeout_s=2))
    await eventually(lambda: clock.pending() > 0, "the probe to start its timeout")
    await clock.advance(1.9)
    assert not task.done()  # grpc keeps redialling a refused port until the deadline, as grpc-go does
    await clock.advance(0.1)
    assert await task == Outcome(
        FAILURE, f'timeout: failed to connect service "127.0.0.1:{port}" within 2s: context deadline exceeded')


async def test_grpc_a_full_accept_queue_is_a_connect_timeout(full_listener: int) -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(check(full_listener, clock=clock, timeout_s=1))
    await eventually(lambda: clock.pending() > 0, "the probe to start its timeout")
    await clock.advance(1)
    assert (await task).output.startswith('timeout: failed to connect service "127.0.0.1:')
