"""The ``httpGet`` handler, as kubelet's ``pkg/probe/http`` (``http.go``, ``request.go``) runs it.

- The URL: ``scheme://host:port`` (an IPv6 host in brackets) and the probe's path, its query kept.
- Headers: the probe's, plus ``User-Agent: kube-probe/1.36`` and ``Accept: */*`` unless the probe names
  them; a probe header with an empty value removes that header (Go's client sends no empty
  ``User-Agent``; kubelet deletes an empty ``Accept``). A ``Host`` header sets the request's host. No
  ``Accept-Encoding`` (kubelet's transport disables compression), and ``Connection: close``: kubelet
  keeps no connection alive, so every probe is a new connection.
- HTTPS without certificate verification.
- Status 200-399 succeeds; the body read (at most 10 KiB) is the output. 400 and above fail with
  "HTTP probe failed with statuscode: N".
- Redirects (301, 302, 303, 307, 308 with a ``Location``) to the same host name are followed, as Go's
  client follows them (the probe's headers kept; its ``Host`` kept only for a relative ``Location``),
  at most 10: the 10th redirect fails the probe ("stopped after 10 redirects"). A redirect to another
  host is not followed: the 3xx itself is the answer, a WARNING "Probe terminated redirects, Response
  body: ...", which counts as success and makes a ``ProbeWarning`` event.
- A transport error or the timeout is a failure with Go's text (``Get "URL": dial tcp ...: connect:
  connection refused``, ``Get "URL": context deadline exceeded (Client.Timeout exceeded while awaiting
  headers)``). A body that breaks off after the headers is an error in kubelet (``ReadAtMost`` fails), not
  a failure: :class:`ProbeError`, which the prober retries and then throws away.

The client is aiohttp's, redirects off (we follow them here) and no timeouts of its own: the whole probe,
redirects and body included, runs under :func:`within` on the agent's clock, as Go's ``Client.Timeout``
covers it all. A session per probe costs little next to the request (measured: about 0.05 ms of a
1 ms probe), so each probe has its own and nothing outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from kubeharness.agent.prober.handlers.targets import join_host_port
from kubeharness.agent.prober.handlers.texts import dial_error, errno_text, go_quote
from kubeharness.agent.prober.outcome import Outcome, ProbeError, ProbeResult
from kubeharness.agent.prober.timeout import ProbeTimeout, within
from kubeharness.clock import Clock

USER_AGENT = "kube-probe/1.36"
MAX_BODY_BYTES = 10 * 1024  # kubelet's maxRespBodyLength
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BAD_HOST = frozenset("/?#@\\")
_URL_SAFE = "/?:@!$&'()*+,;=-._~%"
_NO_TIMEOUTS = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)


def probe_url(scheme: str, host: str, port: int, path: str) -> URL:
    """The URL kubelet's ``formatURL`` builds: ``path`` parsed (its query kept as written, a fragment
    dropped from the request), scheme and host:port set; :class:`ProbeError` if that makes no URL (kubelet
    cannot build the request either)."""
    if path.startswith("//"):  # Go reads "//x/y" as host x and path /y, then replaces the host
        rest = path[2:]
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        path = rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    path = path.partition("#")[0]
    if not host or any(c.isspace() or c in _BAD_HOST for c in host) or not host.isprintable():
        raise ProbeError(f"parse {go_quote(f'{scheme.lower()}://{host}:{port}{path}')}: invalid host {go_quote(host)}")
    # percent-escape what may not go on a request line; escapes already there stay as written, as in Go
    text = f"{(scheme or 'http').lower()}://{join_host_port(host, port)}{quote(path, safe=_URL_SAFE)}"
    try:
        return URL(text, encoded=True)
    except ValueError as err:
        raise ProbeError(f"parse {go_quote(text)}: {err}") from None


def canonical_header(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``x-request-id`` becomes ``X-Request-Id``."""
    if not name or any(not (c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~")) for c in name):
        return name  # not a token: Go leaves it as it is
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def probe_headers(headers: Sequence[tuple[str, str]]) -> tuple[CIMultiDict[str], str | None, frozenset[str]]:
    """The request's headers, its host override, and the headers aiohttp must not add by itself."""
    given: CIMultiDict[str] = CIMultiDict((canonical_header(name), value) for name, value in headers)
    skip = {"Accept-Encoding"}
    host = given.get("Host") or None
    given.popall("Host", None)
    if "User-Agent" not in given:
        given["User-Agent"] = USER_AGENT
    else:
        agent = given.getone("User-Agent")  # Go sends the first value only, and none if it is empty
        del given["User-Agent"]
        if agent:
            given["User-Agent"] = agent
        else:
            skip.add("User-Agent")
    if "Accept" not in given:
        given["Accept"] = "*/*"
    elif not given.getone("Accept"):
        del given["Accept"]
        skip.add("Accept")
    if not any(v.lower() == "close" for v in given.getall("Connection", [])):
        given.add("Connection", "close")
    return given, host, frozenset(skip)


@dataclass
class _Progress:
    url: URL
    reading_body: bool = False


async def http_get(clock: Clock, *, scheme: str, host: str, port: int, path: str,
                   headers: Sequence[tuple[str, str]], timeout_s: float) -> Outcome:
    """GET the probe's URL: SUCCESS for 200-399 (WARNING for a redirect not followed), FAILURE otherwise."""
    url = probe_url(scheme, host, port, path)
    request_headers, host_override, skip = probe_headers(headers)
    progress = _Progress(url)
    try:
        return await within(clock, timeout_s, _probe(url, request_headers, host_override, skip, progress))
    except ProbeTimeout:
        if progress.reading_body:
            raise ProbeError("context deadline exceeded (Client.Timeout or context cancellation while reading body)"
                             ) from None
        return _failed(progress.url, "context deadline exceeded (Client.Timeout exceeded while awaiting headers)")


def _failed(url: URL, reason: str) -> Outcome:
    return Outcome(ProbeResult.FAILURE, f"Get {go_quote(str(url))}: {reason}")


async def _probe(url: URL, headers: CIMultiDict[str], host_override: str | None, skip: frozenset[str],
                 progress: _Progress) -> Outcome:
    if url.scheme not in ("http", "https"):
        return _failed(url, f"unsupported protocol scheme {go_quote(url.scheme)}")
    connector = aiohttp.TCPConnector(force_close=True, limit=0, ssl=False)
    async with aiohttp.ClientSession(connector=connector, timeout=_NO_TIMEOUTS, auto_decompress=False,
                                     skip_auto_headers=skip, cookie_jar=aiohttp.DummyCookieJar()) as session:
        first_host = url.host
        previous: URL | None = None
        host = host_override
        for hop in range(MAX_REDIRECTS + 1):
            progress.url, progress.reading_body = url, False
            sent = CIMultiDict(headers)
            if host is not None:
                sent["Host"] = host
            if previous is not None and "Referer" not in sent and not (previous.scheme == "https"
                                                                       and url.scheme == "http"):
                sent["Referer"] = str(previous.with_user(None))  # as Go's client sets it on a redirect
            try:
                async with session.get(url, headers=sent, allow_redirects=False) as response:
                    status = response.status
                    location = response.headers.get("Location", "")
                    progress.reading_body = True
                    if status in _REDIRECTS and location:
                        try:
                            target = url.join(URL(location))
                        except ValueError as err:
                            return _failed(url, f"failed to parse Location header {go_quote(location)}: {err}")
                        if target.host == first_host:
                            if hop + 1 >= MAX_REDIRECTS:
                                return _failed(target, f"stopped after {MAX_REDIRECTS} redirects")
                            # Go keeps the probe's Host through a redirect to a relative Location only
                            host = host_override if not URL(location).scheme else None
                            previous, url = url, target
                            continue
                    body = await _read_at_most(response, MAX_BODY_BYTES)
            except aiohttp.ClientSSLError as err:  # before ClientConnectorError, which it is too
                return _failed(url, _tls_reason(err))
            except aiohttp.ClientConnectorError as err:
                return _failed(url, dial_error(join_host_port(err.host, err.port or 0), err.os_error))
            except aiohttp.ServerDisconnectedError:
                if progress.reading_body:
                    raise ProbeError("unexpected EOF") from None
                return _failed(url, "EOF")
            except (aiohttp.ClientError, OSError, ValueError) as err:
                reason = _reason(err)
                if progress.reading_body:
                    raise ProbeError(reason) from None
                return _failed(url, reason)
            return _answer(status, body)
    raise AssertionError("unreachable: the redirect loop returns")


def _answer(status: int, body: str) -> Outcome:
    if 200 <= status < 400:
        if status >= 300:
            return Outcome(ProbeResult.WARNING, f"Probe terminated redirects, Response body: {body}")
        return Outcome(ProbeResult.SUCCESS, body)
    # kubelet keeps the body out of the failure text (kubernetes issue 99425)
    return Outcome(ProbeResult.FAILURE, f"HTTP probe failed with statuscode: {status}")


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> str:
    """Up to ``limit`` bytes of the body (the rest is left unread: the connection closes with the probe)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def _reason(err: BaseException) -> str:
    if isinstance(err, aiohttp.ClientOSError) and err.errno is not None:
        return f"read: {errno_text(err)}"
    if isinstance(err, asyncio.IncompleteReadError):
        return "unexpected EOF"
    return str(err) or type(err).__name__


def _tls_reason(err: aiohttp.ClientSSLError) -> str:
    """Go's ``tls: ...`` error, from OpenSSL's reason (``WRONG_VERSION_NUMBER``: ``tls: wrong version number``)."""
    cause = err.os_error if isinstance(err, aiohttp.ClientConnectorError) else None
    reason = getattr(cause, "reason", None) or str(cause or err)
    return f"tls: {str(reason).lower().replace('_', ' ')}"
