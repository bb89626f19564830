"""The CNI fork server (``kubeharness cni serve --socket PATH``): the warm half of the plugin's fast path.

Starting Python costs more than the whole of host-local, so the ``kubeharness-cni`` executable a runtime
runs can be a small C shim (``cnishim.c``, built and installed by ``shim``) that hands its invocation to
this daemon. The daemon has imported the plugin's modules once; for each connection it forks a child
that does exactly what ``main`` does for one invocation, with the environment and stdin the shim sent,
and streams the child's stdout and stderr back. The one-process-per-invocation semantics stay: the
child holds the store's lock, a ``crash`` fault kills the child (and the shim re-raises the same signal),
a ``cni_hang`` hangs the child, and when the runtime gives up and kills the shim the child's process
group is killed at once. Children get SIGKILL if the server dies (``PR_SET_PDEATHSIG``).

The child runs with the server's credentials, resource limits and namespaces, and with the shim's
working directory, umask, environment and stdin. The server refuses (frame ``r``) a peer whose uid is
not its own, and the shim then runs the plugin itself, so a root runtime never gets a plugin that runs
as another user. The socket is created 0600.

The wire protocol (a hello, the request, output frames, the exit frame) is in ``forkproto``, which
describes it. End of stream from a client means the runtime killed it: the child's process group gets
SIGKILL. A malformed request is answered like a plugin error. SIGTERM or SIGINT stops accepting (the
socket is removed, so new shims run the plugin themselves), lets the invocations in flight finish for
up to ``drain_seconds`` and then kills what is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from kubeharness import fsafe
from kubeharness.emulators.cni import commands, faults, kernel, result, store  # noqa: F401  (warm: imported once)
from kubeharness.emulators.cni.errors import INTERNAL, PluginError
from kubeharness.emulators.cni.forkproto import (
    EXITED,
    HELLO,
    KILLED,
    PROTOCOL,
    REFUSED,
    STDERR,
    STDOUT,
    U32,
    Request,
    frame,
    parse_request,
)
from kubeharness.emulators.cni.main import respond
from kubeharness.emulators.cni.netconf import LATEST_VERSION

log = logging.getLogger("kubeharness.emulators.cni.forkserver")  # also when run with -m

_PR_SET_PDEATHSIG = 1


@dataclass(eq=False)  # identity: jobs go in sets
class _Job:
    """One connection: its request while it arrives, then its child and the child's output pipes."""

    conn: socket.socket | None
    buffer: bytearray = field(default_factory=bytearray)
    pid: int = 0
    pipes: dict[int, bytes] = field(default_factory=dict)  # read end -> frame kind (b"" for the status pipe)


class ForkServer:
    """``ForkServer(path).serve()`` until SIGTERM or SIGINT; one thread, one selector, a fork per invocation."""

    def __init__(self, path: str, drain_seconds: float = 5.0) -> None:
        self.path = path
        self.drain_seconds = drain_seconds
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.jobs: dict[int, _Job] = {}  # by child pid
        self.pending: set[_Job] = set()  # connected, request not complete
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._pid = os.getpid()

    # --- the loop -----------------------------------------------------------------------------------------

    def serve(self) -> None:
        self._listen()
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wakeup fd hears of it
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        gc.freeze()  # what is loaded now stays shared with every child, untouched by their collections
        log.info("kubeharness-cni fork server on %s", self.path)
        deadline = None
        try:
            while True:
                if self.stopping and self.listener is not None:
                    self._close_listener()
                    deadline = time.monotonic() + self.drain_seconds  # a shutdown grace, not emulated time
                if self.stopping and not self.jobs:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    for pid in self.jobs:
                        self._kill(pid)
                    deadline = float("inf")
                timeout = None if deadline is None else max(0.0, min(deadline - time.monotonic(), 1.0))
                for key, _ in self.selector.select(timeout):
                    try:
                        self._dispatch(key.data, key.fd)
                    except Exception:  # a bug here must not take the server, and every invocation, down
                        log.exception("kubeharness-cni fork server: handling descriptor %d failed", key.fd)
        finally:
            self._close_listener()
            for pid in list(self.jobs):
                self._kill(pid)
            signal.set_wakeup_fd(-1)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            fsafe.serve_unix_socket(self.path, listener.bind)  # 0600 from its first moment, umask untouched
        except BaseException:
            listener.close()
            raise
        listener.listen(128)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.listener = listener

    def _close_listener(self) -> None:
        if self.listener is None:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _dispatch(self, data: object, fd: int) -> None:
        if data == "accept":
            self._accept()
        elif data == "wake":
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
            self._reap()
        elif isinstance(data, tuple):  # an earlier event of the same batch may have closed this one
            job, what = data
            if what == "conn" and job.conn is not None:
                self._conn_readable(job)
            elif what == "pipe" and fd in job.pipes:
                self._pipe_readable(job, fd)

    # --- connections ----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.settimeout(5.0)  # frames are small; a client that stops reading for 5 s counts as gone
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        try:
            if uid != os.geteuid():
                conn.sendall(frame(REFUSED, f"the fork server runs as uid {os.geteuid()}, not {uid}".encode()))
                conn.close()
                return
            conn.sendall(frame(HELLO, PROTOCOL))
        except OSError:
            conn.close()
            return
        job = _Job(conn)
        self.pending.add(job)
        self.selector.register(conn, selectors.EVENT_READ, (job, "conn"))

    def _conn_readable(self, job: _Job) -> None:
        assert job.conn is not None
        try:
            data = job.conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client is gone: the runtime killed it
            self._drop_conn(job)
            if job.pid:
                self._kill(job.pid)
            return
        if job.pid:
            return  # nothing is expected after the request; ignore it
        job.buffer += data
        try:
            request = parse_request(job.buffer)
        except ValueError as err:
            doc = PluginError(INTERNAL, "malformed request to the kubeharness-cni fork server", str(err))
            self._send(job, frame(STDOUT, (json.dumps(doc.document(LATEST_VERSION), indent=4) + "\n").encode()))
            self._send(job, frame(EXITED, U32.pack(1)))
            self._drop_conn(job)
            return
        if request is not None:
            self.pending.discard(job)
            job.buffer = bytearray()
            self._fork(job, request)

    def _send(self, job: _Job, data: bytes) -> None:
        if job.conn is None:
            return
        try:
            job.conn.sendall(data)
        except OSError:  # gone, or not reading: the same to us
            self._drop_conn(job)
            if job.pid:
                self._kill(job.pid)

    def _drop_conn(self, job: _Job) -> None:
        if job.conn is not None:
            self.pending.discard(job)
            self.selector.unregister(job.conn)
            job.conn.close()
            job.conn = None

    # --- children ---------------------------------------------------------------------------------------------

    def _fork(self, job: _Job, request: Request) -> None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for fd in (out_r, err_r, status_r):
                os.close(fd)
            self._child(job, request, out_w, err_w, status_w)  # never returns
        for fd in (out_w, err_w, status_w):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        job.pid = pid
        self.jobs[pid] = job
        for fd, kind in ((out_r, STDOUT), (err_r, STDERR), (status_r, b"")):
            os.set_blocking(fd, False)
            job.pipes[fd] = kind
            self.selector.register(fd, selectors.EVENT_READ, (job, "pipe"))

    def _pipe_readable(self, job: _Job, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(job, fd)
        elif job.pipes[fd]:
            self._send(job, frame(job.pipes[fd], data))
        elif len(data) == 4:  # the child's last word: the status it is exiting with
            self._finish(job, frame(EXITED, data))

    def _finish(self, job: _Job, last: bytes) -> None:
        """Send what is left in the child's pipes and the exit frame, and close the connection."""
        for fd in list(job.pipes):  # the child wrote all of its output before it reported or exited
            with contextlib.suppress(BlockingIOError):
                while job.pipes[fd] and (data := os.read(fd, 1 << 16)):
                    self._send(job, frame(job.pipes[fd], data))
            self._close_pipe(job, fd)
        self._send(job, last)
        self._drop_conn(job)

    def _close_pipe(self, job: _Job, fd: int) -> None:
        self.selector.unregister(fd)
        os.close(fd)
        del job.pipes[fd]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is None or (job.conn is None and not job.pipes):
                continue  # unknown, or finished already when it reported its status
            if os.WIFSIGNALED(status):
                self._finish(job, frame(KILLED, U32.pack(os.WTERMSIG(status))))
            else:
                self._finish(job, frame(EXITED, U32.pack(os.waitstatus_to_exitcode(status))))

    def _kill(self, pid: int) -> None:
        """SIGKILL the child's process group (it and whatever it started); it is reaped as usual."""
        if pid in self.jobs:  # not reaped yet, so the group id still belongs to it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def _child(self, job: _Job, request: Request, out_w: int, err_w: int, status_w: int) -> None:
        status = 1
        try:
            os.setpgid(0, 0)
            self._prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._pid:
                os._exit(1)  # the server died before the line above took effect
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._close_inherited(job)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (null, out_w, err_w):
                os.close(fd)
            sys.stdin = None
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                          errors="backslashreplace", line_buffering=True)
            os.umask(request.umask)
            with contextlib.suppress(OSError):
                os.chdir(request.cwd or "/")
            os.environ.clear()
            os.environ.update(request.environ)
            status = respond(os.environ, request.stdin)
        except BaseException:  # whatever happens, the child must end here
            import traceback

            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
                os.write(status_w, U32.pack(status))  # the shim need not wait for the teardown
            os._exit(status)

    def _close_inherited(self, own: _Job) -> None:
        """Close the server's descriptors in a child: the listener, the wakeup pipe, every connection and pipe."""
        if self.listener is not None:
            self.listener.close()
        for job in (own, *self.jobs.values(), *self.pending):
            if job.conn is not None:
                job.conn.close()
            for fd in job.pipes:
                os.close(fd)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def serve(path: str, drain_seconds: float = 5.0, preload_faults: bool = False) -> None:
    """Run the fork server on ``path`` until SIGTERM or SIGINT."""
    if preload_faults:  # fault-plan invocations skip importing the engine, but every fork gets ~1.5 ms slower
        import kubeharness.faults.engine
        import kubeharness.faults.plan  # noqa: F401
    ForkServer(path, drain_seconds).serve()


def main(argv: list[str] | None = None) -> int:
    """``python -m kubeharness.emulators.cni.forkserver``: what ``kubeharness cni serve`` execs.

    The ``kubeharness`` command imports gRPC and asyncio; a fork of a process that holds them costs twice
    as much, so the server runs in an interpreter that has imported only the plugin.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="kubeharness cni serve")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--preload-faults", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.socket, args.drain_seconds, args.preload_faults)
    except fsafe.FsafeError as err:  # a live server's socket, or another file, at the path
        print(f"kubeharness: {err.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
