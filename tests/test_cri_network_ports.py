"""Containers' ``--http-port`` and ``--tcp-port`` served for real on their loopback pod IPs.

Each test runs the emulator with a pod CIDR of its own in 127.0.0.0/8, so parallel tests never share
an address; probes use a real HTTP client (urllib, in a thread so the emulator's loop keeps serving)
and real TCP connections. Time-dependent health moves with the virtual clock, never with real time.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kubeharness.emulators.cri.config import CriConfig
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness


@pytest.fixture
def cri_config() -> CriConfig:
    return CriConfig(pod_cidr=f"127.{100 + secrets.randbelow(150)}.{secrets.randbelow(250)}.0/24")


def _get(url: str, method: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def http(ip: str, port: int, path: str = "/", method: str = "GET") -> tuple[int, bytes]:
    return await asyncio.to_thread(_get, f"http://{ip}:{port}{path}", method)


async def can_connect(ip: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=5)
    except OSError:
        return False
    writer.close()
    return True


def read(path: str) -> str:
    return Path(path).read_text()


async def pod_ip(cri: CriHarness, sid: str) -> str:
    status = await cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    return status.status.network.ip


async def test_http_and_tcp_follow_the_container(cri: CriHarness) -> None:
    sid, cid = await cri.run_container("web", args=["--http-port=8080", "--tcp-port=9090", "--unhealthy-after=30s"])
    ip = await pod_ip(cri, sid)
    assert await http(ip, 8080, "/healthz") == (200, b"ok\n")
    assert await http(ip, 8080, "/any/path") == (200, b"ok\n")
    assert await http(ip, 8080, "/", "HEAD") == (200, b"")
    assert await can_connect(ip, 9090)

    await cri.clock.advance(30)  # --unhealthy-after, on the emulator's clock
    assert await http(ip, 8080, "/healthz") == (503, b"unhealthy\n")
    assert await can_connect(ip, 9090)

    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0))
    assert not await can_connect(ip, 8080)
    assert not await can_connect(ip, 9090)


async def test_ports_reopen_after_a_restart_and_close_when_the_container_exits(cri: CriHarness) -> None:
    sid, cid = await cri.run_container("kept", args=["--http-port=8080", "--exit-after=60s"])
    ip = await pod_ip(cri, sid)
    assert await http(ip, 8080) == (200, b"ok\n")
    await cri.stop()
    assert not await can_connect(ip, 8080)  # the emulator is down
    await cri.start()
    assert await http(ip, 8080) == (200, b"ok\n")  # the container still runs, so it serves again
    await cri.clock.advance(60)
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    assert not await can_connect(ip, 8080)


async def test_two_containers_of_a_pod_on_one_port(cri: CriHarness) -> None:
    """The second cannot bind: as khelper, it says so on stderr and runs on without the port."""
    cfg = cri.sandbox_config(name="pair")
    sid = await cri.run_sandbox(cfg)
    await cri.pull("kubeharness.test/khelper:1")
    first = await cri.create(sid, cfg, name="first", args=["--http-port=8080"])
    await cri.start_container(first)
    second = await cri.create(sid, cfg, name="second", args=["--http-port=8080", "--tcp-port=9091"])
    await cri.start_container(second)

    status = await cri.status(second)
    assert status.state == api.CONTAINER_RUNNING
    log_text = read(status.log_path)
    assert " stderr F khelper: cannot listen on port 8080: Address already in use\n" in log_text
    ip = await pod_ip(cri, sid)
    assert await can_connect(ip, 9091)  # its other port is fine
    await cri.runtime.StopContainer(api.StopContainerRequest(container_id=first, timeout=0))
    assert not await can_connect(ip, 8080)  # the port was the first container's
    await cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert not await can_connect(ip, 9091)


async def test_a_pod_without_a_loopback_ip_gets_no_listener(cri: CriHarness) -> None:
    sid = await cri.run_sandbox(name="host", host_network=True)
    cfg = cri.sandbox_config(name="host", host_network=True)
    await cri.pull("kubeharness.test/khelper:1")
    cid = await cri.create(sid, cfg, args=["--http-port=8080"])
    await cri.start_container(cid)
    assert (await cri.status(cid)).state == api.CONTAINER_RUNNING
    assert cri.server is not None and cri.server.runtime.listeners.ports_of(cid) == []
