"""A CRI emulator started by the benchmark as a subprocess, when no ``--endpoint`` is given.

It runs ``python -m kubeharness.cli cri serve`` exactly as a user would, with its socket, state and
log in the benchmark's temporary directory. The benchmark knows its PID, so it can report the
emulator's memory and CPU; it is stopped with SIGTERM (SIGKILL if it does not exit in time).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from kubeharness.bench.client import open_channel
from kubeharness.bench.errors import BenchError
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 15


class SpawnedEmulator:
    """``kubeharness cri serve`` in a subprocess, with everything it writes under ``root``."""

    what = "the emulator"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "cri.sock"
        self.state_dir = root / "state"
        self.log_path = root / "emulator.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the emulator was not started"
        return self.process.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kubeharness.cli", "cri", "serve",
                "--socket", str(self.socket), "--state-dir", str(self.state_dir)]

    def start(self) -> None:
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll Version until it answers; a clear BenchError if the emulator exits or stays silent."""
        assert self.process is not None, "the emulator was not started"
        deadline = time.perf_counter_ns() + int(timeout_s * 1e9)
        async with open_channel(self.endpoint) as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            while time.perf_counter_ns() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(f"{self.what} exited with code {self.process.returncode} before it "
                                     f"answered; the end of its log {self.log_path}:\n{self.log_tail()}")
                try:
                    await stub.Version(api.VersionRequest(), timeout=0.5)
                    return
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
        raise BenchError(f"{self.what} did not answer Version on {self.socket} within {timeout_s:g} s; "
                         f"the end of its log {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code (None if it was never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode
