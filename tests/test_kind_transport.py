"""The kind target's Docker transport, the CRI bridge and the ``kind`` node target, on a real Docker engine.

A kind node is a privileged container, which these machines refuse, so a node of kind cannot run here.
What can: Debian's Docker engine with unprivileged containers. The tests start an engine of their own
(its files in a directory of theirs, no bridge network, no iptables rules; stopped by its PID at the end)
and in it an unprivileged stand-in node (:mod:`kubeharness.kind.standin`: a CRI emulator and our agent
where kind has containerd and a kubelet, with a kind node's paths, port and socket). Everything the kind
target does goes through that engine, as it would with a kind node: the Engine API over its socket,
``docker exec``, archives in and out, the hijacked exec stream of the CRI bridge.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from kubeharness.kind import standin
from kubeharness.kind.bridge import CriBridge
from kubeharness.kind.layout import MANIFESTS, READ_ONLY_PORT
from kubeharness.kind.transport import DockerError, DockerNode, open_stream
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.xdist_group("docker"), pytest.mark.timeout(900)]
START_S = 90.0
NODE_FILES = ("test_a_container_with_its_own_pid_namespace_is_pid_1_there_and_its_execs_are_not",
              "test_in_the_pods_pid_namespace_the_pause_process_is_pid_1",
              "test_without_a_hostname_in_the_config_containers_see_the_nodes_hostname",
              "test_without_a_hosts_mount_containers_see_a_copy_of_the_nodes_etc_hosts")


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    """A Docker engine of the tests' own: its socket's URL."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("dockerd is not installed: ci/setup-env installs Debian's docker.io")
    root = Path(tempfile.mkdtemp(prefix="kh-dockerd-"))  # short: the engine's sockets live under it
    host = f"unix://{root}/docker.sock"
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [dockerd, "--host", host, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
             "--pidfile", str(root / "docker.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                docker.DockerClient(base_url=host, timeout=10).ping()
                break
            except docker.errors.DockerException:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dockerd did not come up: {(root / 'dockerd.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield host
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _standin(engine: str, name: str, agent: bool, ready: list[str], log: str) -> Iterator[str]:
    """Run a stand-in node until ``ready`` succeeds in it; remove it afterwards."""
    client = docker.DockerClient(base_url=engine)
    standin.remove_node(client, name)
    standin.run_node(client, name, agent=agent)
    node = DockerNode(name, engine)
    try:
        deadline = time.monotonic() + START_S
        while node.exec_sync(ready).code != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"the stand-in node {name} did not come up: {node.exec_sync(['cat', log])}")
            time.sleep(0.3)
        yield name
    finally:
        node.close()
        standin.remove_node(client, name)
        client.close()


@pytest.fixture(scope="module")
def node_name(engine: str) -> Iterator[str]:
    """A stand-in kind node, serving /pods on its read-only port."""
    yield from _standin(engine, f"kh-standin-{os.getpid()}", True,
                        ["curl", "-sf", f"http://127.0.0.1:{READ_ONLY_PORT}/pods"], "/var/log/kubelet.log")


@pytest.fixture(scope="module")
def runtime_node_name(engine: str) -> Iterator[str]:
    """A stand-in node with its CRI runtime alone (no agent), for the CRI-level suite."""
    yield from _standin(engine, f"kh-standin-cri-{os.getpid()}", False,
                        ["test", "-S", "/run/containerd/containerd.sock"], "/var/log/cri.log")


@pytest.fixture
def node(engine: str, node_name: str) -> Iterator[DockerNode]:
    got = DockerNode(node_name, engine)
    yield got
    got.close()


def test_files_go_in_and_out_and_commands_run_in_the_container(node: DockerNode, engine: str) -> None:
    node.put_files_sync("/tmp", {"t/a.txt": (b"alpha\n", 0o600), "t/b.bin": (bytes(range(256)) * 1000, 0o644)})
    assert node.read_dir_sync("/tmp/t") == {"a.txt": b"alpha\n", "b.bin": bytes(range(256)) * 1000}
    got = node.exec_sync(["sh", "-c", "cat /tmp/t/a.txt; stat -c %a /tmp/t/a.txt; echo err >&2; exit 3"])
    assert (got.code, got.stdout, got.stderr) == (3, b"alpha\n600\n", b"err\n")
    assert node.read_dir_sync("/no/such/dir") == {}
    assert node.hostname == node.name
    with pytest.raises(DockerError, match="no container 'kh-no-such-node' on the Docker engine at unix://"):
        DockerNode("kh-no-such-node", engine)
    with pytest.raises(DockerError, match=r"the Docker engine at unix:///nonexistent/docker\.sock"):
        DockerNode(node.name, "unix:///nonexistent/docker.sock")


async def test_a_stream_carries_bytes_both_ways_and_ends_with_its_program(node: DockerNode) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many frames, and one that ends mid-frame-size
    stream = await open_stream(node, ["cat"])
    received = bytearray()

    async def read_all() -> None:
        while data := await stream.read():
            received.extend(data)

    reader = asyncio.ensure_future(read_all())
    for i in range(0, len(payload), 100_000):
        await stream.write(payload[i:i + 100_000])
    stream.close_stdin()
    await asyncio.wait_for(reader, 120)
    await stream.close()
    assert bytes(received) == payload
    failing = await open_stream(node, ["sh", "-c", "echo oops >&2; exit 1"])
    assert await asyncio.wait_for(failing.read(), 60) == b""
    assert failing.stderr == b"oops\n"
    await failing.close()


async def test_the_cri_bridge_serves_the_nodes_runtime_over_docker_exec(node: DockerNode, tmp_path: Path) -> None:
    bridge = CriBridge(node, tmp_path / "cri.sock")
    await bridge.start()
    channels = [grpc.aio.insecure_channel(bridge.endpoint) for _ in range(6)]  # a relay per connection
    try:
        runtime = api_grpc.RuntimeServiceStub(channels[0])
        versions = await asyncio.gather(*(api_grpc.RuntimeServiceStub(c).Version(api.VersionRequest(), timeout=60)
                                          for c in channels))
        assert {v.runtime_name for v in versions} == {"kubeharness"}
        config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="bridged", namespace="default",
                                                                      uid="bridged-uid", attempt=0))
        sandbox = (await runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60)).pod_sandbox_id
        listed = await runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=60)
        assert sandbox in {s.id for s in listed.items}
        await runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=60)
        await runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox), timeout=60)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the runtime's own answer, carried unchanged
    finally:
        for channel in channels:
            await channel.close(None)
        await bridge.stop()
    assert not (tmp_path / "cri.sock").exists()


async def test_a_bridge_to_a_socket_the_node_lacks_fails_the_call_and_does_not_hang(node: DockerNode,
                                                                                    tmp_path: Path) -> None:
    bridge = CriBridge(node, tmp_path / "cri.sock", socket="/run/nothing-here.sock")
    await bridge.start()
    channel = grpc.aio.insecure_channel(bridge.endpoint)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close(None)
        await bridge.stop()


def _pytest(args: list[str], out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["GRPC_VERBOSITY"] = "ERROR"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                          *args, "--observations", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=800, check=False)
    return run, (json.loads(out.read_text()) if out.is_file() else {})


def test_the_cri_suite_runs_through_the_bridge_command_as_on_the_runtime_itself(
        engine: str, runtime_node_name: str, tmp_path: Path) -> None:
    # the specs that read the node's own files (its container logs, /etc/hosts, its hostname) from where the
    # suite runs see this machine's, not the node's: through a bridge they need the node's files (README)
    specs = ["conformance/test_sandboxes.py", "conformance/test_container_lifecycle.py",
             *(f"--deselect=conformance/test_sandboxes.py::{name}" for name in NODE_FILES)]
    direct_run, direct = _pytest(specs, tmp_path / "direct.json")  # an emulator of the suite's own
    assert direct_run.returncode == 0, direct_run.stdout[-3000:]
    bridge = subprocess.Popen(
        [sys.executable, "-m", "kubeharness.cli", "kind", "bridge", "--node", runtime_node_name,
         "--docker-host", engine, "--listen", str(tmp_path / "kind-cri.sock")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bridge.stdout is not None
        endpoint = bridge.stdout.readline().strip()
        assert endpoint == f"unix://{tmp_path / 'kind-cri.sock'}"
        bridged_run, bridged = _pytest([*specs, "--cri-endpoint", endpoint], tmp_path / "bridged.json")
    finally:
        bridge.send_signal(signal.SIGTERM)
        _, errors = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, errors[-2000:]
    assert not (tmp_path / "kind-cri.sock").exists()
    assert len(direct) >= 20 and set(bridged) == set(direct)
    outcomes = {(spec, entry["outcome"]) for spec, entry in bridged.items()}
    assert outcomes == {(spec, entry["outcome"]) for spec, entry in direct.items()}, bridged_run.stdout[-3000:]
    assert {entry["target"] for entry in bridged.values()} == {"kubeharness"}


def test_the_node_suite_runs_on_the_kind_target_and_leaves_the_nodes_own_pods_alone(
        engine: str, node: DockerNode, tmp_path: Path) -> None:
    # a pod of the cluster's own, as a kind node has its control plane's static pods
    own = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cluster-own"},
           "spec": {"containers": [{"name": "c", "image": "kubeharness.test/khelper:1"}]}}
    node.put_files_sync(MANIFESTS, {"cluster-own.yaml": (json.dumps(own).encode(), 0o644)})
    run, results = _pytest(
        ["conformance/node/test_restarts.py::test_a_container_that_exits_under_a_policy_that_restarts_it[Always-1]",
         "conformance/node/test_restarts.py::"
         "test_a_container_that_exits_under_a_policy_that_keeps_it_down[Never-1-Failed-0]",
         "conformance/node/test_logs_and_gc.py::test_container_logs_are_rotated_and_limited_to_max_files",
         "--node-target=kind", "--kind-node", node.name, "--docker-host", engine], tmp_path / "kind.json")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "kind+emulator: 2 specs covered" in run.stdout
    assert "SKIPPED" in run.stdout and "needs KubeletConfiguration containerLogMaxFiles" in run.stdout
    ran = {spec.split("::")[-1]: entry for spec, entry in results.items() if entry["outcome"] == "passed"}
    assert sorted(ran) == ["test_a_container_that_exits_under_a_policy_that_keeps_it_down[Never-1-Failed-0]",
                           "test_a_container_that_exits_under_a_policy_that_restarts_it[Always-1]"]
    for entry in ran.values():
        assert entry["target"] == "kind+emulator"
        assert entry["timeline"] and all(s["pod"].endswith(f"-{node.name}") for s in entry["timeline"])
        assert not any(s["pod"].startswith("cluster-own") for s in entry["timeline"])
    pods = json.loads(node.exec_sync(["curl", "-sf", f"http://127.0.0.1:{READ_ONLY_PORT}/pods"]).stdout)
    assert [p["metadata"]["name"] for p in pods["items"]] == [f"cluster-own-{node.name}"]  # the spec's are gone
    assert sorted(node.read_dir_sync(MANIFESTS)) == ["cluster-own.yaml"]
