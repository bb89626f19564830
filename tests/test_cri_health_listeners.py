"""Containers' ``--grpc-port`` and the HTTP extras (/redirect, /status, /hang) in the CRI emulator.

Everything goes through a real CRI client (RunPodSandbox, CreateContainer with khelper's flags) and then
a real gRPC health client (grpcio-health-checking's ``HealthStub``) or a real HTTP client on the pod IP.
Each test has a loopback pod CIDR of its own; health moves with the virtual clock, never real time.
"""

from __future__ import annotations

import asyncio
import http.client
import secrets
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeharness.emulators.cri.config import CriConfig
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def cri_config() -> CriConfig:
    return CriConfig(pod_cidr=f"127.{100 + secrets.randbelow(150)}.{secrets.randbelow(250)}.0/24")


async def pod_ip(cri: CriHarness, sid: str) -> str:
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    return status.status.network.ip


async def check(ip: str, port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"{ip}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int((await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status)


async def refused(ip: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=5)
    except OSError:
        return True
    writer.close()
    return False


async def eventually_refused(ip: str, port: int) -> bool:
    """The gRPC server stops in a task of its own: wait (generously) for the port to go."""
    for _ in range(500):
        if await refused(ip, port):
            return True
        await asyncio.sleep(0.02)
    return False


async def served(cri: CriHarness, cid: str, expected: tuple[int, int]) -> None:
    """Wait until the container's HTTP listener serves (connections, of which on /hang) as expected."""
    assert cri.server is not None
    listeners = cri.server.runtime.listeners
    for _ in range(1000):
        if listeners.connections_of(cid) == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the listener serves {listeners.connections_of(cid)}, not {expected}")


async def test_grpc_health_follows_the_clock_and_the_container(cri: CriHarness) -> None:
    sid, cid = await cri.run_container(
        "grpc", args=["--grpc-port=50051", "--grpc-service=svc", "--unhealthy-after=30s"])
    ip = await pod_ip(cri, sid)
    assert await check(ip, 50051) == SERVING
    assert await check(ip, 50051, "svc") == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await check(ip, 50051, "other")
    assert (unknown.value.code(), unknown.value.details()) == (grpc.StatusCode.NOT_FOUND, "unknown service")
    async with grpc.aio.insecure_channel(f"{ip}:50051") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
            await watch.read()
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

    await cri.clock.advance(29.9)
    assert await check(ip, 50051, "svc") == SERVING
    await cri.clock.advance(0.1)  # --unhealthy-after, on the emulator's clock
    assert await check(ip, 50051) == NOT_SERVING
    assert await check(ip, 50051, "svc") == NOT_SERVING

    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
    assert await eventually_refused(ip, 50051)


async def test_grpc_reopens_after_an_emulator_restart_and_closes_at_exit_and_removal(cri: CriHarness) -> None:
    sid, cid = await cri.run_container("kept", args=["--grpc-port=50051", "--exit-after=60s"])
    ip = await pod_ip(cri, sid)
    assert await check(ip, 50051) == SERVING
    await cri.stop()
    assert await refused(ip, 50051)  # the emulator's stop waits for its gRPC servers to let go
    await cri.start()
    assert await check(ip, 50051) == SERVING  # still running, so it serves again
    await cri.clock.advance(60)
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    assert await eventually_refused(ip, 50051)

    sid2, _ = await cri.run_container("removed", args=["--grpc-port=50052"])
    ip2 = await pod_ip(cri, sid2)
    assert await check(ip2, 50052) == SERVING
    await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid2))
    assert await eventually_refused(ip2, 50052)


async def test_a_grpc_port_that_is_taken_is_reported_like_khelper(cri: CriHarness) -> None:
    cfg = cri.sandbox_config(name="pair")
    sid = await cri.run_sandbox(cfg)
    await cri.pull("kubeharness.test/khelper:1")
    first = await cri.create(sid, cfg, name="first", args=["--grpc-port=50051"])
    await cri.start_container(first)
    second = await cri.create(sid, cfg, name="second", args=["--http-port=8080", "--grpc-port=50051"])
    await cri.start_container(second)
    third = await cri.create(sid, cfg, name="third", args=["--http-port=8081", "--grpc-port=8081"])
    await cri.start_container(third)

    for cid, port in ((second, 50051), (third, 8081)):
        status = await cri.status(cid)
        assert status.state == api.CONTAINER_RUNNING
        line = f" stderr F khelper: cannot listen on port {port}: Address already in use\n"
        assert line in await asyncio.to_thread(Path(status.log_path).read_text)
    ip = await pod_ip(cri, sid)
    assert await check(ip, 50051) == SERVING  # the first container's
    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=first, timeout=0))
    assert await eventually_refused(ip, 50051)  # the port was the first container's only


def _get(ip: str, port: int, path: str) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        conn.close()


async def test_http_redirect_status_and_hang(cri: CriHarness) -> None:
    sid, cid = await cri.run_container("web", args=["--http-port=8080", "--unhealthy-after=30s"])
    ip = await pod_ip(cri, sid)

    async def get(path: str) -> tuple[int, str | None, bytes]:
        return await asyncio.to_thread(_get, ip, 8080, path)

    assert await get("/redirect?loc=/healthz") == (302, "/healthz", b"found\n")
    assert await get("/redirect?loc=http%3A%2F%2F127.0.0.2%3A9%2Fx") == (302, "http://127.0.0.2:9/x", b"found\n")
    assert await get("/redirect?loc=") == (400, None, b"missing loc\n")
    assert await get("/status?code=404") == (404, None, b"status 404\n")
    assert await get("/status?code=1000") == (400, None, b"invalid code\n")

    reader, writer = await asyncio.open_connection(ip, 8080)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await served(cri, cid, (1, 1))  # read as a /hang before the clock moves
    await cri.clock.advance(60)  # far beyond the 10 s a request may take, and past --unhealthy-after
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), timeout=0.5)  # neither answered nor closed
    assert await get("/") == (503, None, b"unhealthy\n")  # health still applies to other paths
    assert await get("/status?code=200") == (200, None, b"status 200\n")  # and the extras do not follow it

    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
    assert await asyncio.wait_for(reader.read(1), timeout=10) == b""  # the container's stop ends the hang
    writer.close()


async def test_an_idle_connection_without_a_request_is_still_closed_after_10s(cri: CriHarness) -> None:
    sid, cid = await cri.run_container("idle", args=["--http-port=8080"])
    ip = await pod_ip(cri, sid)
    reader, writer = await asyncio.open_connection(ip, 8080)
    writer.write(b"GET /hang HTTP/1.1\r\n")  # not complete: the request limit still applies
    await writer.drain()
    await served(cri, cid, (1, 0))
    await cri.clock.advance(9.9)
    assert cri.server is not None and cri.server.runtime.listeners.connections_of(cid) == (1, 0)
    await cri.clock.advance(0.1)
    assert await asyncio.wait_for(reader.read(1), timeout=10) == b""
    writer.close()
