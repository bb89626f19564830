"""The real ``khelper``'s ``--grpc-port`` (its HTTP/2 + HPACK server in C) and its HTTP extras, on 127.0.0.1.

khelper is compiled and run as a process; grpcio-health-checking's ``HealthStub`` is the client, so
the Huffman coding, the dynamic table, PINGs and flow control are grpc core's real ones. The same
cases run against the emulator's own health server (``grpchealth.HealthServer``) and must answer alike;
the HTTP replies are compared byte for byte with ``httpanswers.answer``, the emulator's oracle. Timing
is reckoned from the start instant khelper writes to its state file, with generous windows.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import select
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import example, given
from hypothesis import strategies as st

from kubeharness.emulators.cri import httpanswers
from kubeharness.emulators.cri.grpchealth import HealthServer
from tests.conftest import free_port
from tests.test_khelper import KHELPER_SRC, _compile, can_connect, started, started_at, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHECK = "/grpc.health.v1.Health/Check"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# separate connections per channel: grpc would otherwise share one subchannel between equal channels
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def khelper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(KHELPER_SRC, tmp_path_factory.mktemp("khelper-grpc") / "khelper")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "KHELPER_STATE": str(tmp_path / "state"), "KHELPER_DISK_FILE": str(tmp_path / "disk"),
            "KHELPER_LISTEN_ADDR": "127.0.0.1"}


def check(channel: grpc.Channel, service: str = "", metadata: tuple[tuple[str, str], ...] = ()) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10, metadata=metadata).status)


def outcome(channel: grpc.Channel, method: str, request: bytes) -> tuple[str, str, bytes]:
    """(status code name, details, response bytes) of one unary call with raw bytes."""
    call = channel.unary_unary(method, None, None)
    try:
        return "OK", "", call(request, timeout=10)
    except grpc.RpcError as err:
        return err.code().name, err.details() or "", b""


@pytest.fixture
def grpc_helper(khelper: Path, env: dict[str, str]) -> Iterator[tuple[int, float]]:
    """A khelper serving gRPC health (and HTTP on the next port) with the extra service "svc": (port, start)."""
    port = free_port()
    with started(khelper, [f"--grpc-port={port}", "--grpc-service=svc"], env) as proc:
        wait_for(lambda: can_connect(port), what="the gRPC port")
        yield port, started_at(env)
        assert proc.poll() is None, "khelper died"


def test_serving_then_not_serving_after_unhealthy_after(khelper: Path, env: dict[str, str]) -> None:
    port = free_port()
    with started(khelper, [f"--grpc-port={port}", "--unhealthy-after=2s"], env) as proc:
        start = started_at(env)
        wait_for(lambda: can_connect(port), what="the gRPC port")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            first = check(channel)
            if time.monotonic() - start < 2.0:  # else the machine was too slow to ask in time
                assert first == SERVING
            while (status := check(channel)) == SERVING:
                assert time.monotonic() - start < 30, "never became NOT_SERVING"
                time.sleep(0.05)
            assert status == NOT_SERVING
            assert time.monotonic() - start >= 2.0
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as fresh:
            assert check(fresh) == NOT_SERVING
        assert proc.poll() is None


def test_a_connection_idle_across_unhealthy_after_hears_the_new_health(khelper: Path, env: dict[str, str]) -> None:
    """Regression: health was judged before ppoll() slept, so a request on a connection that was open (and
    quiet) across --unhealthy-after got the old answer, over gRPC and HTTP alike."""
    grpc_port, http_port = free_port(), free_port()
    args = [f"--grpc-port={grpc_port}", f"--http-port={http_port}", "--unhealthy-after=1500ms"]
    with started(khelper, args, env):
        start = started_at(env)
        wait_for(lambda: can_connect(grpc_port) and can_connect(http_port), what="the ports")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            early = check(channel)
            with socket.create_connection(("127.0.0.1", http_port), timeout=10) as raw:
                if time.monotonic() - start >= 1.2:
                    pytest.skip("the machine was too slow to connect before --unhealthy-after")
                assert early == SERVING
                time.sleep(max(0.0, start + 2.5 - time.monotonic()))  # quiet across the threshold
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert raw.recv(64).startswith(b"HTTP/1.0 503 ")
            assert check(channel) == NOT_SERVING


def test_service_names_and_methods(grpc_helper: tuple[int, float]) -> None:
    port, _ = grpc_helper
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert check(channel, "") == SERVING
        assert check(channel, "svc") == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            check(channel, "other")
        assert (unknown.value.code(), unknown.value.details()) == (grpc.StatusCode.NOT_FOUND, "unknown service")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as unimplemented:
            next(watch)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert outcome(channel, "/grpc.health.v1.Health/List", b"")[0] == "UNIMPLEMENTED"
        assert outcome(channel, "/some.Other/Check", b"")[0] == "UNIMPLEMENTED"
        assert check(channel, "svc") == SERVING  # the connection is still fine after the refusals


def test_many_calls_on_one_connection_keep_the_hpack_table_in_step(grpc_helper: tuple[int, float]) -> None:
    """grpc core indexes headers in the dynamic table and Huffman-codes values; large, changing metadata
    makes it evict entries, so a decoder out of step would lose :path and answer UNIMPLEMENTED."""
    port, _ = grpc_helper
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for i in range(120):
            metadata = (("x-pad", f"{i}-" + "v" * (i * 37 % 900)), (f"x-key-{i % 7}", "w" * (i % 50)))
            assert check(channel, "svc" if i % 3 else "", metadata) == SERVING


def test_two_channels_and_concurrent_calls(grpc_helper: tuple[int, float]) -> None:
    port, _ = grpc_helper
    with (grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as one,
          grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as two,
          concurrent.futures.ThreadPoolExecutor(8) as pool):
        stubs = [health_pb2_grpc.HealthStub(one), health_pb2_grpc.HealthStub(two)]
        # 40 calls in flight on each connection at once: concurrent streams, interleaved frames
        futures = [stubs[i % 2].Check.future(health_pb2.HealthCheckRequest(service="svc"), timeout=20)
                   for i in range(80)]
        assert [f.result().status for f in futures] == [SERVING] * 80
        threaded = list(pool.map(lambda i: check(one if i % 2 else two, ""), range(40)))
        assert threaded == [SERVING] * 40


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _send_and_drain(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read whatever comes back until khelper closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
        except ConnectionResetError:
            return b""
        return reply


_frames = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=64)), max_size=8
).map(lambda fs: b"".join(_frame(k, f, s, p) for k, f, s, p in fs))
_settings = _frame(4, 0, 0, b"")


@given(data=st.one_of(
    st.binary(max_size=200),                                # not HTTP/2 at all
    _frames.map(lambda f: PREFACE + _settings + f),         # random frames after a good start
    _frames.map(lambda f: PREFACE + f),                     # frames without the SETTINGS first
    st.binary(max_size=120).map(lambda b: PREFACE + _settings + _frame(1, 5, 1, b)),  # a random HPACK block
))
@example(data=PREFACE + _settings + _frame(1, 5, 1, b"\x3f\xe1\x1f"))          # table size update beyond 4096
@example(data=PREFACE + _settings + _frame(1, 5, 1, b"\x44\x83\xff\xff\xff"))  # Huffman string of EOS bits
@example(data=PREFACE + _settings + _frame(1, 5, 1, b"\xff\xff\xff\xff\xff\x0f"))  # index overflow
@example(data=PREFACE + _settings + _frame(9, 4, 1, b"\x82"))                 # CONTINUATION with no HEADERS
@example(data=PREFACE + _settings + b"\xff\xff\xff\x00\x00\x00\x00\x00\x00")  # a frame beyond 16 KiB
def test_garbage_never_kills_khelper(grpc_helper: tuple[int, float], data: bytes) -> None:
    port, _ = grpc_helper
    _send_and_drain(port, data)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        assert check(channel, "svc") == SERVING


def test_a_protocol_error_gets_goaway_and_a_ping_its_ack(grpc_helper: tuple[int, float]) -> None:
    port, _ = grpc_helper
    reply = _send_and_drain(port, PREFACE + _settings + _frame(6, 0, 0, b"12345678") + _frame(5, 0, 1, b""))
    frames = []
    while len(reply) >= 9:
        length = int.from_bytes(reply[:3], "big")
        frames.append((reply[3], reply[4], reply[9:9 + length]))
        reply = reply[9 + length:]
    kinds = [(kind, flags) for kind, flags, _ in frames]
    assert kinds == [(4, 0), (4, 1), (6, 1), (7, 0)]  # SETTINGS, its ACK, the PING's ACK, GOAWAY
    assert frames[2][2] == b"12345678"
    assert frames[3][2][4:8] == b"\x00\x00\x00\x01"  # PROTOCOL_ERROR: clients do not push


# -- the emulator's health server answers alike ---------------------------------------------------

CASES = [
    (CHECK, b""),                               # service ""
    (CHECK, b"\x0a\x03svc"),                    # the extra name
    (CHECK, b"\x0a\x05other"),                  # unknown
    (CHECK, b"\x0a\x05other\x0a\x03svc"),       # the last occurrence wins
    (CHECK, b"\x10\x07\x0a\x00"),               # an unknown varint field is skipped
    (CHECK, b"\xff\xff"),                       # not protobuf
    (CHECK, b"\x0a\x02\xc3\x28"),               # not UTF-8
    (CHECK, b"\x08\x01"),                       # field 1 as a varint: an unknown field
    (CHECK, b"\x0b\x0a\x01a\x0c\x0a\x01b"),         # a group (its field 1 is not ours), then "b"
    (CHECK, b"\x1b" * 100 + b"\x1c" * 100),       # groups nested as deep as protobuf allows
    (CHECK, b"\x1b" * 101 + b"\x1c" * 101),       # one deeper
    (CHECK, b"\x1b\x0c"),                       # an END_GROUP of another field
    (CHECK, b"\x1b"),                           # a group never ended
    (CHECK, b"\x08" + b"\xff" * 9 + b"\x7f"),     # a 10-byte varint
    (CHECK, b"\x08" + b"\xff" * 10 + b"\x00"),    # an 11-byte one
    (CHECK, b"\xf8\xff\xff\xff\x0f\x00"),         # the largest field number
    (CHECK, b"\xf8\xff\xff\xff\x1f\x00"),         # a tag beyond 32 bits
    (CHECK, b"\x0a\x81\x80\x80\x80\x80\x00svc"),   # a non-minimal length
    (CHECK, b"\x0a\x03\xed\xa0\x80"),            # a UTF-16 surrogate in UTF-8
    (CHECK, b"\x0a\x01\x00"),                   # NUL is valid UTF-8 (and an unknown name)
    (CHECK, b"\x0a\x03sv"),                     # truncated
    (CHECK, b"\x0a\x01" + b"x" * 17000),        # larger than 16 KiB (and its length is wrong, too)
    ("/grpc.health.v1.Health/Watch", b""),
    ("/grpc.health.v1.Health/List", b""),
    ("/x/y", b""),
]


async def test_khelper_and_the_emulator_answer_alike(khelper: Path, env: dict[str, str]) -> None:
    port, emulated_port = free_port(), free_port()
    server = HealthServer("127.0.0.1", emulated_port, lambda: True, "svc")
    server.start()
    try:
        with started(khelper, [f"--grpc-port={port}", "--grpc-service=svc"], env):
            wait_for(lambda: can_connect(port), what="the gRPC port")
            answers = {}
            for target in (port, emulated_port):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{target}") as channel:
                    results = []
                    for method, body in CASES:
                        try:
                            results.append(("OK", "", await channel.unary_unary(method, None, None)(body, timeout=10)))
                        except grpc.aio.AioRpcError as err:
                            results.append((err.code().name, err.details() or "", b""))
                    answers[target] = results
            for case, mine, theirs in zip(CASES, answers[port], answers[emulated_port], strict=True):
                assert mine == theirs, case
            assert answers[port][0] == ("OK", "", b"\x08\x01")
            assert answers[port][2][:2] == ("NOT_FOUND", "unknown service")
    finally:
        await server.stop()


# -- HTTP: redirect, status, hang ------------------------------------------------------------------


@pytest.fixture
def http_helper(khelper: Path, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    with started(khelper, [f"--http-port={port}"], env) as proc:
        wait_for(lambda: can_connect(port), what="the HTTP port")
        yield port
        assert proc.poll() is None, "khelper died"


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        conn.close()


def test_redirect_and_status_through_a_real_client(http_helper: int) -> None:
    port = http_helper
    assert _get(port, "/redirect?loc=/healthz%3Fx%3D1") == (302, "/healthz?x=1", b"found\n")
    assert _get(port, "/redirect?a=1&loc=http%3A%2F%2Fother.example%3A8080%2Fp") == (
        302, "http://other.example:8080/p", b"found\n")
    assert _get(port, "/redirect") == (400, None, b"missing loc\n")
    assert _get(port, "/redirect?loc=%0d%0aX:%20y") == (400, None, b"invalid loc\n")
    assert _get(port, "/status?code=500") == (500, None, b"status 500\n")
    assert _get(port, "/status?code=399") == (399, None, b"status 399\n")
    assert _get(port, "/status?code=204") == (204, None, b"")
    assert _get(port, "/status?code=600") == (400, None, b"invalid code\n")
    assert _get(port, "/status?code=-1") == (400, None, b"invalid code\n")
    assert _get(port, "/status", "HEAD") == (400, None, b"")
    assert _get(port, "/statusx?code=500") == (200, None, b"ok\n")  # any other path: health


def test_hang_outlasts_the_request_time_limit(http_helper: int) -> None:
    port = http_helper
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    conn.request("GET", "/hang")
    with pytest.raises(TimeoutError):
        conn.getresponse()  # a real client gives up
    conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(11)  # beyond the 10 s a connection has to send its request
        readable, _, _ = select.select([raw], [], [], 0)
        assert readable == [], "a /hang connection was answered or closed"
    assert _get(port, "/") == (200, None, b"ok\n")  # and it held nothing up


_targets = st.one_of(
    st.sampled_from(["/redirect", "/status", "/hang", "/"]).flatmap(
        lambda path: st.lists(st.sampled_from(["loc", "code", "a", "", "loc=", "code="]), max_size=3).flatmap(
            lambda names: st.lists(st.text("%0123456789abcdefABCDEF/:?=&+ \t\x7f\x01ä", max_size=12),
                                   min_size=len(names), max_size=len(names)).map(
                lambda values: path + "?" + "&".join(f"{n}={v}" for n, v in zip(names, values, strict=True))))),
    st.text(max_size=40),
)


@given(method=st.sampled_from(["GET", "HEAD", "POST"]), target=_targets, code=st.integers(90, 610))
@example(method="GET", target="/status?code=%35%30%30", code=0)
@example(method="GET", target="/redirect?loc=%zz%4", code=0)
def test_replies_are_byte_for_byte_the_emulators(http_helper: int, method: str, target: str, code: int) -> None:
    if code % 2:  # half the examples: a valid code, to cover every reason phrase and the bodiless ones
        target = f"/status?code={code}"
    request = f"{method} {target} HTTP/1.0\r\n\r\n".encode()
    if b"\n" in request[:-4]:
        request = request.split(b"\n")[0] + b"\r\n\r\n"
    expected = httpanswers.answer(request, healthy=True)
    with socket.create_connection(("127.0.0.1", http_helper), timeout=10) as raw:
        raw.sendall(request)
        if expected is None:
            readable, _, _ = select.select([raw], [], [], 0.2)
            assert readable == []
            return
        reply = b""
        while chunk := raw.recv(4096):
            reply += chunk
    assert reply == expected


def test_the_image_build_notices_a_changed_khelper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kubeharness env`` skips the image build while its stamp matches the sources' digest: a change to
    khelper.c must change the digest, or the test image would keep an old khelper."""
    from kubeharness.env import images

    copy = tmp_path / "images"
    shutil.copytree(images.SOURCES, copy)
    monkeypatch.setattr(images, "SOURCES", copy)
    before = images.sources_digest()
    assert images.sources_digest() == before
    source = copy / "khelper" / "khelper.c"
    source.write_text(source.read_text() + "\n/* changed */\n")
    assert images.sources_digest() != before
