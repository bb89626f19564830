"""The ``tcpSocket`` handler, as kubelet's ``pkg/probe/tcp``: a TCP connection to host:port within the
timeout succeeds (and is closed at once, nothing sent); a refused, unreachable or timed-out connection is
a failure with Go's dial error text (``dial tcp 10.1.2.3:8080: connect: connection refused``,
``dial tcp 10.1.2.3:8080: i/o timeout``).

kubelet's dialer also sets ``SO_LINGER`` to one second to shorten TIME-WAIT; on Linux a non-zero linger
does not do that (only a zero one does, by resetting the connection), and a lingering ``close`` could
block the event loop, so it is left out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from kubeharness.agent.prober.handlers.targets import join_host_port
from kubeharness.agent.prober.handlers.texts import dial_error, dial_timeout
from kubeharness.agent.prober.outcome import Outcome, ProbeResult
from kubeharness.agent.prober.timeout import ProbeTimeout, within
from kubeharness.clock import Clock


async def tcp_socket(clock: Clock, *, host: str, port: int, timeout_s: float) -> Outcome:
    """Open a TCP connection to ``host:port`` and close it; FAILURE with the reason if it cannot be opened."""
    address = join_host_port(host, port)
    try:
        await within(clock, timeout_s, _connect(host, port))
    except ProbeTimeout:
        return Outcome(ProbeResult.FAILURE, dial_timeout(address))
    except OSError as err:
        return Outcome(ProbeResult.FAILURE, dial_error(address, err))
    return Outcome(ProbeResult.SUCCESS, "")


async def _connect(host: str, port: int) -> None:
    """Connect and close. An IP address (the pod IP, nearly always) goes straight to a socket, which costs
    half of what a transport does; a name is resolved first."""
    loop = asyncio.get_running_loop()
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
        transport.close()
        return
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
