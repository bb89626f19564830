"""Regression tests for what the crash torture (tests/test_torture.py) found, each a plain, deterministic crash.

Every process stopped here is one this module started, by its PID; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.testing.emulator import PROBE_OPTIONS, CriEmulator
from kubeharness.testing.processes import wait_gone
from kubeharness.wire.cri import api_pb2 as cri
from kubeharness.wire.cri import api_pb2_grpc as cri_grpc
from tests.conftest import CriHarness

DEADLINE = 60.0
CNI_PLUGIN = Path(sys.executable).with_name("kubeharness-cni")
# A second plugin in the chain that, on ADD, says it is there (its PID in a file) and sleeps: the emulator
# is killed while the first plugin's ADD has already taken an address.
SLEEPER = """#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
    echo $$ > {marker}.tmp && mv {marker}.tmp {marker}
    exec sleep 60
fi
exit 0
"""


def attachments(ipam: Path) -> list[str]:
    path = ipam / "net" / "state.json"
    return sorted(json.loads(path.read_text())["attachments"]) if path.exists() else []


def churn(endpoint: str, count: int) -> None:
    with grpc.insecure_channel(endpoint, options=PROBE_OPTIONS) as channel:
        stub = cri_grpc.RuntimeServiceStub(channel)
        for i in range(count):
            host = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name=f"h{i}", namespace="n", uid=f"h{i}"))
            host.linux.security_context.namespace_options.network = cri.NODE
            sandbox = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=host), timeout=DEADLINE).pod_sandbox_id
            stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=DEADLINE)


@pytest.mark.parametrize("compacting", [False, True])
def test_a_kill_between_cni_add_and_the_saved_sandbox_leaks_no_address(tmp_path: Path, compacting: bool) -> None:
    """The emulator killed while a RunPodSandbox's second plugin runs: the first one's ADD took an address.
    The plugin dies with the emulator (else it could finish an ADD after the restarted emulator undid the
    setup), and the restarted emulator runs DEL for the setup the kill cut. ``compacting``: the journal is
    compacted while the plugin runs (the setup record must keep saying that DEL is due)."""
    net, bin_dir, ipam, marker = tmp_path / "net.d", tmp_path / "bin", tmp_path / "ipam", tmp_path / "sleeping"
    net.mkdir()
    bin_dir.mkdir()
    (bin_dir / "kubeharness-cni").symlink_to(CNI_PLUGIN)
    (bin_dir / "sleeper").write_text(SLEEPER.format(marker=marker))
    (bin_dir / "sleeper").chmod(0o755)
    (net / "10-net.conflist").write_text(json.dumps({"cniVersion": "1.1.0", "name": "net", "plugins": [
        {"type": "kubeharness-cni", "ipam": {"ranges": [[{"subnet": "10.79.0.0/24"}]], "dataDir": str(ipam)}},
        {"type": "sleeper"}]}))
    cri_config = tmp_path / "cri.yaml"
    cri_config.write_text("journal_compact_lines: 1\n" if compacting else "{}\n")
    emulator = CriEmulator(tmp_path / "cri", start_timeout=DEADLINE, config=cri_config,
                           extra_args=["--cni-conf-dir", str(net), "--cni-bin-dir", str(bin_dir)])
    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="n", uid="u"))
    with emulator:
        answers: list[grpc.StatusCode] = []

        def run() -> None:
            with grpc.insecure_channel(emulator.endpoint, options=PROBE_OPTIONS) as channel:
                try:
                    cri_grpc.RuntimeServiceStub(channel).RunPodSandbox(cri.RunPodSandboxRequest(config=config),
                                                                       timeout=DEADLINE)
                except grpc.RpcError as err:
                    answers.append(err.code())

        caller = threading.Thread(target=run)
        caller.start()
        deadline = time.monotonic() + DEADLINE
        while not marker.exists():
            assert time.monotonic() < deadline, emulator.log_text()
            time.sleep(0.05)
        sleeper = int(marker.read_text())
        assert len(attachments(ipam)) == 1  # the first plugin's ADD took an address
        if compacting:  # host-network pods (no CNI) come and go: the journal grows, and compacts
            churn(emulator.endpoint, 4)
            assert "compacted" in emulator.log_text()
        emulator.kill()
        gone = wait_gone(sleeper, DEADLINE)  # a plugin does not outlive the emulator that ran it
        if not gone:
            os.kill(sleeper, signal.SIGKILL)
        assert gone
        caller.join(DEADLINE)
        assert answers == [grpc.StatusCode.UNAVAILABLE]  # the call was never answered
        emulator.start()
        with grpc.insecure_channel(emulator.endpoint, options=PROBE_OPTIONS) as channel:
            stub = cri_grpc.RuntimeServiceStub(channel)
            assert list(stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=DEADLINE).items) == []
            assert attachments(ipam) == []  # the restarted emulator ran DEL for the setup the kill cut
            marker.unlink()
        assert "undid the network setup" in emulator.log_text()


async def test_a_compaction_that_a_new_sandbox_or_container_starts_keeps_it(tmp_path: Path) -> None:
    """The journal compacts from the live objects; a save that starts a compaction must find the new object
    among them (it did not: RunPodSandbox and CreateContainer saved before they added)."""
    harness = CriHarness(root=tmp_path, clock=VirtualClock(), config=CriConfig(journal_compact_lines=1))
    await harness.start()
    try:
        kept: list[str] = []
        containers: list[str] = []
        for i in range(12):
            kept.append(sandbox := await harness.run_sandbox(harness.sandbox_config(f"keep-{i}")))
            containers.append((await harness.runtime.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=sandbox, config=cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"),
                                                                   image=cri.ImageSpec(image="registry.k8s.io/pause:3.10"))))
                               ).container_id)
            for j in range(3):  # churn: the journal grows faster than the live objects, and compacts
                temp = await harness.run_sandbox(harness.sandbox_config(f"temp-{i}-{j}"))
                await harness.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=temp))
        await harness.restart()
        listed = await harness.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
        assert sorted(sb.id for sb in listed.items) == sorted(kept)
        listed_containers = await harness.runtime.ListContainers(cri.ListContainersRequest())
        assert sorted(c.id for c in listed_containers.containers) == sorted(containers)
    finally:
        await harness.stop()
