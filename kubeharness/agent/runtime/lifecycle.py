"""Lifecycle hooks: postStart and preStop handlers run as kubelet runs them (``pkg/kubelet/lifecycle/handlers.go``
and, around it, ``startContainer`` / ``executePreStopHook`` in ``kuberuntime_container.go``).

:meth:`HookRunner.run` runs one handler and returns None, or a :class:`HookFailure` with kubelet's message
(the reason cache's message, which the status shows under ``PostStartHookError``):

- ``exec``: CRI ExecSync with timeout 0 (kubelet passes none: the runtime lets the command run as long as
  it takes and the call has no deadline); a non-zero exit fails with ``command '<cmd>' exited with <code>:
  <stderr>``; the message is ``Exec lifecycle hook ([<cmd>]) for Container "<name>" in Pod
  "<name>_<namespace>(<uid>)" failed - error: <error>, message: "<stdout+stderr>"``.
- ``httpGet``: the request kubelet's prober builds (``NewRequestForHTTPGetAction``: scheme, host or else the
  pod's first IP as the runtime reports it, the port by number or container port name, path, headers,
  ``Accept: */*``) with the agent named ``kube-lifecycle/1.36``, reusing ``prober.handlers``' URL, port
  and header rules. Sent as Go's default client sends it: redirects followed to any host (at most 10),
  certificates verified, no timeout, and any status counts as success (only a transport error fails). An
  HTTPS request answered in plain HTTP is retried over HTTP, and a success then records kubelet's Warning
  ``LifecycleHTTPFallback`` on the pod. Message: ``HTTP lifecycle hook (<path>) for Container ... failed -
  error: <error>``.
- ``sleep``: the agent's clock sleeps ``seconds``; interrupted (see below) it fails with ``container
  terminated before sleep hook finished`` (``Sleep lifecycle hook (<n>) for Container ...``).

``interrupt``: an event that, once set, stops the handler the way a cancelled pod worker context stops
kubelet's (the agent sets it when the pod is deleted while its postStart runs).

:meth:`HookRunner.post_start` adds kubelet's event (Warning ``FailedPostStartHook`` "PostStartHook failed";
kubelet leaves the handler's output out of events so that secrets do not leak), and
:meth:`HookRunner.pre_stop` runs preStop within the grace period: it waits at most ``grace`` seconds on the
clock, returns the whole seconds that passed (which kubelet takes off the grace StopContainer gets), and a
failing hook records Warning ``FailedPreStopHook`` "PreStopHook failed" whenever it fails. A hook still
running at the end of the grace period is left to finish in the background, as kubelet's goroutine is, when
it is an exec (it ends with the container, and its failure is still reported); a sleep or HTTP hook is
stopped there, which nobody can tell apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from yarl import URL

from kubeharness.agent.events import (
    FAILED_POST_START_HOOK,
    FAILED_PRE_STOP_HOOK,
    WARNING,
    Recorder,
    container_field_path,
)
from kubeharness.agent.pod.model import Container, ExecAction, HTTPGetAction, Pod, SleepAction, TCPSocketAction
from kubeharness.agent.prober.handlers.http import canonical_header, probe_headers, probe_url
from kubeharness.agent.prober.handlers.targets import join_host_port, resolve_port
from kubeharness.agent.prober.handlers.texts import dial_error, go_quote, rpc_error
from kubeharness.agent.prober.outcome import ProbeError
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.clock import NS_PER_SECOND, Clock

USER_AGENT = "kube-lifecycle/1.36"
LIFECYCLE_HTTP_FALLBACK = "LifecycleHTTPFallback"
MAX_REDIRECTS = 10  # Go's default client
MAX_BODY_BYTES = 10 * 1024  # what kubelet reads of the answer before it closes it
_NO_TIMEOUTS = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
# what OpenSSL says when a plain HTTP server answers the TLS handshake (Go: "server gave HTTP response to
# HTTPS client")
_PLAIN_HTTP_ANSWER = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure", "http request")

Hook = ExecAction | HTTPGetAction | SleepAction | TCPSocketAction
PodIPs = Callable[[], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class HookFailure:
    error: str  # the handler's error
    message: str  # kubelet's message about it (the reason cache's)


class _Failed(Exception):
    """A handler failed: its error, and for an exec the output kubelet quotes."""

    def __init__(self, error: str, output: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.output = output


def format_pod(pod: Pod) -> str:
    """kubelet's ``format.Pod``: ``name_namespace(uid)``."""
    return f"{pod.name}_{pod.namespace}({pod.uid})"


def go_handler(hook: TCPSocketAction) -> str:
    """A tcpSocket LifecycleHandler as Go's generated String() prints it (kubelet puts it in its error)."""
    port = f"{{1 0 {hook.port}}}" if isinstance(hook.port, str) else f"{{0 {hook.port} }}"
    return (f"&LifecycleHandler{{Exec:nil,HTTPGet:nil,TCPSocket:&TCPSocketAction{{Port:{port},Host:{hook.host},}},"
            "Sleep:nil,}")


class HookRunner:
    """Runs one agent's lifecycle hooks."""

    def __init__(self, clock: Clock, client: RuntimeClient, recorder: Recorder) -> None:
        self.clock = clock  # sleeps, and the preStop deadline
        self.client = client  # ExecSync
        self.recorder = recorder  # FailedPostStartHook, FailedPreStopHook, LifecycleHTTPFallback
        self._background: set[asyncio.Task[HookFailure | None]] = set()  # preStop execs past the grace period

    # -- one handler -------------------------------------------------------------------------------------

    async def run(self, pod: Pod, container: Container, container_id: str, hook: Hook, pod_ips: PodIPs,
                  interrupt: asyncio.Event | None = None) -> HookFailure | None:
        """Run ``hook`` for the container; None when it succeeded."""
        work = asyncio.ensure_future(self._handler(pod, container, container_id, hook, pod_ips))
        waiters: set[asyncio.Future[Any]] = {work}
        stopper: asyncio.Task[bool] | None = None
        if interrupt is not None:
            stopper = asyncio.ensure_future(interrupt.wait())
            waiters.add(stopper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
            if not work.done():  # interrupted, or we are cancelled ourselves
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if work.cancelled():
            error = ("container terminated before sleep hook finished" if isinstance(hook, SleepAction)
                     else "context canceled")
        else:
            try:
                work.result()
                return None
            except _Failed as err:
                return HookFailure(err.error, self._message(pod, container, hook, err.error, err.output))
        return HookFailure(error, self._message(pod, container, hook, error))

    @staticmethod
    def _message(pod: Pod, container: Container, hook: Hook, error: str, output: str = "") -> str:
        where = f"for Container {go_quote(container.name)} in Pod {go_quote(format_pod(pod))} failed - error: {error}"
        if isinstance(hook, ExecAction):
            return f"Exec lifecycle hook ([{' '.join(hook.command)}]) {where}, message: {go_quote(output)}"
        if isinstance(hook, HTTPGetAction):
            return f"HTTP lifecycle hook ({hook.path}) {where}"
        if isinstance(hook, TCPSocketAction):
            return f"Cannot run handler: {error}"
        return f"Sleep lifecycle hook ({hook.seconds}) {where}"

    async def _handler(self, pod: Pod, container: Container, container_id: str, hook: Hook, pod_ips: PodIPs,
                       ) -> None:
        if isinstance(hook, ExecAction):
            await self._exec(pod, container, container_id, hook)
        elif isinstance(hook, HTTPGetAction):
            await self._http(pod, container, hook, pod_ips)
        elif isinstance(hook, TCPSocketAction):
            raise _Failed(f"invalid handler: {go_handler(hook)}")  # kubelet's runner has no tcpSocket case
        else:
            await self.clock.sleep(hook.seconds)

    async def _exec(self, pod: Pod, container: Container, container_id: str, hook: ExecAction) -> None:
        cmd = list(hook.command)
        try:
            reply = await self.client.exec_sync(container_id, cmd, 0)
        except grpc.aio.AioRpcError as err:
            raise _Failed(rpc_error(err)) from None
        if reply.exit_code != 0:
            stderr = reply.stderr.decode("utf-8", "replace")
            error = f"command '{' '.join(cmd)}' exited with {reply.exit_code}: {stderr}"
            raise _Failed(error, (reply.stdout + reply.stderr).decode("utf-8", "replace"))

    async def _http(self, pod: Pod, container: Container, hook: HTTPGetAction, pod_ips: PodIPs) -> None:
        host = hook.host
        if not host:
            ips = await pod_ips()
            if not ips:
                raise _Failed(f"failed to find networking container: pod {format_pod(pod)} has no IP")
            host = ips[0]
        try:
            url = probe_url(hook.scheme, host, resolve_port(hook.port, container), hook.path)
        except ProbeError as err:
            raise _Failed(str(err)) from None
        given = list(hook.headers)
        if not any(canonical_header(name) == "User-Agent" for name, _ in given):
            given.insert(0, ("User-Agent", USER_AGENT))
        headers, host_override, skip = probe_headers(given)
        if host_override is not None:
            headers["Host"] = host_override
        error = await _get(url, headers, skip)
        if isinstance(error, _PlainHttp):
            plain = url.with_scheme("http")
            headers.popall("Authorization", None)
            if await _get(plain, headers, skip) is None:
                self.recorder.record(pod.namespace, pod.name, pod.uid, "", WARNING, LIFECYCLE_HTTP_FALLBACK,
                                     f"request to HTTPS lifecycle hook {plain.raw_authority} got HTTP response, "
                                     "retry with HTTP succeeded")
                return
            error = f"Get {go_quote(str(url))}: http: server gave HTTP response to HTTPS client"
        if error is not None:
            raise _Failed(error)

    # -- around the handler, as kuberuntime does it ------------------------------------------------------

    async def post_start(self, pod: Pod, container: Container, container_id: str, pod_ips: PodIPs,
                         interrupt: asyncio.Event | None = None) -> HookFailure | None:
        """Run the container's postStart hook; a failure records FailedPostStartHook (the caller kills)."""
        hook = container.lifecycle.post_start
        if hook is None:
            return None
        failure = await self.run(pod, container, container_id, hook, pod_ips, interrupt)
        if failure is not None:
            self._event(pod, container, FAILED_POST_START_HOOK, "PostStartHook failed")
        return failure

    async def pre_stop(self, pod: Pod, container: Container, container_id: str, grace_s: int,
                       pod_ips: PodIPs) -> int:
        """Run the container's preStop hook for at most ``grace_s`` seconds; the whole seconds it took."""
        hook = container.lifecycle.pre_stop
        if hook is None:
            return 0
        started = self.clock.now_ns()

        async def hook_and_event() -> HookFailure | None:
            failure = await self.run(pod, container, container_id, hook, pod_ips)
            if failure is not None:
                self._event(pod, container, FAILED_PRE_STOP_HOOK, "PreStopHook failed")
            return failure

        work = asyncio.ensure_future(hook_and_event())
        timer = asyncio.ensure_future(self.clock.sleep(grace_s))
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                if isinstance(hook, ExecAction):
                    self._background.add(work)
                    work.add_done_callback(self._background.discard)
                else:
                    work.cancel()
        return int((self.clock.now_ns() - started) // NS_PER_SECOND)

    def _event(self, pod: Pod, container: Container, reason: str, message: str) -> None:
        init = any(c.name == container.name for c in pod.spec.init_containers)
        self.recorder.record(pod.namespace, pod.name, pod.uid, container_field_path(container.name, init), WARNING,
                             reason, message)

    async def close(self) -> None:
        """Stop the preStop execs still running in the background."""
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class _PlainHttp:
    """The marker for "server gave HTTP response to HTTPS client"."""


_PLAIN_HTTP = _PlainHttp()


async def _get(url: URL, headers: object, skip: frozenset[str]) -> str | _PlainHttp | None:
    """GET ``url`` as Go's default client: None on any answer, else the error (or the plain-HTTP marker)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0, ssl=ssl.create_default_context())
    async with aiohttp.ClientSession(connector=connector, timeout=_NO_TIMEOUTS, auto_decompress=False,
                                     skip_auto_headers=skip, cookie_jar=aiohttp.DummyCookieJar()) as session:
        try:
            async with session.get(url, headers=headers, allow_redirects=True,  # type: ignore[arg-type]
                                   max_redirects=MAX_REDIRECTS) as response:
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
                    await response.content.read(MAX_BODY_BYTES)
        except aiohttp.TooManyRedirects as err:
            last = err.history[-1].url if err.history else url
            return f"Get {go_quote(str(last))}: stopped after {MAX_REDIRECTS} redirects"
        except aiohttp.ClientConnectorCertificateError as err:
            return f"Get {go_quote(str(url))}: tls: failed to verify certificate: {err.certificate_error}"
        except aiohttp.ClientSSLError as err:
            if any(mark in str(err) for mark in _PLAIN_HTTP_ANSWER):
                return _PLAIN_HTTP
            return f"Get {go_quote(str(url))}: {err}"
        except aiohttp.ClientConnectorError as err:
            return f"Get {go_quote(str(url))}: {dial_error(join_host_port(err.host, err.port or 0), err.os_error)}"
        except aiohttp.ServerDisconnectedError:
            return f"Get {go_quote(str(url))}: EOF"
        except (aiohttp.ClientError, OSError, ValueError) as err:
            return f"Get {go_quote(str(url))}: {err or type(err).__name__}"
    return None
