"""Real containerd with ``kubeharness env up --cni kubeharness``: its pods get their network from kubeharness-cni.

containerd (started by ``env up`` under a temporary run directory) executes kubeharness-cni in real mode
for every sandbox: the pod gets an address from the environment's pod subnet through a veth pair, and a
khelper container serving TCP in that pod is reachable from the host at that address. Traffic goes only
into the pod's own network namespace. Root and the Debian packages of ci/setup-env are required.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeharness.env import manage
from kubeharness.env.layout import EnvPaths, EnvState
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env

pytestmark = pytest.mark.xdist_group("containerd")

KHELPER = "kubeharness.test/khelper:1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    run_dir = tmp_path_factory.mktemp("env-cni")
    with containerd_env(run_dir, "--cni", "kubeharness") as endpoint:
        yield run_dir, endpoint


def test_a_containerd_pod_gets_its_address_from_kubeharness_cni_and_is_reachable(
        env: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, endpoint = env
    paths = EnvPaths(run_dir)
    assert EnvState.load(paths).cni == "kubeharness"
    assert (paths.cni_bin_dir / "kubeharness-cni").exists() and (paths.cni_bin_dir / "loopback").exists()
    with grpc.insecure_channel(endpoint) as channel:
        runtime, images = api_grpc.RuntimeServiceStub(channel), api_grpc.ImageServiceStub(channel)
        images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=KHELPER)), timeout=120)
        sandbox = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="netpod", namespace="default", uid="netpod-uid"),
            log_directory=str(tmp_path / "logs"))
        sid = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
        try:
            status = runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True),
                                              timeout=10)
            address = status.status.network.ip
            assert ipaddress.ip_address(address) in ipaddress.ip_network(paths.pod_subnet)
            store = json.loads((paths.cni_data_dir / paths.network / "state.json").read_text())
            (attachment,) = store["attachments"].values()
            assert attachment["ips"][0].split("/")[0] == address and attachment["mode"] == "real"
            netns = manage.netns_of(status.info["info"])
            assert attachment["netns"] == netns
            config = api.ContainerConfig(metadata=api.ContainerMetadata(name="server"),
                                         image=api.ImageSpec(image=KHELPER), args=["--tcp-port=8080"],
                                         log_path="server/0.log")
            cid = runtime.CreateContainer(api.CreateContainerRequest(pod_sandbox_id=sid, config=config,
                                                                     sandbox_config=sandbox), timeout=30).container_id
            runtime.StartContainer(api.StartContainerRequest(container_id=cid), timeout=30)
            deadline = time.monotonic() + 20
            while True:  # the helper needs a moment to listen
                try:
                    with socket.create_connection((address, 8080), timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    store = json.loads((paths.cni_data_dir / paths.network / "state.json").read_text())
    assert store["attachments"] == {}  # containerd's DEL released the address
