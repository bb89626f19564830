"""A CRI emulator process for a test suite: start ``kubeharness cri serve``, wait until it answers, crash it, stop it.

::

    with CriEmulator(tmp_path, plan={"rules": [...]}) as cri:
        channel = grpc.insecure_channel(cri.endpoint)     # any CRI client
        cri.control.load(more_rules)                      # change the fault rules at run time
        cri.kill()                                        # SIGKILL the emulator, as a crash would
        cri.restart()                                     # start it again: the state is kept

Everything lives below ``root``: the CRI socket ``cri.sock`` and the fault control socket ``faults.sock``,
the state directory ``state``, the fired-fault log ``fired.jsonl`` (appended to across restarts) and the
emulator's output ``emulator.log``. A unix socket path has at most 107 bytes, which a deep ``root`` (such
as pytest's ``tmp_path``) may exceed: the sockets then go to a fresh directory ``/tmp/kubeharness-*``
instead, removed by :meth:`CriEmulator.stop`. With ``restart_on_crash`` the process is a supervisor
(``--restart-on-crash``) and :meth:`CriEmulator.kill` kills the emulator under it, which the supervisor
then starts again (:meth:`CriEmulator.wait_ready` waits for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc

from kubeharness.errors import KubeharnessError
from kubeharness.faults.control import BlockingFaultControl, FaultControl, PlanSource, plan_text
from kubeharness.testing.processes import wait_child, wait_gone

MAX_SOCKET_PATH = 107  # bytes in sun_path, less the terminating NUL
POLL_SECONDS = 0.05
# readiness probes: a connection of their own (gRPC would otherwise share one among channels) that retries
# every 50 ms, instead of waiting out gRPC's reconnect backoff (1 s and more) while the emulator starts
PROBE_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.initial_reconnect_backoff_ms", 50),
                 ("grpc.min_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 50)]


def _short_enough(socket_path: Path) -> bool:
    return len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH


class EmulatorError(KubeharnessError):
    """The emulator did not start, stop or answer as asked; the message ends with its last output lines."""


class CriEmulator:
    """One ``kubeharness cri serve`` process (optionally supervised) with its files under ``root``.

    ``plan`` is the fault plan it starts with: YAML text, Python data, or a ``Path`` to a plan file.
    """

    def __init__(self, root: Path | str, *, plan: PlanSource | Path | None = None, seed: int = 0,
                 config: Path | None = None, restart_on_crash: bool = False, max_restarts: int | None = None,
                 start_timeout: float = 30.0, extra_args: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self._own_socket_dir = not _short_enough(self.root / "faults.sock")
        self.socket_dir = Path(tempfile.mkdtemp(prefix="kubeharness-")) if self._own_socket_dir else self.root
        self.socket = self.socket_dir / "cri.sock"
        self.control_socket = self.socket_dir / "faults.sock"
        self.state_dir = self.root / "state"
        self.fault_log = self.root / "fired.jsonl"
        self.output = self.root / "emulator.log"
        self.plan = plan
        self.seed = seed
        self.config = config
        self.restart_on_crash = restart_on_crash
        self.max_restarts = max_restarts
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.control = BlockingFaultControl(self.control_socket)
        self.async_control = FaultControl(self.control_socket)
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, ``unix:///.../cri.sock``."""
        return f"unix://{self.socket}"

    @property
    def running(self) -> bool:
        """Whether the process started by :meth:`start` (the supervisor, if any) is still running."""
        return self._process is not None and self._process.poll() is None

    @property
    def supervisor_pid(self) -> int | None:
        """The supervisor's PID with ``restart_on_crash``, else None."""
        return self._process.pid if self._process is not None and self.restart_on_crash else None

    @property
    def pid(self) -> int:
        """The PID of the emulator process itself (under the supervisor with ``restart_on_crash``)."""
        process = self._started()
        if not self.restart_on_crash:
            return process.pid
        return wait_child(process.pid, self.start_timeout)

    def command(self) -> list[str]:
        """The command line :meth:`start` runs."""
        argv = [sys.executable, "-m", "kubeharness.cli", "cri", "serve", "--socket", str(self.socket),
                "--state-dir", str(self.state_dir), "--fault-seed", str(self.seed),
                "--fault-log", str(self.fault_log), "--fault-control", str(self.control_socket)]
        if self.plan is not None:
            argv += ["--faults", str(self._plan_file())]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.restart_on_crash:
            argv.append("--restart-on-crash")
            if self.max_restarts is not None:
                argv += ["--max-restarts", str(self.max_restarts)]
        return argv + self.extra_args

    def _plan_file(self) -> Path:
        if isinstance(self.plan, Path):
            return self.plan
        assert self.plan is not None
        path = self.root / "plan.yaml"
        path.write_text(plan_text(self.plan))
        return path

    def start(self) -> None:
        """Start the emulator and wait until it is ready (:meth:`wait_ready`); EmulatorError if it is not."""
        if self.running:
            raise EmulatorError("the emulator is already running")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._close_output()
        self._output = self.output.open("ab")
        self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._output,
                                         stderr=subprocess.STDOUT)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll until the emulator takes connections on its CRI socket and answers on its control socket
        (after a start or a crash). No CRI call is made, so no fault rule fires for it."""
        process = self._started()
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            if process.poll() is not None:
                raise EmulatorError(f"the emulator exited with status {process.returncode} before it answered"
                                    f"{self._tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise EmulatorError(f"the emulator did not answer on {self.endpoint} in time{self._tail()}")
            if self._answers(min(left, 2.0)):
                return
            time.sleep(POLL_SECONDS)

    def _answers(self, timeout: float) -> bool:
        try:
            with grpc.insecure_channel(self.endpoint, options=PROBE_OPTIONS) as channel:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            self.control.rules()
        except (grpc.FutureTimeoutError, OSError):
            return False
        return True

    def kill(self) -> int:
        """SIGKILL the emulator process (not its supervisor) and wait until it is gone; its PID."""
        if not self.running:
            raise EmulatorError("the emulator is not running")
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        if self.restart_on_crash:
            if not wait_gone(pid, self.start_timeout):
                raise EmulatorError(f"the emulator (pid {pid}) outlived SIGKILL")
        else:
            self._started().wait(self.start_timeout)
        return pid

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process (the supervisor passes it on), wait for it; its exit status (None if not started).

        A process still there after ``timeout`` seconds is killed and EmulatorError raised.
        """
        process = self._process
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    raise EmulatorError(f"the emulator did not stop within {timeout:.0f} s{self._tail()}") from None
            return process.returncode
        finally:
            self._process = None
            self._close_output()
            if self._own_socket_dir:
                with contextlib.suppress(OSError):  # the emulator removed its sockets; a crashed one did not
                    for leftover in (self.socket, self.control_socket):
                        leftover.unlink(missing_ok=True)
                    self.socket_dir.rmdir()

    def restart(self) -> None:
        """Stop (if running) and start again on the same socket and state directory."""
        self.stop()
        self.start()

    def fired_log(self) -> list[dict[str, Any]]:
        """Every fault fired since the first start, from ``fired.jsonl``: unlike ``control.fired()`` (the
        running emulator's own log) it survives crashes and restarts."""
        try:
            lines = self.fault_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def log_text(self) -> str:
        """Everything the emulator (and its supervisor) wrote on stdout and stderr."""
        try:
            return self.output.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 15) -> str:
        text = self.log_text().rstrip()
        if not text:
            return ""
        return "; its output ends:\n" + "\n".join(text.splitlines()[-lines:])

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise EmulatorError("the emulator is not started")
        return self._process

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> CriEmulator:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> CriEmulator:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)

