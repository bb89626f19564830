"""``kubeharness csi serve`` as a user runs it: a real daemon process, its sockets, its configuration errors,
SIGTERM, and ``--restart-on-crash`` with a fault plan that kills it in the middle of a NodePublishVolume.

Every wait is a poll with a deadline; every process stopped here is one this module started, by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeharness.testing.processes import is_gone, wait_child, wait_gone
from kubeharness.wire.csi import csi_pb2 as csi
from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc
from kubeharness.wire.pluginregistration import api_pb2 as reg
from kubeharness.wire.pluginregistration import api_pb2_grpc as reg_grpc
from tests.conftest import code_of

DEADLINE = 30.0  # seconds any poll below may take before the test fails
# A channel of its own connection: a shared one could be the dead connection to a crashed plugin.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
DRIVER = "csi.cli-test.io"
NODE = "node-7"
Mode = csi.VolumeCapability.AccessMode
CAP = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                           access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


class Daemon:
    """``python -m kubeharness.cli csi serve ...`` in a subprocess, its stdout and stderr in one file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "csi.sock"
        self.state = root / "state"
        self.registry = root / "reg"
        self.kubelet = root / "kubelet"
        self.config = root / "cfg.yaml"
        self.output = root / "output.txt"
        self.process: asyncio.subprocess.Process | None = None
        self.pids: set[int] = set()  # plugin processes under a supervisor, to check that none is left
        self.config.write_text(f"node_id: {NODE}\ndriver_name: {DRIVER}\nroots: [{str(self.kubelet)!r}]\n")

    @property
    def registration_socket(self) -> Path:
        return self.registry / f"{DRIVER}-reg.sock"

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "kubeharness.cli", "csi", "serve", "--endpoint", f"unix://{self.socket}",
                "--state-dir", str(self.state), "--registration-dir", str(self.registry),
                "--config", str(self.config), *extra]

    async def start(self, *extra: str) -> None:
        with self.output.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(*self.command(*extra), stdin=subprocess.DEVNULL,
                                                                stdout=out, stderr=out)

    @property
    def main(self) -> asyncio.subprocess.Process:
        assert self.process is not None
        return self.process

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    async def wait_for_output(self, words: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while words not in self.text():
            assert self.main.returncode is None, f"the daemon exited with {self.main.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {words!r} in its output:\n{self.text()}"
            await asyncio.sleep(0.02)

    async def child(self, other_than: int | None = None) -> int:
        pid = await asyncio.to_thread(wait_child, self.main.pid, DEADLINE, other_than)
        self.pids.add(pid)
        return pid

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"unix://{self.socket}", options=CHANNEL_OPTIONS)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), DEADLINE)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for pid in self.pids:  # only if the supervisor failed its job: leave nothing behind
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        await d.close()


def faults_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeharness.cli", "faults", *args], capture_output=True,
                          text=True, timeout=DEADLINE, check=False)


async def test_the_daemon_serves_csi_and_registration_and_stops_on_sigterm(daemon: Daemon) -> None:
    await daemon.start()
    await daemon.wait_for_output(f"listening on unix://{daemon.socket}")
    async with daemon.channel() as channel:
        identity, node = csi_grpc.IdentityStub(channel), csi_grpc.NodeStub(channel)
        info = await identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=DEADLINE)
        assert info.name == DRIVER and info.vendor_version
        assert (await node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=DEADLINE)).node_id == NODE
    async with grpc.aio.insecure_channel(f"unix://{daemon.registration_socket}", options=CHANNEL_OPTIONS) as channel:
        registration = reg_grpc.RegistrationStub(channel)
        plugin = await registration.GetInfo(reg.InfoRequest(), timeout=DEADLINE)
        assert (plugin.type, plugin.name, plugin.endpoint) == ("CSIPlugin", DRIVER, str(daemon.socket))
        await registration.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=DEADLINE)
    sockets = (daemon.socket, daemon.registration_socket, daemon.state / "faults.sock")
    assert all(path.is_socket() for path in sockets)
    daemon.main.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.main.wait(), DEADLINE) == 0
    assert [path for path in sockets if path.exists()] == []
    assert "Traceback" not in daemon.text()


@pytest.mark.parametrize(("line", "key"), [
    ("nodeid: node-7", "nodeid"),  # unknown key
    ("max_volumes_per_node: five", "max_volumes_per_node"),  # wrong type
    ("ready: 1", "ready"),  # an int is no bool
])
@pytest.mark.parametrize("supervised", [False, True])
def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path, line: str, key: str, supervised: bool) -> None:
    d = Daemon(tmp_path)
    d.config.write_text(line + "\n")
    extra = ["--restart-on-crash"] if supervised else []
    done = subprocess.run(d.command(*extra), capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{d.config}: " in done.stderr and repr(key) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not d.socket.exists()


async def test_a_crashed_plugin_is_restarted_on_the_same_socket_with_its_state(daemon: Daemon) -> None:
    plan = daemon.root / "plan.yaml"
    plan.write_text("""
rules:
  - name: die
    where: csi
    method: NodePublishVolume
    when: {nth: 2}
    action: {crash: {how: sigkill}}
""")
    await daemon.start("--faults", str(plan), "--fault-log", str(daemon.root / "fired.jsonl"), "--restart-on-crash")
    first_pid = await daemon.child()
    staging = {name: str(daemon.kubelet / "plugins" / name / "globalmount") for name in ("a", "b")}
    target = {name: str(daemon.kubelet / "pods" / name / "mount") for name in ("a", "b")}
    async with daemon.channel() as channel:
        identity = csi_grpc.IdentityStub(channel)
        controller, node = csi_grpc.ControllerStub(channel), csi_grpc.NodeStub(channel)
        await identity.Probe(csi.ProbeRequest(), wait_for_ready=True, timeout=DEADLINE)
        ids = {}
        for name in ("a", "b"):
            created = await controller.CreateVolume(csi.CreateVolumeRequest(name=name, volume_capabilities=[CAP]),
                                                    timeout=DEADLINE)
            ids[name] = created.volume.volume_id
            await controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=ids[name], node_id=NODE, volume_capability=CAP), timeout=DEADLINE)
            await node.NodeStageVolume(csi.NodeStageVolumeRequest(
                volume_id=ids[name], staging_target_path=staging[name], volume_capability=CAP), timeout=DEADLINE)

        def publish(name: str) -> csi.NodePublishVolumeRequest:
            return csi.NodePublishVolumeRequest(volume_id=ids[name], staging_target_path=staging[name],
                                                target_path=target[name], volume_capability=CAP)

        await node.NodePublishVolume(publish("a"), timeout=DEADLINE)
        # the second NodePublishVolume kills the plugin in the middle of the call
        assert await code_of(node.NodePublishVolume(publish("b"), timeout=DEADLINE)) == grpc.StatusCode.UNAVAILABLE
        crashed = time.monotonic()
        assert await asyncio.to_thread(wait_gone, first_pid, DEADLINE)
        seen: set[grpc.StatusCode] = set()
        while (code := await code_of(identity.Probe(csi.ProbeRequest(), timeout=5))) != grpc.StatusCode.OK:
            seen.add(code)
            assert time.monotonic() - crashed < DEADLINE, f"no answer after the crash; saw {seen}\n{daemon.text()}"
            await asyncio.sleep(0.02)
        assert seen <= {grpc.StatusCode.UNAVAILABLE}
        # the state survived: both volumes are staged, "a" is still published, "b" (the crashed call) is not
        for name in ("a", "b"):
            assert await code_of(node.NodeStageVolume(csi.NodeStageVolumeRequest(
                volume_id=ids[name], staging_target_path=staging[name], volume_capability=CAP),
                timeout=DEADLINE)) == grpc.StatusCode.OK
        unstage = {name: csi.NodeUnstageVolumeRequest(volume_id=ids[name], staging_target_path=staging[name])
                   for name in ("a", "b")}
        assert await code_of(node.NodeUnstageVolume(unstage["a"], timeout=DEADLINE)) == \
            grpc.StatusCode.FAILED_PRECONDITION
        await node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=ids["a"], target_path=target["a"]),
                                       timeout=DEADLINE)
        for name in ("a", "b"):
            await node.NodeUnstageVolume(unstage[name], timeout=DEADLINE)
        listed = await controller.ListVolumes(csi.ListVolumesRequest(), timeout=DEADLINE)
        assert sorted(e.volume.volume_id for e in listed.entries) == sorted(ids.values())
    second_pid = await daemon.child(other_than=first_pid)
    assert f"CSI emulator (pid {first_pid}) was killed by SIGKILL" in daemon.text()
    assert [json.loads(line)["rule"] for line in (daemon.root / "fired.jsonl").read_text().splitlines()] == ["die"]
    # the restarted plugin serves its fault control socket
    listed_rules = faults_cli("list", "--control", str(daemon.state / "faults.sock"))
    assert listed_rules.returncode == 0, listed_rules.stderr
    assert [json.loads(line)["name"] for line in listed_rules.stdout.splitlines()] == ["die"]
    # SIGTERM to the supervisor stops the plugin; both are gone and so are the sockets
    daemon.main.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.main.wait(), DEADLINE) == 0
    assert await asyncio.to_thread(wait_gone, second_pid, DEADLINE)
    assert [p for p in (daemon.socket, daemon.registration_socket, daemon.state / "faults.sock") if p.exists()] == []
