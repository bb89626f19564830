"""Serving a protobuf service from plain async methods, with errors mapped to gRPC codes at one edge.

``add_service(server, service_descriptor, impl)`` registers one generic handler for a service whose
methods are looked up on ``impl`` by RPC name (``RunPodSandbox`` -> ``impl.RunPodSandbox``). Each
method receives the request message and returns the response message (or, for server-streaming
RPCs, an async iterator of them). Every call goes through :func:`_guard`, which maps
:class:`~kubeharness.errors.KubeharnessError` to its status code and any other exception to INTERNAL
without leaking a traceback to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from kubeharness.errors import KubeharnessError

log = logging.getLogger(__name__)

UnaryImpl = Callable[[Any], Awaitable[Any]]
StreamImpl = Callable[[Any], AsyncIterator[Any]]


def _unary(name: str, fn: UnaryImpl) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(request)
        except KubeharnessError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the emulator's log")

    return call


def _stream(name: str, fn: StreamImpl) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in fn(request):
                yield item
        except KubeharnessError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see the emulator's log")

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


def method_handlers(service: ServiceDescriptor, impl: object) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
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
                _stream(method.name, fn),
                request_deserializer=request_cls.FromString,
                response_serializer=_serializer(response_cls),
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.name, fn),
                request_deserializer=request_cls.FromString,
                response_serializer=_serializer(response_cls),
            )
    return handlers


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, impl: object) -> None:
    """Register ``impl`` as the implementation of ``service`` on ``server``."""
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, method_handlers(service, impl)),)
    )
