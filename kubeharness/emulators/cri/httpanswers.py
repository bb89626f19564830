"""What an emulated container's ``--http-port`` answers: the bytes of each reply, as ``khelper`` sends them.

A pure function of the request's bytes and the container's health, used by ``listeners`` and, as the
oracle, by the tests that compare the real ``khelper`` with it byte for byte. The request line decides,
whatever the method (a HEAD gets no body):

- ``/redirect?loc=L``: ``302 Found`` with ``Location: L``, L percent-decoded (``%XX``; a broken escape
  and ``+`` are kept as they are); a path or an absolute URL to another host. No ``loc`` or an empty
  one: ``400`` "missing loc"; control characters in it: ``400`` "invalid loc".
- ``/status?code=N``: status N for N in 100-599 (ASCII digits), body ``status N``; anything else ``400``
  "invalid code". 1xx, 204 and 304 carry neither a body nor a Content-Length.
- ``/hang``: no answer (None); the connection stays open until the client closes it or the container
  stops.
- any other path, or a request that does not parse: the health answer, ``200 OK`` "ok" while healthy,
  ``503 Service Unavailable`` "unhealthy" from ``--unhealthy-after`` on.

Every reply is HTTP/1.0 with ``Connection: close``. The first query parameter of the name counts;
``a&b=1`` has ``a`` empty.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

REASONS = {
    100: "Continue", 101: "Switching Protocols", 102: "Processing", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request",
    422: "Unprocessable Content", 425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported", 507: "Insufficient Storage",
    511: "Network Authentication Required",
}


def reply(code: int, body: bytes, head: bool, location: bytes | None = None) -> bytes:
    """One HTTP/1.0 reply that closes the connection."""
    lines = [f"HTTP/1.0 {code} {REASONS.get(code, 'Unknown')}\r\n".encode()]
    if location is not None:
        lines.append(b"Location: " + location + b"\r\n")
    lines.append(b"Content-Type: text/plain; charset=utf-8\r\n")
    bodiless = code < 200 or code in (204, 304)
    if not bodiless:
        lines.append(f"Content-Length: {len(body)}\r\n".encode())
    lines.append(b"Connection: close\r\n\r\n")
    if not bodiless and not head:
        lines.append(body)
    return b"".join(lines)


def health_reply(healthy: bool, head: bool) -> bytes:
    return reply(200, b"ok\n", head) if healthy else reply(503, b"unhealthy\n", head)


def query_param(query: bytes, name: bytes) -> bytes | None:
    """The raw value of the first parameter called ``name``."""
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return value
    return None


def answer(request: bytes, healthy: bool) -> bytes | None:
    """The reply to ``request`` (its bytes as read), or None for ``/hang``: no reply at all."""
    head = request.startswith(b"HEAD ")
    line = request.split(b"\n", 1)[0].removesuffix(b"\r")
    parts = line.split(b" ")
    target = parts[1] if len(parts) > 1 else b""
    path, _, query = target.partition(b"?")
    if path == b"/hang":
        return None
    if path == b"/redirect":
        raw = query_param(query, b"loc")
        if not raw:
            return reply(400, b"missing loc\n", head)
        location = unquote_to_bytes(raw)
        if any(byte < 0x20 or byte == 0x7F for byte in location):
            return reply(400, b"invalid loc\n", head)
        return reply(302, b"found\n", head, location)
    if path == b"/status":
        raw = query_param(query, b"code")
        text = unquote_to_bytes(raw) if raw is not None else b""
        if not (text.isdigit() and 100 <= int(text) <= 599):
            return reply(400, b"invalid code\n", head)
        code = int(text)
        return reply(code, f"status {code}\n".encode(), head)
    return health_reply(healthy, head)
