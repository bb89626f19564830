"""The CRI proxy's server: every RuntimeService and ImageService call forwarded to a real runtime.

``CriProxy(listen, upstream, engine)`` serves CRI on the unix socket ``listen`` and forwards each call,
unary or server-streaming, as raw bytes to ``upstream`` (containerd, CRI-O, the CRI emulator): messages
are neither decoded nor re-encoded, so a 10,000-container list costs the proxy a copy, not a parse.
Methods this proxy's CRI definition does not know are forwarded as unary calls, so a newer kubelet
still works through it. The client's deadline and its own metadata go along; the runtime's status comes
back unchanged (code and message). A runtime that is down is UNAVAILABLE, as a direct call would see.

Faults: before forwarding, the proxy asks the fault engine as ``proxy``, with rules written for ``cri``
applying too (the same plan runs against the emulator and, through the proxy, against a real runtime).
Only when a rule in force concerns the method is the request decoded and its pod looked up
(:mod:`kubeharness.proxy.index`); what each action does is :mod:`kubeharness.faults.act`'s. A ``crash``
ends the proxy process: clients see UNAVAILABLE until it is restarted (``--restart-on-crash``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory

from kubeharness.clock import Clock, RealClock
from kubeharness.errors import WithCode
from kubeharness.faults import FaultEngine, FaultPlan
from kubeharness.faults.act import perform, perform_stream
from kubeharness.faults.control import ControlServer
from kubeharness.faults.cri import call_info, ids_named
from kubeharness.grpcserve import answering, serve_unix, wait_for_stop_signal
from kubeharness.proxy.index import PodIndex
from kubeharness.wire.cri import api_pb2 as cri

log = logging.getLogger(__name__)

SERVICES = ("runtime.v1.RuntimeService", "runtime.v1.ImageService")
# The proxy limits nothing itself: the client and the runtime keep their own limits (kubelet: 16 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# A runtime that restarts is reached again within a second (gRPC's default backoff grows to 2 minutes);
# meanwhile calls fail fast with UNAVAILABLE, as direct calls to a runtime that is down do.
UPSTREAM_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # the client retries if it wants to; buffering for retries costs every call
]
# Metadata that belongs to the connection, not to the call: gRPC sets it again on the upstream call.
INTERNAL_HINT = "see the CRI proxy's log"
_CONNECTION_KEYS = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding"})


class UpstreamStatus(WithCode):
    """The runtime behind the proxy answered with this status; the client gets it unchanged."""


def _upstream_error(err: grpc.aio.AioRpcError) -> UpstreamStatus:
    return UpstreamStatus(err.code(), err.details() or "")


class _Method:
    """One CRI method as the proxy sees it: its name, whether it streams, how to decode its request."""

    def __init__(self, path: str, streaming: bool, request_cls: Any) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.streaming = streaming
        self.request_cls = request_cls


def _known_methods() -> dict[str, _Method]:
    methods: dict[str, _Method] = {}
    for service_name in SERVICES:
        service = cri.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[-1]]
        for m in service.methods:
            path = f"/{service.full_name}/{m.name}"
            methods[path] = _Method(path, m.server_streaming, message_factory.GetMessageClass(m.input_type))
    return methods


def _forwarded_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(
        (key, value) for key, value in (context.invocation_metadata() or ())
        if not key.startswith(":") and key not in _CONNECTION_KEYS
    )


class CriProxy:
    """Serves CRI on ``listen`` and forwards every call to ``upstream``, applying ``engine``'s rules."""

    LEARNED = frozenset({"RunPodSandbox", "CreateContainer", "RemovePodSandbox", "RemoveContainer"})

    def __init__(self, listen: str, upstream: str, engine: FaultEngine | None = None, clock: Clock | None = None,
                 fault_control: Path | None = None) -> None:
        self.listen = listen.removeprefix("unix://")
        self.upstream = upstream if "://" in upstream else f"unix://{upstream}"
        self.clock = clock or RealClock()
        self.engine = engine if engine is not None else FaultEngine(FaultPlan(), self.clock)
        self.control = ControlServer(self.engine, fault_control) if fault_control is not None else None
        self._methods = _known_methods()
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._streams: dict[str, grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self.index = PodIndex(self._call)

    # -- the upstream side ---------------------------------------------------------------------------------

    def _unary_callable(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        mc = self._unary.get(path)
        if mc is None:
            assert self._channel is not None
            mc = self._unary[path] = self._channel.unary_unary(path, None, None)
        return mc

    async def _call(self, path: str, raw: bytes, deadline_s: float | None,
                    metadata: tuple[tuple[str, str | bytes], ...] = ()) -> bytes:
        """One unary call to the runtime, bytes in and out; its errors raise ``AioRpcError``."""
        return await self._unary_callable(path)(raw, timeout=deadline_s, metadata=metadata or None)

    async def _relay(self, path: str, raw: bytes, deadline_s: float | None,
                     metadata: tuple[tuple[str, str | bytes], ...]) -> AsyncIterator[bytes]:
        """A server stream from the runtime, message by message; cancelled with the client's stream."""
        mc = self._streams.get(path)
        if mc is None:
            assert self._channel is not None
            mc = self._streams[path] = self._channel.unary_stream(path, None, None)
        call = mc(raw, timeout=deadline_s, metadata=metadata or None)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise _upstream_error(err) from None
        finally:
            call.cancel()

    # -- the client side -----------------------------------------------------------------------------------

    async def _decision(self, method: _Method | None, name: str, raw: bytes) -> tuple[Any, Any]:
        """(request decoded or None, the engine's decision or None) for one call."""
        learned = name in self.LEARNED
        watched = self.engine.watches(name, "proxy", "cri")
        if method is None or not (learned or watched):
            return None, None
        try:
            request = method.request_cls.FromString(raw)
        except Exception:  # the runtime will refuse it with its own words; no rule can match it
            return None, None
        if not watched:
            return request, None
        await self.index.resolve(*ids_named(request))
        info = call_info(request, self.index.sandbox, self.index.container)
        return request, self.engine.decide("proxy", name, info, also=("cri",))

    def _unary_handler(self, path: str, method: _Method | None) -> Callable[..., Any]:
        name = path.rsplit("/", 1)[-1]

        async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metadata = _forwarded_metadata(context)
            async with answering(context, name, INTERNAL_HINT):
                request, decision = await self._decision(method, name, raw)

                async def work() -> bytes:
                    try:
                        response = await self._call(path, raw, context.time_remaining(), metadata)
                    except grpc.aio.AioRpcError as err:
                        raise _upstream_error(err) from None
                    if request is not None and name in self.LEARNED:
                        self.index.learn(name, request, response)
                    return response

                if decision is None:
                    return await work()
                response: bytes = await perform(decision, work, self.clock)
                return response
            raise AssertionError("not reached: a failure aborts the call")

        return handle

    def _stream_handler(self, path: str, method: _Method) -> Callable[..., Any]:
        name = method.name

        async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
            metadata = _forwarded_metadata(context)
            async with answering(context, name, INTERNAL_HINT):
                _, decision = await self._decision(method, name, raw)

                def open_stream() -> AsyncIterator[bytes]:
                    return self._relay(path, raw, context.time_remaining(), metadata)

                stream = open_stream() if decision is None else perform_stream(decision, open_stream, self.clock)
                async for item in stream:
                    yield item

        return handle

    def _handler(self, path: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        if not path.startswith(tuple(f"/{s}/" for s in SERVICES)):
            return None  # not CRI: UNIMPLEMENTED, as the runtime would answer
        method = self._methods.get(path)
        if method is not None and method.streaming:
            return grpc.unary_stream_rpc_method_handler(self._stream_handler(path, method))
        return grpc.unary_unary_rpc_method_handler(self._unary_handler(path, method))

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.upstream, options=UPSTREAM_OPTIONS)
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for path in self._methods:
            handler = self._handler(path)
            assert handler is not None
            handlers[path] = handler
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        server.add_generic_rpc_handlers((_Handlers(handlers, self._handler),))
        serve_unix(server, self.listen)  # 0600 from its first moment
        await server.start()
        self._server = server
        if self.control is not None:
            await self.control.start()
        log.info("CRI proxy on unix://%s forwarding to %s", self.listen, self.upstream)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self.control is not None:
            await self.control.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)

    async def __aenter__(self) -> CriProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Handlers of the known methods built once; anything else under the CRI services built on demand."""

    def __init__(self, known: dict[str, grpc.RpcMethodHandler[Any, Any]],
                 other: Callable[[str], grpc.RpcMethodHandler[Any, Any] | None]) -> None:
        self._known = known
        self._other = other

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        handler = self._known.get(path)
        return handler if handler is not None else self._other(path)


async def serve(listen: str, upstream: str, faults: Path | None = None, fault_seed: int = 0,
                fault_log: Path | None = None, fault_control: Path | None = None) -> None:
    """Run a proxy until SIGINT or SIGTERM (the ``kubeharness cri proxy`` daemon)."""
    clock = RealClock()
    engine = FaultEngine.from_file(faults, clock, fault_seed, fault_log)
    control = fault_control or Path(listen.removeprefix("unix://") + ".faults")
    proxy = CriProxy(listen, upstream, engine, clock, control)
    await proxy.start()
    print(f"kubeharness CRI proxy listening on unix://{proxy.listen}, forwarding to {proxy.upstream}", flush=True)
    await wait_for_stop_signal()
    await proxy.stop()
