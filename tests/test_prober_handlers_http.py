"""The prober's httpGet handler against real HTTP(S) servers on loopback.

The server is a small raw HTTP/1.1 server on ``asyncio.start_server``, so that the test sees exactly what
went over the wire (header names, duplicates, what was not sent) and can answer anything: a status, a
redirect chain, a big body, a body that breaks off, no answer at all. Two loopback addresses
(127.0.0.1 and 127.0.0.2) are two hosts for the cross-host redirect. Timeouts run on a virtual clock.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from multidict import CIMultiDict

from kubeharness.agent.prober.handlers import http_get
from kubeharness.agent.prober.handlers.http import canonical_header, probe_headers, probe_url
from kubeharness.agent.prober.outcome import Outcome, ProbeError, ProbeResult
from kubeharness.clock import RealClock, VirtualClock
from tests.conftest import eventually

SUCCESS, WARNING, FAILURE = ProbeResult.SUCCESS, ProbeResult.WARNING, ProbeResult.FAILURE


@dataclass
class Seen:
    """One request as the server read it."""

    target: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Answer = Callable[[str, "Server"], bytes | None]  # (target, server) -> raw response, or None to hang


def response(status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def routes(target: str, server: Server) -> bytes | None:
    """The test server's answers, by path."""
    path, _, query = target.partition("?")
    args = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    parts = path.strip("/").split("/")
    if parts[0] == "status":
        code = int(parts[1])
        return response(code, b"" if code in (204, 304) else f"status {code}".encode(), tuple(args.items()))
    if parts[0] == "redirect":
        return response(int(args.get("code", "302")), b"moved", (("Location", args["loc"]),))
    if parts[0] == "chain":  # /chain/N: N redirects to the same server, then 200
        n = int(parts[1])
        return response(302, b"", (("Location", f"/chain/{n - 1}"),)) if n else response(200, b"end of chain")
    if parts[0] == "big":
        return response(int(args.get("status", "200")), b"x" * int(parts[1]))
    if parts[0] == "hang":
        return None
    if parts[0] == "hangbody":  # headers and part of the body, then nothing
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789" + server.HANG
    if parts[0] == "cut":  # headers and part of the body, then the connection closes
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    if parts[0] == "close":  # no response at all
        return b""
    return response(200, b"ok")


@dataclass
class Server:
    host: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None
    scheme: str = "http"
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the hanging answers
    HANG = b"\0hang"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(1)
            if first == b"\x16":  # a TLS handshake: answer as an HTTP server does
                writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                await writer.drain()
                writer.close()
                return
            head = (first + await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()
            return
        request_line, *header_lines = head.split("\r\n")[:-2]
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in header_lines)]
        target = request_line.split(" ")[1]
        self.seen.append(Seen(target, headers))
        answer = routes(target, self)
        try:
            if answer is None or answer.endswith(self.HANG):
                writer.write((answer or b"").removesuffix(self.HANG))
                await writer.drain()
                await self.release.wait()  # no answer until the server stops
                return
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self.handle, self.host, 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        self.scheme = "https" if tls else "http"
        return self

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"

    async def stop(self) -> None:
        assert self.server is not None
        self.release.set()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    server = await Server("127.0.0.1").start()
    yield server
    await server.stop()


@pytest.fixture
async def other() -> AsyncIterator[Server]:
    """A second host: the same server on another loopback address."""
    server = await Server("127.0.0.2").start()
    yield server
    await server.stop()


async def probe(server: Server, path: str, headers: tuple[tuple[str, str], ...] = (), timeout_s: float = 30,
                clock: RealClock | VirtualClock | None = None) -> Outcome:
    return await http_get(clock or RealClock(), scheme=server.scheme.upper(), host=server.host, port=server.port,
                          path=path, headers=headers, timeout_s=timeout_s)


# -- status codes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "result", "output"), [
    (200, SUCCESS, "status 200"),
    (204, SUCCESS, ""),  # no body with 204
    (299, SUCCESS, "status 299"),
    (300, WARNING, "Probe terminated redirects, Response body: status 300"),
    (301, WARNING, "Probe terminated redirects, Response body: status 301"),  # a redirect without Location
    (399, WARNING, "Probe terminated redirects, Response body: status 399"),
    (400, FAILURE, "HTTP probe failed with statuscode: 400"),
    (404, FAILURE, "HTTP probe failed with statuscode: 404"),
    (503, FAILURE, "HTTP probe failed with statuscode: 503"),
])
async def test_the_status_decides(srv: Server, status: int, result: ProbeResult, output: str) -> None:
    assert await probe(srv, f"/status/{status}") == Outcome(result, output)


async def test_at_most_10_kib_of_the_body_is_read(srv: Server) -> None:
    assert await probe(srv, "/big/10240") == Outcome(SUCCESS, "x" * 10240)
    assert await probe(srv, "/big/50000") == Outcome(SUCCESS, "x" * 10240)
    assert await probe(srv, "/big/50000?status=300") == Outcome(
        WARNING, "Probe terminated redirects, Response body: " + "x" * 10240)


# -- what is sent -------------------------------------------------------------------------------------------

async def test_default_headers_and_no_keep_alive(srv: Server) -> None:
    await probe(srv, "/")
    [seen] = srv.seen
    assert seen.values("User-Agent") == ["kube-probe/1.36"]
    assert seen.values("Accept") == ["*/*"]
    assert seen.values("Connection") == ["close"]
    assert seen.values("Host") == [f"127.0.0.1:{srv.port}"]
    assert seen.values("Accept-Encoding") == []  # kubelet's transport disables compression


async def test_probe_headers_as_kubelet_sends_them(srv: Server) -> None:
    await probe(srv, "/", headers=(("Host", "example.test"), ("user-agent", "custom/2"), ("x-multi", "a"),
                                   ("X-Multi", "b"), ("Accept", "text/plain"), ("X-Empty", "")))
    [seen] = srv.seen
    assert seen.values("Host") == ["example.test"]
    assert ("User-Agent", "custom/2") in seen.headers  # the name canonical, as Go writes it
    assert [(k, v) for k, v in seen.headers if k == "X-Multi"] == [("X-Multi", "a"), ("X-Multi", "b")]
    assert seen.values("Accept") == ["text/plain"]
    assert seen.values("X-Empty") == [""]


async def test_an_empty_user_agent_or_accept_removes_it(srv: Server) -> None:
    await probe(srv, "/", headers=(("User-Agent", ""), ("Accept", "")))
    [seen] = srv.seen
    assert seen.values("User-Agent") == []
    assert seen.values("Accept") == []


@pytest.mark.parametrize(("path", "target"), [
    ("/healthz", "/healthz"),
    ("healthz", "/healthz"),
    ("", "/"),
    ("/q?a=1&b=two", "/q?a=1&b=two"),
    ("/enc%2Fx?x=%2F", "/enc%2Fx?x=%2F"),
    ("/frag#part", "/frag"),
])
async def test_the_path_and_query_are_sent(srv: Server, path: str, target: str) -> None:
    assert (await probe(srv, path)).result is SUCCESS
    assert [s.target for s in srv.seen] == [target]


async def test_ipv6_host() -> None:
    server = await Server("::1").start()
    try:
        assert await probe(server, "/") == Outcome(SUCCESS, "ok")
        assert server.seen[0].values("Host") == [f"[::1]:{server.port}"]
    finally:
        await server.stop()


# -- redirects ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_to_the_same_host_is_followed(srv: Server, code: int) -> None:
    assert await probe(srv, f"/redirect?code={code}&loc=/status/200") == Outcome(SUCCESS, "status 200")
    assert [s.target for s in srv.seen] == [f"/redirect?code={code}&loc=/status/200", "/status/200"]
    assert srv.seen[1].values("Referer") == [srv.url(f"/redirect?code={code}&loc=/status/200")]


async def test_a_redirect_ending_in_a_failure_fails(srv: Server) -> None:
    assert await probe(srv, "/redirect?loc=/status/500") == Outcome(FAILURE, "HTTP probe failed with statuscode: 500")


async def test_a_redirect_to_another_port_of_the_same_host_is_followed(srv: Server) -> None:
    second = await Server("127.0.0.1").start()
    try:
        assert await probe(srv, f"/redirect?loc={second.url('/status/200')}") == Outcome(SUCCESS, "status 200")
        assert [s.target for s in second.seen] == ["/status/200"]
    finally:
        await second.stop()


async def test_a_redirect_to_another_host_is_not_followed(srv: Server, other: Server) -> None:
    outcome = await probe(srv, f"/redirect?loc={other.url('/status/200')}")
    assert outcome == Outcome(WARNING, "Probe terminated redirects, Response body: moved")
    assert outcome.succeeded
    assert other.seen == []


async def test_nine_redirects_are_followed_the_tenth_fails(srv: Server) -> None:
    assert await probe(srv, "/chain/9") == Outcome(SUCCESS, "end of chain")
    assert len(srv.seen) == 10
    srv.seen.clear()
    assert await probe(srv, "/chain/10") == Outcome(
        FAILURE, f'Get "{srv.url("/chain/0")}": stopped after 10 redirects')
    assert len(srv.seen) == 10  # the 10th redirect is not followed


async def test_the_host_header_is_kept_through_a_relative_redirect_only(srv: Server) -> None:
    host = (("Host", "example.test"),)
    await probe(srv, "/redirect?loc=/status/200", headers=host)
    assert [s.values("Host") for s in srv.seen] == [["example.test"], ["example.test"]]
    srv.seen.clear()
    await probe(srv, f"/redirect?loc={srv.url('/status/200')}", headers=host)
    assert [s.values("Host") for s in srv.seen] == [["example.test"], [f"127.0.0.1:{srv.port}"]]


async def test_probe_headers_are_sent_again_after_a_redirect(srv: Server) -> None:
    await probe(srv, "/redirect?loc=/status/200", headers=(("X-Token", "t"), ("User-Agent", "")))
    assert [s.values("X-Token") for s in srv.seen] == [["t"], ["t"]]
    assert [s.values("User-Agent") for s in srv.seen] == [[], []]


# -- transport failures and timeouts ------------------------------------------------------------------------

async def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = await http_get(RealClock(), scheme="HTTP", host="127.0.0.1", port=port, path="/healthz", headers=(),
                             timeout_s=30)
    assert outcome == Outcome(FAILURE, f'Get "http://127.0.0.1:{port}/healthz": dial tcp 127.0.0.1:{port}: connect: '
                                       "connection refused")


async def test_a_server_that_closes_without_answering(srv: Server) -> None:
    assert await probe(srv, "/close") == Outcome(FAILURE, f'Get "{srv.url("/close")}": EOF')


async def test_a_body_that_breaks_off_is_an_error_not_a_failure(srv: Server) -> None:
    with pytest.raises(ProbeError):
        await probe(srv, "/cut")


async def test_a_hung_server_times_out_on_the_clock(srv: Server) -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(probe(srv, "/hang", timeout_s=1, clock=clock))
    await eventually(lambda: len(srv.seen) == 1, "the request to reach the server")
    await clock.advance(0.999)
    assert not task.done()  # the timeout is the clock's, not the machine's
    await clock.advance(0.001)
    outcome = await task
    assert outcome == Outcome(FAILURE, f'Get "{srv.url("/hang")}": context deadline exceeded '
                                       "(Client.Timeout exceeded while awaiting headers)")


async def test_a_timeout_counts_the_redirects_too(srv: Server) -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(probe(srv, "/redirect?loc=/hang", timeout_s=2, clock=clock))
    await eventually(lambda: len(srv.seen) == 2, "the redirect to be followed")
    await clock.advance(2)
    assert (await task).output == (f'Get "{srv.url("/hang")}": context deadline exceeded '
                                   "(Client.Timeout exceeded while awaiting headers)")


async def test_a_body_that_hangs_is_an_error_at_the_timeout(srv: Server) -> None:
    clock = VirtualClock()
    task = asyncio.ensure_future(probe(srv, "/hangbody", timeout_s=1, clock=clock))
    await eventually(lambda: len(srv.seen) == 1, "the request to reach the server")
    await clock.advance(0.5)
    assert not task.done()
    await clock.advance(0.5)
    with pytest.raises(ProbeError, match="while reading body"):
        await task


# -- HTTPS --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=not-this-host"],
                   check=True, capture_output=True)
    return cert, key


async def test_https_without_certificate_verification(self_signed: tuple[Path, Path]) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*self_signed)
    server = await Server("127.0.0.1").start(tls)
    try:
        assert await probe(server, "/status/200") == Outcome(SUCCESS, "status 200")
        assert await probe(server, "/redirect?loc=/status/503") == Outcome(
            FAILURE, "HTTP probe failed with statuscode: 503")
        assert [s.target for s in server.seen][-1] == "/status/503"
    finally:
        await server.stop()


async def test_https_to_a_plain_http_server_fails(srv: Server) -> None:
    outcome = await http_get(RealClock(), scheme="HTTPS", host=srv.host, port=srv.port, path="/", headers=(),
                             timeout_s=30)
    assert outcome.result is FAILURE
    assert outcome.output == f'Get "https://127.0.0.1:{srv.port}/": tls: wrong version number'


# -- building the request (pure) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("scheme", "host", "path", "url"), [
    ("HTTP", "10.1.2.3", "/healthz", "http://10.1.2.3:8080/healthz"),
    ("HTTPS", "10.1.2.3", "healthz", "https://10.1.2.3:8080/healthz"),
    ("", "10.1.2.3", "", "http://10.1.2.3:8080/"),
    ("HTTP", "fd00::1", "/x?y=1", "http://[fd00::1]:8080/x?y=1"),
    ("HTTP", "svc.example", "//evil/x", "http://svc.example:8080/x"),
    ("HTTP", "svc.example", "//evil?q", "http://svc.example:8080/?q"),
    ("HTTP", "10.1.2.3", "/a b/%2F?k=%2F v", "http://10.1.2.3:8080/a%20b/%2F?k=%2F%20v"),
    ("HTTP", "10.1.2.3", "/p#frag", "http://10.1.2.3:8080/p"),
])
def test_probe_url(scheme: str, host: str, path: str, url: str) -> None:
    assert str(probe_url(scheme, host, 8080, path)) == url


@pytest.mark.parametrize("host", ["bad host", "a/b", "", "x\ty", "user@h"])
def test_a_url_that_cannot_be_built_cannot_be_probed(host: str) -> None:
    with pytest.raises(ProbeError, match="parse"):
        probe_url("HTTP", host, 80, "/")


async def test_an_unsupported_scheme_fails(srv: Server) -> None:
    outcome = await http_get(RealClock(), scheme="FTP", host=srv.host, port=srv.port, path="/", headers=(),
                             timeout_s=30)
    assert outcome.output == f'Get "ftp://127.0.0.1:{srv.port}/": unsupported protocol scheme "ftp"'


@pytest.mark.parametrize(("name", "canonical"), [
    ("x-request-id", "X-Request-Id"), ("USER-AGENT", "User-Agent"), ("host", "Host"), ("a b", "a b"), ("", ""),
])
def test_canonical_header(name: str, canonical: str) -> None:
    assert canonical_header(name) == canonical


def test_probe_headers() -> None:
    headers, host, skip = probe_headers([("host", "h.example"), ("Host", "second"), ("Connection", "close")])
    assert host == "h.example"
    assert "Host" not in headers
    assert headers.getall("Connection") == ["close"]
    assert skip == frozenset({"Accept-Encoding"})
    assert headers == CIMultiDict([("Connection", "close"), ("User-Agent", "kube-probe/1.36"), ("Accept", "*/*")])
