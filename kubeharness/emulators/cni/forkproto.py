"""The wire protocol between the C shim (``cnishim.c``) and the CNI fork server (``forkserver``).

``forkserver`` uses it to read requests and write frames; tests and Python clients use ``encode_request``
to speak as the shim does. The C shim implements the same protocol by hand: a change here is a change
there, and ``PROTOCOL`` names the version both sides check.

Protocol, on a unix stream socket; integers are unsigned 32-bit big-endian; a *frame* is one kind byte,
a length and that many payload bytes:

    server -> client   frame h "kubeharness-cni/1"      (or frame r REASON, then close: run the plugin yourself)
    client -> server   u32 umask, then three blobs (u32 length + bytes): cwd, environ ("K=V" entries,
                       each ended by NUL), stdin
    server -> client   frames o (stdout bytes) and e (stderr bytes), any number, in the order written
    server -> client   frame x (u32 exit code) or frame k (u32 signal number), then close

The client sends nothing after its request and never half-closes: end of stream from it means the
runtime killed it. A malformed request is answered like a plugin error (a CNI error document with code
``INTERNAL`` on stdout, exit 1).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

PROTOCOL = b"kubeharness-cni/1"
HELLO, REFUSED, STDOUT, STDERR, EXITED, KILLED = b"h", b"r", b"o", b"e", b"x", b"k"
MAX_CWD, MAX_ENVIRON, MAX_STDIN = 4096, 1 << 20, 16 << 20
U32 = struct.Struct(">I")


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + U32.pack(len(payload)) + payload


@dataclass
class Request:
    """One invocation as the shim sent it."""

    umask: int
    cwd: str
    environ: dict[str, str]
    stdin: bytes


def encode_request(request: Request) -> bytes:
    """The request's bytes on the wire (what the C shim sends; for Python clients and tests)."""
    env = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in request.environ.items())
    out = bytearray(U32.pack(request.umask))
    for blob in (os.fsencode(request.cwd), env, request.stdin):
        out += U32.pack(len(blob)) + blob
    return bytes(out)


def parse_request(data: bytes | bytearray) -> Request | None:
    """The request in ``data``, or None while it is incomplete; raises ValueError when it is malformed."""
    if len(data) < 4:
        return None
    umask, offset, blobs = U32.unpack_from(data)[0], 4, []
    for limit, what in ((MAX_CWD, "cwd"), (MAX_ENVIRON, "environ"), (MAX_STDIN, "stdin")):
        if len(data) < offset + 4:
            return None
        size = U32.unpack_from(data, offset)[0]
        if size > limit:
            raise ValueError(f"{what} of {size} bytes is over the limit of {limit}")
        if len(data) < offset + 4 + size:
            return None
        blobs.append(bytes(data[offset + 4:offset + 4 + size]))
        offset += 4 + size
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes after the request")
    environ = {}
    for entry in blobs[1].split(b"\0")[:-1]:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise ValueError(f"environment entry {entry[:40]!r} is not KEY=VALUE")
        environ[os.fsdecode(key)] = os.fsdecode(value)
    if blobs[1] and not blobs[1].endswith(b"\0"):
        raise ValueError("the environment does not end with NUL")
    return Request(umask & 0o777, os.fsdecode(blobs[0]), environ, blobs[2])
