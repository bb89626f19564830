"""The prober handlers' pure parts: a probe's host and port (kubelet's ``ResolveContainerPort``), the Go
texts the outputs are written in, the headers an httpGet probe sends, and the package's public surface.
The handlers themselves are tested against real servers in ``test_prober_handlers_{http,net,exec}.py``.
"""

from __future__ import annotations

import errno
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeharness.agent.pod.model import Container, ContainerPort
from kubeharness.agent.prober import handlers
from kubeharness.agent.prober.handlers import probe_host, resolve_port
from kubeharness.agent.prober.handlers.http import USER_AGENT, probe_headers
from kubeharness.agent.prober.handlers.targets import join_host_port
from kubeharness.agent.prober.handlers.texts import dial_error, go_duration, go_quote
from kubeharness.agent.prober.outcome import ProbeError

APP = Container(name="app", image="i", ports=(ContainerPort(8080, name="http"), ContainerPort(9090, name="grpc"),
                                              ContainerPort(0, name="zero")))


def test_the_public_surface() -> None:
    assert sorted(handlers.__all__) == ["exec_command", "grpc_health", "http_get", "probe_host", "resolve_port",
                                        "tcp_socket"]


@pytest.mark.parametrize(("port", "number"), [
    (80, 80), (65535, 65535), (1, 1),
    ("http", 8080), ("grpc", 9090),
    ("8081", 8081), ("+443", 443), ("007", 7),  # a number written as a string (Go's Atoi)
])
def test_resolve_port(port: int | str, number: int) -> None:
    assert resolve_port(port, APP) == number


@pytest.mark.parametrize(("port", "message"), [
    ("metrics", 'port "metrics" not found'),
    ("", 'port "" not found'),
    ("HTTP", 'port "HTTP" not found'),  # names are exact
    (" 80", 'port " 80" not found'),
    ("zero", "invalid port number: 0"),
    (0, "invalid port number: 0"),
    (65536, "invalid port number: 65536"),
    (-1, "invalid port number: -1"),
    ("-5", "invalid port number: -5"),
])
def test_a_port_that_cannot_be_resolved(port: int | str, message: str) -> None:
    with pytest.raises(ProbeError) as err:
        resolve_port(port, APP)
    assert str(err.value) == message


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_every_number_is_in_range_or_refused(number: int) -> None:
    if 0 < number < 65536:
        assert resolve_port(number, APP) == resolve_port(str(number), APP) == number
    else:
        with pytest.raises(ProbeError, match=f"^invalid port number: {number}$"):
            resolve_port(number, APP)


def test_probe_host() -> None:
    assert probe_host("", "10.1.2.3") == "10.1.2.3"
    assert probe_host("127.0.0.1", "10.1.2.3") == "127.0.0.1"
    with pytest.raises(ProbeError, match="no IP"):
        probe_host("", "")


@pytest.mark.parametrize(("host", "joined"), [("10.0.0.1", "10.0.0.1:80"), ("::1", "[::1]:80"),
                                              ("node.example", "node.example:80")])
def test_join_host_port(host: str, joined: str) -> None:
    assert join_host_port(host, 80) == joined


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1s"), (10, "10s"), (0, "0s"), (0.5, "500ms"), (1.5, "1.5s"), (60, "1m0s"), (90, "1m30s"),
    (3600, "1h0m0s"), (3725.25, "1h2m5.25s"), (0.001, "1ms"),
])
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_go_quote() -> None:
    assert go_quote("sleep 5") == '"sleep 5"'
    assert go_quote('sh -c "x"') == '"sh -c \\"x\\""'


@pytest.mark.parametrize(("err", "text"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "dial tcp 10.0.0.1:80: connect: connection refused"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "dial tcp 10.0.0.1:80: connect: no route to host"),
    (OSError(errno.ENETUNREACH, "x"), "dial tcp 10.0.0.1:80: connect: network is unreachable"),
    (OSError(errno.EMFILE, "x"), "dial tcp 10.0.0.1:80: socket: too many open files"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dial tcp: lookup 10.0.0.1: no such host"),
])
def test_dial_error(err: OSError, text: str) -> None:
    assert dial_error("10.0.0.1:80", err) == text


header_names = st.sampled_from(["User-Agent", "user-agent", "Accept", "ACCEPT", "Host", "X-A", "x-a", "Connection"])


@given(st.lists(st.tuples(header_names, st.sampled_from(["", "v", "close", "w"])), max_size=6))
def test_probe_headers_follow_kubelets_rules(given_headers: list[tuple[str, str]]) -> None:
    headers, host, skip = probe_headers(given_headers)

    def first(name: str) -> str | None:
        return next((v for k, v in given_headers if k.lower() == name.lower()), None)

    assert "Host" not in headers and host == (first("Host") or None)
    agent = first("User-Agent")
    expected_agent = [USER_AGENT] if agent is None else [agent] if agent else []
    assert headers.getall("User-Agent", []) == expected_agent
    assert ("User-Agent" in skip) == (agent == "")
    accept = first("Accept")
    if accept is None:
        assert headers.getall("Accept") == ["*/*"]
    elif accept == "":
        assert "Accept" not in headers and "Accept" in skip
    else:
        assert headers.getall("Accept") == [v for k, v in given_headers if k.lower() == "accept"]
    assert "close" in [v.lower() for v in headers.getall("Connection")]
    assert "Accept-Encoding" in skip
    assert all(k in ("User-Agent", "Accept", "Host", "X-A", "Connection") for k in headers)  # canonical names
