"""ExecSync, Exec, Attach and PortForward.

ExecSync runs a command "inside" a running container through the behaviour vocabulary (see
:mod:`~kubeharness.emulators.cri.behaviour`), on the runtime's clock: ``sleep 5`` with a 1 s timeout
fails with DEADLINE_EXCEEDED after one second of clock time, which kubelet reports as a probe timeout.
A program the image does not have fails the call the way runc's "executable file not found" does.
Exec, Attach and PortForward answer with a URL on the streaming server; the streaming protocol
itself is served by a separate component.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from kubeharness.emulators.cri import rootfs
from kubeharness.emulators.cri.behaviour import HELPER, BehaviourError, parse_duration_ns
from kubeharness.emulators.cri.containers import STATE_NAMES
from kubeharness.emulators.cri.model import RUNNING, Container
from kubeharness.emulators.cri.process import Process
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.emulators.cri.scripted import BUSY_SLICE_NS
from kubeharness.emulators.cri.shell.interp import APPLET_NAMES, start
from kubeharness.emulators.cri.validate import require_id
from kubeharness.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, KubeharnessError, NotFound
from kubeharness.wire.cri import api_pb2 as cri

NS = 1_000_000_000


@dataclass
class ExecResult:
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    sleep_ns: int = 0


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _check(process: Process, what: str, now_ns: int) -> ExecResult:
    b = process.behaviour
    running_ns = now_ns - process.started_ns
    if what == "ready":
        if running_ns >= b.ready_after_ns:
            return ExecResult(0, "ready\n")
        return ExecResult(1, "", "not ready yet\n")
    if what in ("healthy", "live"):
        if b.unhealthy_after_ns is not None and running_ns >= b.unhealthy_after_ns:
            return ExecResult(1, "", "unhealthy\n")
        return ExecResult(0, "healthy\n")
    return ExecResult(2, "", f"{HELPER}: unknown check {what!r} (ready, healthy, live)\n")


def interpret(argv: Sequence[str], process: Process, now_ns: int) -> ExecResult:
    """What ``argv`` does in the container; raises KubeharnessError if it cannot be started."""
    program = _basename(argv[0])
    rest = list(argv[1:])
    if program == HELPER:
        if not rest:
            return ExecResult(2, "", f"{HELPER}: missing subcommand\n")
        program, rest = rest[0], rest[1:]
        if program == "check":
            return _check(process, rest[0] if rest else "", now_ns)
        if program == "exit":
            try:
                return ExecResult(int(rest[0]) & 0xFF if rest else 0)
            except ValueError:
                return ExecResult(2, "", f"{HELPER}: exit needs a number\n")
        if program not in ("echo", "sleep", "true", "false"):
            return ExecResult(2, "", f"{HELPER}: unknown subcommand {program!r}\n")
    if program == "true":
        return ExecResult(0)
    if program == "false":
        return ExecResult(1)
    if program == "echo":
        return ExecResult(0, " ".join(rest) + "\n")
    if program == "sleep":
        if len(rest) != 1:
            return ExecResult(1, "", "sleep: missing operand\n")
        try:
            return ExecResult(0, sleep_ns=parse_duration_ns(rest[0]))
        except BehaviourError:
            return ExecResult(1, "", f"sleep: invalid number '{rest[0]}'\n")
    raise KubeharnessError(
        f'failed to exec in container: failed to start exec "{secrets.token_hex(32)}": OCI runtime exec failed: '
        f'exec failed: unable to start '
        f'container process: exec: "{argv[0][:256]}": executable file not found in $PATH: unknown'
    )


def _running_process(rt: Runtime, container_id: str) -> Process:
    c = rt.containers.get(container_id)
    process = rt.processes.get(c.id)
    if c.state != RUNNING or process is None:  # containerd's words and code (UNKNOWN)
        raise KubeharnessError(f"failed to exec in container: container is in {STATE_NAMES[c.state]} state")
    return process


async def exec_sync(rt: Runtime, req: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
    require_id(req.container_id, "container_id")
    if not req.cmd:
        raise InvalidArgument("cmd must not be empty")
    if req.timeout < 0:
        raise InvalidArgument(f"timeout must not be negative, got {req.timeout}")
    if rt.containers.find(req.container_id) is None:  # containerd's words
        missing = f'failed to find container "{req.container_id}" in store: not found'
        raise NotFound(f"failed to exec in container: {missing}")
    process = _running_process(rt, req.container_id)
    c = process.container
    if _basename(req.cmd[0]) != HELPER and _basename(req.cmd[0]) in APPLET_NAMES and rootfs.has_shell(
        rt.images.resolve(c.image_id)
    ):
        return await _exec_in_shell(rt, c, list(req.cmd), req.timeout)
    result = interpret(req.cmd, process, rt.clock.now_ns())
    if result.sleep_ns:
        timed_out = bool(req.timeout) and result.sleep_ns > req.timeout * NS
        wait_s = req.timeout if timed_out else result.sleep_ns / NS
        if await _container_exits_within(rt, process.container, wait_s):
            # the container's init died: the kernel kills everything in its PID namespace, the exec too
            return cri.ExecSyncResponse(stdout=b"", stderr=b"", exit_code=137)
        if timed_out:
            raise DeadlineExceeded(
                f"failed to exec in container: timeout {req.timeout}s exceeded: context deadline exceeded"
            )
    return cri.ExecSyncResponse(
        stdout=result.stdout.encode(), stderr=result.stderr.encode(), exit_code=result.exit_code
    )


async def _exec_in_shell(rt: Runtime, c: Container, argv: list[str], timeout_s: int) -> cri.ExecSyncResponse:
    """Run an exec in the shell interpreter on the container's filesystem, on the clock."""
    out, err = _Capture(), _Capture()
    program = start(argv, rt.machine(c, rt.next_exec_pid(c), out.write, err.write))
    deadline = rt.clock.now_ns() + timeout_s * NS if timeout_s else None
    try:
        while True:
            try:
                wait = program.send(None)
            except StopIteration as stop:
                return cri.ExecSyncResponse(stdout=out.data(), stderr=err.data(), exit_code=int(stop.value) & 0xFF)
            now = rt.clock.now_ns()
            until = wait.until_ns
            if until is not None and until <= now:  # preempted in a loop that never waits
                until = now + BUSY_SLICE_NS
            if deadline is not None and (until is None or until > deadline):
                if await _container_exits_within(rt, c, (deadline - now) / NS):
                    return cri.ExecSyncResponse(stdout=out.data(), stderr=err.data(), exit_code=137)
                raise DeadlineExceeded(
                    f"failed to exec in container: timeout {timeout_s}s exceeded: context deadline exceeded"
                )
            seconds = (until - now) / NS if until is not None else math.inf
            if await _container_exits_within(rt, c, seconds):
                # the container's init died: the kernel kills everything in its PID namespace, the exec too
                return cri.ExecSyncResponse(stdout=out.data(), stderr=err.data(), exit_code=137)
    finally:
        program.close()


class _Capture:
    """An exec's stdout or stderr, kept up to the size the kubelet accepts."""

    LIMIT = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        room = self.LIMIT - len(self._buffer)
        if room > 0:
            self._buffer += data[:room]

    def data(self) -> bytes:
        return bytes(self._buffer)


async def _container_exits_within(rt: Runtime, c: Container, seconds: float) -> bool:
    """Wait ``seconds`` of clock time (inf: forever), or less if the container exits first; True if it did."""
    exited = rt.wait_exited(c)
    if math.isinf(seconds):
        try:
            await exited
            return True
        finally:
            if not exited.done():
                rt.stop_waiting(c, exited)
    sleeper = asyncio.ensure_future(rt.clock.sleep(seconds))
    try:
        await asyncio.wait((sleeper, exited), return_when=asyncio.FIRST_COMPLETED)
        return exited.done() and not exited.cancelled()
    finally:
        sleeper.cancel()
        if not exited.done():
            rt.stop_waiting(c, exited)


def _url(rt: Runtime, kind: str) -> str:
    return f"{rt.config.stream_url.rstrip('/')}/{kind}/{secrets.token_urlsafe(12)}"


async def exec_stream(rt: Runtime, req: cri.ExecRequest) -> cri.ExecResponse:
    require_id(req.container_id, "container_id")
    if not req.cmd:
        raise InvalidArgument("cmd must not be empty")
    if not (req.stdin or req.stdout or req.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
    if req.tty and req.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    _running_process(rt, req.container_id)
    return cri.ExecResponse(url=_url(rt, "exec"))


async def attach(rt: Runtime, req: cri.AttachRequest) -> cri.AttachResponse:
    require_id(req.container_id, "container_id")
    if not (req.stdin or req.stdout or req.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
    _running_process(rt, req.container_id)
    return cri.AttachResponse(url=_url(rt, "attach"))


async def port_forward(rt: Runtime, req: cri.PortForwardRequest) -> cri.PortForwardResponse:
    require_id(req.pod_sandbox_id, "pod_sandbox_id")
    sb = rt.sandboxes.get(req.pod_sandbox_id)
    if not sb.ready:
        raise FailedPrecondition(f"sandbox {sb.id} is not ready")
    for port in req.port:
        if not 0 < port < 65536:
            raise InvalidArgument(f"port {port} is out of range")
    return cri.PortForwardResponse(url=_url(rt, "portforward"))
