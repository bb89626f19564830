"""The ``grpc`` handler, as kubelet's ``pkg/probe/grpc``: ``grpc.health.v1.Health/Check`` for the probe's
service on host:port, plain text, on a fresh channel (and a fresh connection) per probe, closed after.

Like kubelet (grpc-go's blocking dial, then the call, under one deadline), the call waits for the
connection and the answer within the timeout; which of the two it was still waiting for when the time ran
out picks the text. Only SERVING succeeds; the texts are kubelet's:

- no connection in time (refused, nothing listening, no HTTP/2): ``timeout: failed to connect service
  "host:port" within 1s: context deadline exceeded`` (grpc-go keeps redialling a refused port until the
  deadline, and so does grpc core);
- no answer in time: ``timeout: health rpc did not complete within 1s``;
- UNIMPLEMENTED: ``error: this server does not implement the grpc health protocol
  (grpc.health.v1.Health): <message>``;
- another status (NOT_FOUND for an unknown service): ``error: health rpc probe failed: rpc error:
  code = NotFound desc = unknown service``;
- not SERVING: ``service unhealthy (responded with "NOT_SERVING")``; SERVING: ``service healthy``.

The timeout: grpc.aio deadlines run on real time, which a virtual clock does not move, so the call gets
no deadline of its own; :func:`within` on the agent's clock cancels it (the server sees the stream
cancelled). On the real clock that is the same timeout; on a virtual clock a hung server times out when
the test moves time past it, and never because the machine is slow. The cost: the server is not told the
deadline (no ``grpc-timeout`` header), which a health servicer has no use for.
"""

from __future__ import annotations

import ipaddress

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeharness.agent.prober.handlers.http import USER_AGENT
from kubeharness.agent.prober.handlers.targets import join_host_port
from kubeharness.agent.prober.handlers.texts import go_duration, go_quote, rpc_error
from kubeharness.agent.prober.outcome import Outcome, ProbeResult
from kubeharness.agent.prober.timeout import ProbeTimeout, within
from kubeharness.clock import Clock

CHANNEL_OPTIONS = [
    ("grpc.primary_user_agent", USER_AGENT),
    ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, not one shared with another channel
    ("grpc.enable_http_proxy", 0),  # kubelet's probes use no proxy
    ("grpc.enable_retries", 0),
]


async def grpc_health(clock: Clock, *, host: str, port: int, service: str, timeout_s: float) -> Outcome:
    """Check ``service``'s health on ``host:port``: SUCCESS only when it answers SERVING."""
    address = join_host_port(host, port)
    channel = grpc.aio.insecure_channel(_target(host, address), options=CHANNEL_OPTIONS)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        # wait_for_ready: the call waits for the connection as grpc-go's blocking dial does (a refused port
        # is redialled), and costs half of awaiting channel_ready() before the call
        call = stub.Check(health_pb2.HealthCheckRequest(service=service), wait_for_ready=True)
        try:
            reply = await within(clock, timeout_s, call)
        except ProbeTimeout:
            if channel.get_state() != grpc.ChannelConnectivity.READY:
                return _failure(f"timeout: failed to connect service {go_quote(address)} within "
                                f"{go_duration(timeout_s)}: context deadline exceeded")
            return _timed_out(timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return _failure("error: this server does not implement the grpc health protocol "
                                f"(grpc.health.v1.Health): {err.details() or ''}")
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return _timed_out(timeout_s)
            return _failure(f"error: health rpc probe failed: {rpc_error(err)}")
    finally:
        await channel.close(None)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        try:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except ValueError:  # a value this proto does not know: Go prints its number
            name = str(reply.status)
        return _failure(f"service unhealthy (responded with {go_quote(name)})")
    return Outcome(ProbeResult.SUCCESS, "service healthy")


def _target(host: str, address: str) -> str:
    """The channel's target: an IP address skips the DNS resolver (cheaper), a name goes through it."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return address
    return f"ipv{version}:{address}"


def _failure(output: str) -> Outcome:
    return Outcome(ProbeResult.FAILURE, output)


def _timed_out(timeout_s: float) -> Outcome:
    return _failure(f"timeout: health rpc did not complete within {go_duration(timeout_s)}")
