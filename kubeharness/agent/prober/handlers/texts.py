"""kubelet's output texts, rebuilt in Python.

A kubelet probe's output is often a Go error string (``dial tcp 10.1.2.3:80: connect: connection
refused``, ``Get "http://...": context deadline exceeded ...``). Python's errors are not Go's, so these
helpers rebuild the same shapes from what Python reports: Go's quoting (``%q``), durations (``%v`` of a
``time.Duration``: ``1s``, ``1m30s``, ``500ms``), syscall error texts (lower-case ``strerror``), gRPC
status errors (``rpc error: code = NotFound desc = ...``).
"""

from __future__ import annotations

import errno
import json
import os
import socket

import grpc

# Go's names of the gRPC codes (codes.Code.String()), which differ from Python's enum names.
_GO_CODES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied", grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def go_quote(text: str) -> str:
    """``text`` quoted as Go's ``%q`` does (near enough: JSON's escapes for the rare control character)."""
    return json.dumps(text, ensure_ascii=False)


def go_duration(seconds: float) -> str:
    """``seconds`` as Go prints a ``time.Duration`` (whole milliseconds): ``1s``, ``1.5s``, ``2m0s``, ``500ms``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    if ms < 1000:
        return f"{sign}{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return f"{sign}{secs}"


def errno_text(err: OSError) -> str:
    """Go's text for a syscall error: ``strerror`` in lower case (``connection refused``)."""
    if err.errno is None:
        return str(err) or type(err).__name__
    message = os.strerror(err.errno)
    return message[:1].lower() + message[1:]


def dial_error(address: str, err: BaseException) -> str:
    """Go's ``net.Dial`` error for a failed connection to ``address`` (``host:port``)."""
    if isinstance(err, socket.gaierror):
        host = address.rsplit(":", 1)[0].strip("[]")
        return f"dial tcp: lookup {host}: no such host"
    if isinstance(err, OSError) and err.errno is not None:
        op = "connect" if err.errno in _CONNECT_ERRNOS else "socket"
        return f"dial tcp {address}: {op}: {errno_text(err)}"
    return f"dial tcp {address}: {err}"


def dial_timeout(address: str) -> str:
    """Go's ``net.Dial`` error when the connection was not made within the timeout."""
    return f"dial tcp {address}: i/o timeout"


def rpc_error(err: grpc.aio.AioRpcError) -> str:
    """A gRPC status error as grpc-go prints it."""
    code = _GO_CODES.get(err.code(), str(err.code()))
    return f"rpc error: code = {code} desc = {err.details() or ''}"


_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET,
                   errno.EADDRNOTAVAIL}
