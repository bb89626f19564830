"""Timed CRI calls: a client that records each RPC's latency and each failure instead of raising.

Every awaited call is timed with ``time.perf_counter_ns`` from the moment the call is made to the
moment its response is decoded, which is what a kubelet waiting on the runtime experiences. A failed
call is recorded as (RPC, status code, details) and answers None, so one failure is counted and
reported but never ends the benchmark with a traceback.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from kubeharness.wire.cri import api_pb2_grpc as api_grpc

MiB = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * MiB  # List* answers with 10,000 pods are several MiB
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
MAX_DETAILS = 300

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def grpc_target(endpoint: str) -> str:
    """``unix:///run/x.sock``, ``unix:/run/x.sock`` or ``/run/x.sock`` -> a gRPC target string."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def open_channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(grpc_target(endpoint), options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class Failure:
    """One kind of failed call: which RPC, the status code name and the (truncated) details."""

    rpc: str
    code: str
    details: str


@dataclass
class Recorder:
    """Latency samples (ns) per RPC and failures, shared by every client of one phase."""

    samples: dict[str, list[int]] = field(default_factory=dict)
    failures: Counter[Failure] = field(default_factory=Counter)

    def add(self, rpc: str, elapsed_ns: int) -> None:
        self.samples.setdefault(rpc, []).append(elapsed_ns)

    def fail(self, rpc: str, code: str, details: str) -> None:
        self.failures[Failure(rpc, code, details[:MAX_DETAILS])] += 1

    def merge(self, others: Iterable[Recorder]) -> None:
        for other in others:
            for rpc, samples in other.samples.items():
                self.samples.setdefault(rpc, []).extend(samples)
            self.failures.update(other.failures)

    @property
    def failure_count(self) -> int:
        return sum(self.failures.values())


class TimedClient:
    """The CRI runtime and image services of one channel, with every call timed into a Recorder."""

    def __init__(self, channel: grpc.aio.Channel, recorder: Recorder, timeout_s: float) -> None:
        self.channel = channel
        self.runtime = api_grpc.RuntimeServiceStub(channel)
        self.images = api_grpc.ImageServiceStub(channel)
        self.recorder = recorder
        self.timeout_s = timeout_s

    async def call(
        self,
        rpc: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        extra_timeout_s: float = 0.0,
        record: bool = True,
    ) -> Resp | None:
        """Await ``method(request)``; its latency goes to the recorder when ``record``, failures always."""
        start = time.perf_counter_ns()
        try:
            response = await method(request, timeout=self.timeout_s + extra_timeout_s)
        except grpc.aio.AioRpcError as err:
            self.recorder.fail(rpc, err.code().name, err.details() or "")
            return None
        if record:
            self.recorder.add(rpc, time.perf_counter_ns() - start)
        return response
