"""Real containerd beside the emulator: ``kubeharness env up`` starts it, pods really run, ``down`` cleans up.

These tests start a docker-registry on a free loopback port and containerd under a temporary run
directory (root and the Debian packages of ci/setup-env are required; CI installs them). All tests of
this module share one environment and run on one xdist worker (group "containerd").
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeharness.env import manage
from kubeharness.env.layout import EnvPaths, EnvState
from kubeharness.env.tools import EnvError
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env, kubeharness

pytestmark = pytest.mark.xdist_group("containerd")

KHELPER = "kubeharness.test/khelper:1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    run_dir = tmp_path_factory.mktemp("env")
    with containerd_env(run_dir) as endpoint:
        yield run_dir, endpoint


@pytest.fixture
def runtime(env: tuple[Path, str]) -> Iterator[api_grpc.RuntimeServiceStub]:
    with grpc.insecure_channel(env[1]) as channel:
        yield api_grpc.RuntimeServiceStub(channel)


def pull(endpoint: str, image: str) -> str:
    with grpc.insecure_channel(endpoint) as channel:
        reply = api_grpc.ImageServiceStub(channel).PullImage(
            api.PullImageRequest(image=api.ImageSpec(image=image)), timeout=120
        )
    return reply.image_ref


def test_up_prints_the_socket_of_a_real_containerd(env: tuple[Path, str], runtime: api_grpc.RuntimeServiceStub) -> None:
    run_dir, endpoint = env
    assert endpoint == f"unix://{EnvPaths(run_dir).socket}"
    version = runtime.Version(api.VersionRequest(), timeout=10)
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")


def test_up_again_finds_it_running(env: tuple[Path, str]) -> None:
    run_dir, endpoint = env
    before = EnvState.load(EnvPaths(run_dir))
    again = kubeharness("env", "up", "--run-dir", str(run_dir), "--registry-port", str(before.registry_port))
    assert (again.returncode, again.stdout.strip()) == (0, endpoint)
    after = EnvState.load(EnvPaths(run_dir))
    assert (after.containerd_pid, after.registry_pid) == (before.containerd_pid, before.registry_pid)


def test_a_khelper_pod_really_runs_logs_and_exits(env: tuple[Path, str], runtime: api_grpc.RuntimeServiceStub,
                                                  tmp_path: Path) -> None:
    _, endpoint = env
    pull(endpoint, KHELPER)
    sandbox = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name="real", namespace="default", uid="real-uid"),
        log_directory=str(tmp_path / "logs"),
    )
    sid = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
    try:
        status = runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10).status
        assert status.state == api.SANDBOX_READY
        subnet_prefix = EnvPaths(env[0]).pod_subnet.rsplit(".", 2)[0]
        assert status.network.ip.startswith(subnet_prefix + ".")  # from the bridge network, inside its namespace
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="helper"),
            image=api.ImageSpec(image=KHELPER),
            args=["--log-rate=10", "--ready-after=1s", "--exit-after=2s", "--exit-code=3"],
            log_path="helper/0.log",
        )
        request = api.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=sandbox)
        cid = runtime.CreateContainer(request, timeout=30).container_id
        runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=30)
        probe = runtime.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=["khelper", "check", "ready"], timeout=5),
                                 timeout=10)
        assert probe.exit_code == 1  # not ready during its first second
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=10).status
            if state.state == api.CONTAINER_EXITED:
                break
            time.sleep(0.2)
        assert (state.state, state.exit_code, state.reason) == (api.CONTAINER_EXITED, 3, "Error")
        lines = Path(state.log_path).read_text().splitlines()
        assert lines[0].endswith(" stdout F line 1")
        assert 15 <= len(lines) <= 21  # 10 lines a second for 2 s, written by a real process
    finally:
        runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)


def test_bench_compares_the_emulator_with_containerd(env: tuple[Path, str]) -> None:
    _, endpoint = env
    done = kubeharness("bench", "cri", "--cycles", "5", "--concurrency", "2", "--warmup", "1",
                       "--compare-endpoint", endpoint, "--compare-cycles", "3")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout.split("emulator vs containerd", 1)[1]
    for rpc in ("RunPodSandbox", "StartContainer", "StopPodSandbox", "pod cycles/s"):
        row = re.search(rf"^  {rpc} +([\d.]+) +([\d.]+) +([\d.]+)x$", table, re.MULTILINE)
        assert row is not None, f"{rpc} row missing"
        assert float(row.group(2)) > 0 and float(row.group(3)) > 0
    assert re.search(r"^  (MET|NOT MET) +emulator >= 100x faster per pod cycle \(serial\): \d+x$", table, re.MULTILINE)


def test_a_taken_registry_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(EnvError, match=f"port {port} on 127.0.0.1 is taken"):
            manage.up(tmp_path / "other", port)


EXAMPLE_PLAN = Path(__file__).resolve().parents[1] / "examples" / "faults" / "one-pod-flaky-sandbox.yaml"


def test_the_proxy_runs_the_example_plan_in_front_of_containerd(env: tuple[Path, str], tmp_path: Path) -> None:
    _, endpoint = env
    listen = tmp_path / "proxy.sock"
    fired_log = tmp_path / "fired.jsonl"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "kubeharness.cli", "cri", "proxy", "--listen", str(listen), "--upstream", endpoint,
         "--faults", str(EXAMPLE_PLAN), "--fault-log", str(fired_log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        assert "CRI proxy listening" in proxy.stdout.readline()
        with grpc.insecure_channel(f"unix://{listen}") as channel, grpc.insecure_channel(endpoint) as direct:
            runtime, images = api_grpc.RuntimeServiceStub(channel), api_grpc.ImageServiceStub(channel)
            sandbox = api.PodSandboxConfig(
                metadata=api.PodSandboxMetadata(name="flaky", namespace="default", uid="flaky-uid"),
                log_directory=str(tmp_path / "logs"), annotations={"kubeharness.io/faults": "flaky-sandbox,slow-pull"})
            codes = []
            sid = ""
            for _ in range(3):
                try:
                    sid = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
            assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
            try:
                # containerd itself saw one RunPodSandbox: the failed attempts never reached it
                listed = api_grpc.RuntimeServiceStub(direct).ListPodSandbox(api.ListPodSandboxRequest(), timeout=10)
                mine = [s.id for s in listed.items if s.metadata.uid == "flaky-uid"]
                assert mine == [sid]
                started = time.monotonic()
                images.PullImage(api.PullImageRequest(image=api.ImageSpec(image="docker.io/library/busybox:1.36"),
                                                      sandbox_config=sandbox), timeout=120)
                assert time.monotonic() - started >= 2.0  # the rule's delay came before containerd's pull
                config = api.ContainerConfig(metadata=api.ContainerMetadata(name="sleeper"),
                                             image=api.ImageSpec(image="docker.io/library/busybox:1.36"),
                                             command=["sleep", "3600"], log_path="sleeper/0.log")
                cid = runtime.CreateContainer(api.CreateContainerRequest(
                    pod_sandbox_id=sid, config=config, sandbox_config=sandbox), timeout=30).container_id
                runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=30)
                status = runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=10).status
                assert status.state == api.CONTAINER_RUNNING
                # what containerd 1.6 does not implement comes back as it says so
                events = runtime.GetContainerEvents(api.GetEventsRequest(), timeout=5)
                with pytest.raises(grpc.RpcError) as refused:
                    next(iter(events))
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
            finally:
                if sid:
                    runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
                    runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        fired = [json.loads(line) for line in fired_log.read_text().splitlines()]
        assert [(f["rule"], f["where"], f["method"], f["pod"]) for f in fired] == [
            ("flaky-sandbox", "proxy", "RunPodSandbox", "default/flaky"),
            ("flaky-sandbox", "proxy", "RunPodSandbox", "default/flaky"),
            ("slow-pull", "proxy", "PullImage", "default/flaky")]
    finally:
        proxy.terminate()
        assert proxy.wait(timeout=15) == 0


def test_bench_proxy_measures_the_proxy_in_front_of_containerd(env: tuple[Path, str]) -> None:
    _, endpoint = env
    done = kubeharness("bench", "proxy", "--upstream", endpoint, "--calls", "20", "--cycles", "2", "--warmup", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for round_name, rpc in (("calls, no rules", "ContainerStatus"), ("pod cycles, no rules", "RunPodSandbox"),
                            ("calls, rules watching", "Version"), ("pod cycles, rules watching", "StopPodSandbox")):
        table = done.stdout.split(f"\n{round_name}:\n", 1)[1]
        row = re.search(rf"^  {rpc} +([\d.]+) +([\d.]+) +([+-][\d.]+) ", table, re.MULTILINE)
        assert row is not None and float(row.group(1)) > 0 and float(row.group(2)) > 0, round_name
    assert re.search(r"^target: at most 1 ms added at p50 for every RPC \(calls\): (met|NOT met)", done.stdout,
                     re.MULTILINE)


def test_a_container_on_containerd_sees_a_volume_the_csi_emulator_published(
        env: tuple[Path, str], runtime: api_grpc.RuntimeServiceStub, tmp_path: Path) -> None:
    from kubeharness.wire.csi import csi_pb2 as csi
    from kubeharness.wire.csi import csi_pb2_grpc as csi_grpc

    _, endpoint = env
    config = tmp_path / "csi.yaml"
    config.write_text(f"node_id: node-1\nmode: real\nroots: [{tmp_path / 'kubelet'}]\n")
    plugin = subprocess.Popen([sys.executable, "-m", "kubeharness.cli", "csi", "serve", "--endpoint",
                               f"unix://{tmp_path / 'csi.sock'}", "--state-dir", str(tmp_path / "state"),
                               "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = str(tmp_path / "kubelet" / "plugins" / "data" / "globalmount")
    target = str(tmp_path / "kubelet" / "pods" / "uid" / "volumes" / "kubernetes.io~csi" / "data" / "mount")
    access = csi.VolumeCapability.AccessMode
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(mount_flags=["nodev"]),
                               access_mode=access(mode=access.SINGLE_NODE_WRITER))
    sid = ""
    try:
        assert plugin.stdout is not None and "listening" in plugin.stdout.readline()
        with grpc.insecure_channel(f"unix://{tmp_path / 'csi.sock'}") as channel:
            controller, node = csi_grpc.ControllerStub(channel), csi_grpc.NodeStub(channel)
            volume_id = controller.CreateVolume(csi.CreateVolumeRequest(name="data", volume_capabilities=[cap]),
                                                timeout=10).volume.volume_id
            controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id="node-1", volume_capability=cap), timeout=10)
            node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=staging,
                                                            volume_capability=cap), timeout=10)
            node.NodePublishVolume(csi.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, target_path=target, volume_capability=cap),
                timeout=10)
            Path(staging, "hello").write_text("written on the host\n")
            pull(endpoint, "docker.io/library/busybox:1.36")
            sandbox = api.PodSandboxConfig(
                metadata=api.PodSandboxMetadata(name="csi", namespace="default", uid="csi-uid"),
                log_directory=str(tmp_path / "logs"))
            sid = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
            container = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="reader"),
                image=api.ImageSpec(image="docker.io/library/busybox:1.36"),
                command=["sh", "-c", "cat /data/hello; echo from the pod > /data/back"], log_path="reader.log",
                mounts=[api.Mount(container_path="/data", host_path=target)])
            cid = runtime.CreateContainer(api.CreateContainerRequest(
                pod_sandbox_id=sid, config=container, sandbox_config=sandbox), timeout=30).container_id
            runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = runtime.ContainerStatus(api.ContainerStatusRequest(container_id=cid), timeout=10).status
                if state.state == api.CONTAINER_EXITED:
                    break
                time.sleep(0.2)
            assert (state.state, state.exit_code) == (api.CONTAINER_EXITED, 0)
            assert Path(state.log_path).read_text().splitlines()[0].endswith(" stdout F written on the host")
            assert Path(staging, "back").read_text() == "from the pod\n"  # the pod wrote into the volume
            runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            sid = ""
            node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
                                     timeout=10)
            node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
                                   timeout=10)
        assert manage.mounts_below(tmp_path) == []
    finally:
        if sid:
            runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        for path in (target, staging):
            subprocess.run(["umount", path], capture_output=True, check=False)
        plugin.terminate()
        assert plugin.wait(timeout=15) == 0


def test_bench_agent_runs_pods_on_containerd_and_leaves_none(env: tuple[Path, str],
                                                            runtime: api_grpc.RuntimeServiceStub) -> None:
    _, endpoint = env
    done = kubeharness("bench", "agent", "--endpoint", endpoint, "--pods", "3", "--idle-pods", "3",
                       "--idle-seconds", "1", "--timeout", "120", "--probe-pods", "2", "--probe-kill-pods", "1",
                       "--probe-seconds", "10", "--resource-pods", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"^== containerd: containerd ", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^phase 1: 3 pods written at once: 3/3 Running ", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^phase 2: 3 pods idle \(3 Running after\): agent CPU [\d.]+ s in [\d.]+ s = [\d.]+% of one "
                     r"core$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^target \(containerd\) startup p99 <= 200 ms: (met|NOT met) \(p99 [\d.]+ ms\)$", done.stdout,
                     re.MULTILINE)
    assert re.search(r"^phase 3: 2 pods probed .* agent CPU [\d.]+ s in [\d.]+ s", done.stdout, re.MULTILINE)
    # containerd 1.6 has no container event stream, so the kill is not timed
    assert "the runtime has no container event stream: no kill figure" in done.stdout
    assert "FAILED" not in done.stdout
    left = [s for s in runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items
            if s.metadata.namespace.startswith(("khbench-", "khprobes-"))]
    assert left == [], left
    containers = runtime.ListContainers(api.ListContainersRequest(), timeout=30).containers
    assert not [c for c in containers
                if c.labels.get("io.kubernetes.pod.namespace", "").startswith(("khbench-", "khprobes-"))]


def test_down_leaves_no_shims_mounts_namespaces_or_bridge(env: tuple[Path, str],
                                                          runtime: api_grpc.RuntimeServiceStub) -> None:
    # runs last in this module: take the environment down with a pod still running, then look for leftovers
    run_dir, _ = env
    paths = EnvPaths(run_dir)
    sandbox = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="left", namespace="default", uid="left"))
    sid = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
    verbose = runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=10)
    netns = manage.netns_of(verbose.info["info"])
    assert Path(netns).exists() and manage.shims_of(paths.socket) and manage.bridge_exists(paths)
    state = EnvState.load(paths)
    down = kubeharness("env", "down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert "cleaned up by force" not in down.stdout  # everything went away the orderly way
    assert not manage.alive(state.containerd_pid, "containerd")
    assert not manage.alive(state.registry_pid, "docker-registry")
    assert manage.shims_of(paths.socket) == []
    assert manage.mounts_below(run_dir) == []
    assert not Path(netns).exists()
    assert not manage.bridge_exists(paths)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    assert "CNI" not in rules
