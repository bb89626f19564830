"""Crash torture (issue 18): the CRI emulator, the CSI plugin, the CNI plugin's store and the agent SIGKILLed
at seeded random moments dozens of times, restarted on the same state each time, and checked afterwards:
everything acknowledged is there, nothing removed came back, nothing is there twice, nothing leaked.

``KUBEHARNESS_TORTURE_KILLS`` sets the kills per run (default 30); each run prints and records
(``record_property``) how many kills it survived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from kubeharness.testing.emulator import PROBE_OPTIONS, CriEmulator
from kubeharness.testing.torture import Torture, TortureReport
from kubeharness.testing.torture_cri import CriWorkload
from kubeharness.testing.torture_csi import CsiWorkload
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc

KILLS = int(os.environ.get("KUBEHARNESS_TORTURE_KILLS", "30"))
SEED = int(os.environ.get("KUBEHARNESS_TORTURE_SEED", "18"))
WORKERS = 8
DEADLINE = 60.0  # seconds a restarted daemon may take to answer on a loaded machine
NODE = "torture-node"


class CsiDaemon:
    """``kubeharness csi serve`` as a process to kill and start again on the same state and socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_dir = Path(tempfile.mkdtemp(prefix="kh-torture-"))  # short enough for a unix socket
        self.endpoint = f"unix://{self.socket_dir / 'csi.sock'}"
        self.kubelet = root / "kubelet"
        self.config = root / "csi.yaml"
        self.config.write_text(f"node_id: {NODE}\nroots: [{str(self.kubelet)!r}]\n")
        self.output = root / "csi.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubeharness.cli", "csi", "serve", "--endpoint", self.endpoint,
                 "--state-dir", str(self.root / "state"), "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + DEADLINE
        with grpc.insecure_channel(self.endpoint, options=PROBE_OPTIONS) as channel:
            identity = csi_grpc.IdentityStub(channel)
            while True:
                assert self.process.poll() is None, self.output.read_text(errors="replace")
                try:
                    if identity.Probe(csi.ProbeRequest(), timeout=2.0).ready.value:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"the CSI plugin did not answer:\n{self.output.read_text()}"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(DEADLINE)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(DEADLINE)
        for leftover in self.socket_dir.iterdir():
            leftover.unlink()
        self.socket_dir.rmdir()


def survived(record_property: Callable[[str, object], None], what: str, report: TortureReport) -> None:
    print(f"\ntorture {what}: {report.summary()}")
    record_property(f"torture_{what}_kills", report.kills)
    record_property(f"torture_{what}_acknowledged", report.acknowledged)
    assert report.problems == [], "\n".join(report.problems)
    assert report.kills == KILLS


async def test_cri_emulator_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    emulator = CriEmulator(tmp_path, start_timeout=60.0)
    async with emulator:
        torture = Torture(emulator.kill, emulator.start, kills=KILLS, seed=SEED)
        workload = CriWorkload(torture, emulator.endpoint)
        try:
            await workload.prepare()
            report = await torture.run([workload.worker(i) for i in range(WORKERS)], workload.check)
        finally:
            await workload.close()
    survived(record_property, "cri", report)


async def test_csi_plugin_keeps_every_acknowledged_change_across_kills(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    daemon = CsiDaemon(tmp_path)
    daemon.start()
    try:
        torture = Torture(daemon.kill, daemon.start, kills=KILLS, seed=SEED)
        workload = CsiWorkload(torture, daemon.endpoint, NODE, daemon.kubelet)
        try:
            report = await torture.run([workload.worker(i) for i in range(WORKERS)], workload.check)
        finally:
            await workload.close()
    finally:
        daemon.stop()
    survived(record_property, "csi", report)
