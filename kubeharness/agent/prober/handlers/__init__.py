"""The prober's four handlers, as kubelet's ``pkg/probe/{http,tcp,grpc,exec}`` run them.

Each handler runs one probe and returns an :class:`~kubeharness.agent.prober.outcome.Outcome`: a probe
that ran and failed (refused, timed out, a bad status, a non-zero exit) is a ``FAILURE`` with kubelet's
output text, never an exception. :class:`~kubeharness.agent.prober.outcome.ProbeError` is raised only for
a probe that could not run (an unknown port name, a runtime error on ExecSync, an HTTP body that broke
off): kubelet's ``prober.go`` retries those up to three times and then throws the result away, and so does
our :mod:`kubeharness.agent.prober.prober`, which calls these handlers.

- :mod:`.targets`: a probe's host (the action's, else the pod IP) and port (a number or a port name);
- :mod:`.http`: ``httpGet``, through aiohttp's client, redirects followed by hand as Go's client does;
- :mod:`.tcp`: ``tcpSocket``, a connection opened and closed;
- :mod:`.grpc`: ``grpc``, ``grpc.health.v1.Health/Check`` on a fresh channel;
- :mod:`.exec`: ``exec``, CRI ExecSync through the agent's runtime client;
- :mod:`.texts`: kubelet's (Go's) error texts, rebuilt from Python's errors.

Every timeout runs on the agent's clock through :func:`~kubeharness.agent.prober.timeout.within`.
"""

from kubeharness.agent.prober.handlers.exec import exec_command
from kubeharness.agent.prober.handlers.grpc import grpc_health
from kubeharness.agent.prober.handlers.http import http_get
from kubeharness.agent.prober.handlers.targets import probe_host, resolve_port
from kubeharness.agent.prober.handlers.tcp import tcp_socket

__all__ = ["exec_command", "grpc_health", "http_get", "probe_host", "resolve_port", "tcp_socket"]
