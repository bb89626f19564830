"""Where a probe goes: its host and port, resolved as kubelet's ``pkg/probe/util.go`` and ``prober.go`` do.

The host is the action's ``host`` when set, else the pod IP. The port is a number, a container port's
name, or (kubelet's "last ditch effort") a number written as a string; it must lie in 1-65535.
"""

from __future__ import annotations

import re

from kubeharness.agent.pod.model import Container
from kubeharness.agent.prober.handlers.texts import go_quote
from kubeharness.agent.prober.outcome import ProbeError

_ATOI = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi accepts


def resolve_port(port: int | str, container: Container) -> int:
    """The port number ``port`` stands for in ``container``; :class:`ProbeError` with kubelet's words if none."""
    if isinstance(port, int):
        number = port
    else:
        named = next((p.container_port for p in container.ports if p.name == port), None)
        if named is not None:
            number = named
        elif _ATOI.fullmatch(port):
            number = int(port)
        else:
            raise ProbeError(f"port {go_quote(port)} not found")
    if 0 < number < 65536:
        return number
    raise ProbeError(f"invalid port number: {number}")


def probe_host(action_host: str, pod_ip: str) -> str:
    """The action's host, else the pod IP; :class:`ProbeError` if there is neither (the pod has no IP yet)."""
    host = action_host or pod_ip
    if not host:
        raise ProbeError("no host to probe: the probe names none and the pod has no IP")
    return host


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (Go's ``net.JoinHostPort``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
