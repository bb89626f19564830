"""Serving a protobuf service from plain async methods, with errors mapped to gRPC codes at one edge.

``add_service(server, service_descriptor, impl)`` registers one generic handler for a service whose
methods are looked up on ``impl`` by RPC name (``RunPodSandbox`` -> ``impl.RunPodSandbox``). Each
method receives the request message and returns the response message (or, for server-streaming
RPCs, an async iterator of them). Every call goes through :func:`_guard`, which maps
:class:`~kubeharness.errors.KubeharnessError` to its status code and any other exception to INTERNAL
without leaking a traceback to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from kubeharness import fsafe
from kubeharness.errors import FailedPrecondition, InvalidArgument, KubeharnessError

log = logging.getLogger(__name__)

class _Undecodable:
    """Stands in for a request whose bytes are not a valid message, so the handler can refuse it cleanly."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"malformed request: the bytes are not a valid {type_name} ({error})"


def _deserializer(request_cls: Any) -> Callable[[bytes], Any]:
    """Decode a request; undecodable bytes become an :class:`_Undecodable` instead of raising in gRPC."""
    from_string = request_cls.FromString
    type_name = request_cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return from_string(data)
        except Exception as err:
            return _Undecodable(type_name, err)

    return deserialize


UnaryImpl = Callable[[Any], Awaitable[Any]]
StreamImpl = Callable[[Any], AsyncIterator[Any]]


class Around(Protocol):
    """Wraps every call, how a fault engine steps in: ``around(name, request, work)`` for a unary call
    (returns the response), ``around.stream(name, request, open_stream)`` for a server stream (returns
    the stream the client gets)."""

    def __call__(self, method: str, request: Any, work: Callable[[], Awaitable[Any]]) -> Awaitable[Any]: ...

    def stream(
        self, method: str, request: Any, open_stream: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]: ...


# A status message travels percent-encoded in the trailing metadata, which clients cap: gRPC's default soft
# limit is 8 KiB for all of it (beyond it a call is refused with a growing probability, up to the 16 KiB hard
# limit), so a longer one could reach the client as RESOURCE_EXHAUSTED instead of its code. 4 KiB leaves room
# for the other trailers.
MAX_DETAILS_ENCODED = 4096


def _encoded_length(char: str) -> int:
    """How many bytes ``char`` takes in a grpc-message trailer (non-ASCII is percent-encoded UTF-8)."""
    if " " <= char <= "~" and char != "%":
        return 1
    return 3 * len(char.encode("utf-8", "surrogatepass"))


def bounded_details(message: str) -> str:
    """``message`` cut to fit a status trailer, saying how much was cut (an error that echoes a huge
    input stays readable and keeps its code)."""
    total = 0
    for index, char in enumerate(message):
        total += _encoded_length(char)
        if total > MAX_DETAILS_ENCODED - 64:
            return f"{message[:index]}... ({len(message) - index} more characters)"
    return message


@contextlib.asynccontextmanager
async def answering(
    context: grpc.aio.ServicerContext[Any, Any], name: str, internal: str = "see the emulator's log"
) -> AsyncIterator[None]:
    """The one place where a handler's exception becomes the call's status: a KubeharnessError its code and
    message, anything else INTERNAL with a short message (``internal`` says where to look) and the traceback
    in the log, never to the client."""
    try:
        yield
    except KubeharnessError as err:
        await context.abort(err.code, bounded_details(err.message))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("internal error in %s", name)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; {internal}")


def _unary(
    name: str, fn: UnaryImpl, around: Around | None = None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async with answering(context, name):
            if around is not None:
                return await around(name, request, lambda: fn(request))
            return await fn(request)

    return call


def _stream(
    name: str, fn: StreamImpl, around: Around | None = None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async with answering(context, name):
            stream = fn(request) if around is None else around.stream(name, request, lambda: fn(request))
            async for item in stream:
                yield item

    return call


def _message_class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


def _serializer(response_cls: Any) -> Callable[[Any], bytes]:
    """Serialize a response; a handler may hand back bytes it already encoded (large list answers)."""
    to_bytes = response_cls.SerializeToString

    def serialize(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        return bytes(to_bytes(response))

    return serialize


def method_handlers(
    service: ServiceDescriptor, impl: object, around: Around | None = None
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Build the handler table of ``service`` from the same-named methods of ``impl``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    method: MethodDescriptor
    for method in service.methods:
        fn = getattr(impl, method.name, None)
        if fn is None:
            raise TypeError(f"{type(impl).__name__} does not implement {service.full_name}/{method.name}")
        request_cls = _message_class(method.input_type)
        response_cls = _message_class(method.output_type)
        if method.client_streaming:
            raise TypeError(f"{method.full_name}: client streaming is not supported")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(method.name, fn, around),
                request_deserializer=_deserializer(request_cls),
                response_serializer=_serializer(response_cls),
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.name, fn, around),
                request_deserializer=_deserializer(request_cls),
                response_serializer=_serializer(response_cls),
            )
    return handlers


def add_service(
    server: grpc.aio.Server, service: ServiceDescriptor, impl: object, around: Around | None = None
) -> None:
    """Register ``impl`` as the implementation of ``service`` on ``server`` (every call wrapped by ``around``)."""
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, method_handlers(service, impl, around)),)
    )


def clear_stale_socket(path: str) -> None:
    """Make room for a server's unix socket: one left by a crashed server goes; a live server's socket or
    a file that is not a socket is refused (FAILED_PRECONDITION)."""
    try:
        fsafe.clear_stale_socket(path)
    except fsafe.FsafeError as err:
        raise FailedPrecondition(err.message) from None


def serve_unix(server: grpc.aio.Server, path: str) -> None:
    """Add the owner-only (0600) unix socket ``path`` to ``server``, reachable by nobody else at any moment
    whatever the umask (:func:`kubeharness.fsafe.serve_unix_socket`); a live server's socket or another file
    there is FAILED_PRECONDITION, a path too long for a unix socket INVALID_ARGUMENT."""
    if len(os.fsencode(path)) > fsafe.MAX_SOCKET_PATH:
        raise InvalidArgument(f"socket path {path!r} is longer than a unix socket path may be "
                              f"({fsafe.MAX_SOCKET_PATH} bytes)")
    try:
        fsafe.serve_unix_socket(path, lambda temporary: server.add_insecure_port(f"unix://{temporary}"))
    except fsafe.FsafeError as err:
        raise FailedPrecondition(err.message) from None


async def wait_for_stop_signal() -> None:
    """Return when the process gets SIGINT or SIGTERM: how a daemon's ``serve`` waits before stopping."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
